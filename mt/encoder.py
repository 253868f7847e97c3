"""Bidirectional recurrent encoder (Bahdanau et al. 2015, section 3.2): each source position is
annotated with the concatenation of a forward and a backward GRU (or LSTM) state."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mt.config import Cell, ModelConfig
from mt.dropout import Dropout
from mt.tokenizer import PAD


class Encoder(nn.Module):
    def __init__(
        self,
        *,
        vocab_size: int,
        cell: Cell,
        emb_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        emb_dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        rnn_type = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_type(
            emb_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.emb_dropout = Dropout(emb_dropout)
        self.dropout = Dropout(dropout)
        self.output_size = 2 * hidden_size

    @classmethod
    def from_config(cls, config: ModelConfig, vocab_size: int) -> Encoder:
        return cls(
            vocab_size=vocab_size,
            cell=config.cell,
            emb_size=config.emb_size,
            hidden_size=config.enc_hidden,
            num_layers=config.enc_layers,
            dropout=config.dropout,
            emb_dropout=config.emb_dropout,
        )

    def forward(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Annotate a padded batch.

        src: (batch, src_len) piece ids; lengths: (batch,) true lengths, all >= 1
        Returns the annotations (batch, src_len, 2*hidden), zero at padding, and a summary of each
        sentence (batch, 2*hidden): the last forward and the first backward state of the top layer.
        """
        embedded = self.emb_dropout(self.embedding(src))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, final = self.rnn(packed)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=src.size(1))
        hidden = final[0] if isinstance(final, tuple) else final  # LSTM returns (h, c)
        summary = torch.cat([hidden[-2], hidden[-1]], dim=-1)  # top layer: forward, backward
        return self.dropout(outputs), summary
