"""The attentional encoder-decoder (Bahdanau, Cho & Bengio 2015, "Neural Machine Translation by
Jointly Learning to Align and Translate")."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mt.config import ModelConfig
from mt.decoder import Decoder, DecoderState
from mt.encoder import Encoder
from mt.tokenizer import PAD


class Seq2Seq(nn.Module):
    def __init__(self, *, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self._init_embeddings()

    @classmethod
    def from_config(cls, config: ModelConfig, *, src_vocab: int, tgt_vocab: int) -> Seq2Seq:
        encoder = Encoder.from_config(config, src_vocab)
        decoder = Decoder.from_config(config, tgt_vocab, encoder.output_size)
        return cls(encoder=encoder, decoder=decoder)

    def _init_embeddings(self) -> None:
        # std 1/sqrt(dim) keeps the logits of a tied output layer near unit scale at the start
        for embedding in (self.encoder.embedding, self.decoder.embedding):
            nn.init.normal_(embedding.weight, std=1 / math.sqrt(embedding.embedding_dim))
            with torch.no_grad():
                embedding.weight[PAD].zero_()

    def encode(self, src: Tensor, lengths: Tensor) -> DecoderState:
        """src: (batch, src_len) padded piece ids, lengths: (batch,) -> the decoder's initial state for search."""
        annotations, summary = self.encoder(src, lengths)
        return self.decoder.init_state(annotations, summary, source_mask(src, lengths))

    def forward(self, src: Tensor, lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (batch, tgt_len, vocab) for target inputs (batch, tgt_len)."""
        annotations, summary = self.encoder(src, lengths)
        logits: Tensor = self.decoder(tgt_in, annotations, summary, source_mask(src, lengths))
        return logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def source_mask(src: Tensor, lengths: Tensor) -> Tensor:
    """(batch, src_len): True at real tokens, False at padding."""
    return torch.arange(src.size(1), device=src.device).unsqueeze(0) < lengths.unsqueeze(1)


def pad_batch(sequences: list[list[int]], *, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Right-pad piece-id lists into (batch, max_len) with their lengths (batch,)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    padded = torch.full((len(sequences), int(lengths.max())), PAD, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return padded.to(device), lengths.to(device)
