"""Recurrent decoder with additive attention and a deep output layer (Bahdanau et al. 2015,
appendix A.2.2; deep output as in Pascanu et al. 2014).

At target step i, with s_{i-1} the top decoder state and y_{i-1} the previous target piece:
    c_i = attention(s_{i-1}, h_1..h_n)            (context)
    s_i = RNN([E y_{i-1}; c_i], s_{i-1})          (stacked GRU or LSTM cells)
    t_i = tanh(W_o [s_i; c_i; E y_{i-1}])          (readout)
    p(y_i | ...) = softmax(W_out t_i)             (W_out may share the target embedding E)

Teacher-forced training runs the recurrence step by step but the readout and the vocabulary
projection for all steps in two large matrix products. Search drives the decoder one `step()` at a
time and reorders its state with `DecoderState.select()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mt.attention import AdditiveAttention
from mt.config import Cell, ModelConfig
from mt.tokenizer import BOS, PAD


@dataclass
class DecoderState:
    """Rows are hypotheses, in groups of equal size per sentence (a sentence's beams); what only
    depends on the source is held once per sentence, so reordering beams never copies it."""

    hidden: tuple[Tensor, ...]  # per layer (rows, dec_hidden); tuples, not one tensor, keep backward cheap
    cell: tuple[Tensor, ...] | None  # per layer (rows, dec_hidden) for an LSTM, else None
    keys: Tensor  # (sentences, src_len, attn_size): U h_j, projected once per sentence
    values: Tensor  # (sentences, src_len, 2*enc_hidden): the encoder annotations h_j
    mask: Tensor  # (sentences, src_len): True at real source tokens

    def select(self, index: Tensor) -> DecoderState:
        """The state of rows `index`: reorders beams and drops finished sentences. `index` keeps the
        group size, each group taken from one sentence, sentences in their order."""
        group = self.hidden[0].size(0) // self.keys.size(0)
        sentences = index.size(0) // group
        keys, values, mask = self.keys, self.values, self.mask
        if sentences != keys.size(0):  # some sentences are done: their source leaves too
            kept = index[::group] // group
            keys, values, mask = keys.index_select(0, kept), values.index_select(0, kept), mask.index_select(0, kept)
        return DecoderState(
            hidden=tuple(h.index_select(0, index) for h in self.hidden),
            cell=None if self.cell is None else tuple(c.index_select(0, index) for c in self.cell),
            keys=keys,
            values=values,
            mask=mask,
        )

    def repeat(self, times: int) -> DecoderState:
        """Each row `times` times, side by side: the beams of beam search, before they diverge."""
        return DecoderState(
            hidden=tuple(h.repeat_interleave(times, dim=0) for h in self.hidden),
            cell=None if self.cell is None else tuple(c.repeat_interleave(times, dim=0) for c in self.cell),
            keys=self.keys,
            values=self.values,
            mask=self.mask,
        )


class Decoder(nn.Module):
    def __init__(
        self,
        *,
        vocab_size: int,
        cell: Cell,
        emb_size: int,
        enc_size: int,
        hidden_size: int,
        num_layers: int,
        attn_size: int,
        dropout: float,
        emb_dropout: float,
        tie_embeddings: bool,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.is_lstm = cell == "lstm"
        self.embedding = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        self.bridge = nn.Linear(enc_size, num_layers * hidden_size)
        self.attention = AdditiveAttention(query_size=hidden_size, key_size=enc_size, attn_size=attn_size)
        cell_type = nn.LSTMCell if self.is_lstm else nn.GRUCell
        self.cells = nn.ModuleList(
            cell_type(emb_size + enc_size if layer == 0 else hidden_size, hidden_size) for layer in range(num_layers)
        )
        readout_size = emb_size if tie_embeddings else hidden_size
        self.readout = nn.Linear(hidden_size + enc_size + emb_size, readout_size)
        self.output = nn.Linear(readout_size, vocab_size, bias=False)
        if tie_embeddings:
            self.output.weight = self.embedding.weight
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, config: ModelConfig, vocab_size: int, enc_size: int) -> Decoder:
        return cls(
            vocab_size=vocab_size,
            cell=config.cell,
            emb_size=config.emb_size,
            enc_size=enc_size,
            hidden_size=config.dec_hidden,
            num_layers=config.dec_layers,
            attn_size=config.attn_size,
            dropout=config.dropout,
            emb_dropout=config.emb_dropout,
            tie_embeddings=config.tie_embeddings,
        )

    def init_state(self, annotations: Tensor, summary: Tensor, mask: Tensor) -> DecoderState:
        """s_0 = tanh(W_s summary) (Bahdanau et al. 2015, A.2.2), one slice per decoder layer.

        annotations: (batch, src_len, enc_size); summary: (batch, enc_size); mask: (batch, src_len)
        """
        batch = summary.size(0)
        hidden = torch.tanh(self.bridge(summary)).view(batch, self.num_layers, self.hidden_size).unbind(1)
        return DecoderState(
            hidden=hidden,
            cell=hidden if self.is_lstm else None,
            keys=self.attention.project_keys(annotations),
            values=annotations,
            mask=mask,
        )

    def _advance(self, embedded: Tensor, state: DecoderState) -> tuple[Tensor, Tensor, DecoderState]:
        """One recurrence step. embedded: (batch, emb_size) -> context (batch, enc_size), weights (batch, src_len)."""
        context, weights = self.attention(state.hidden[-1], state.keys, state.values, state.mask)
        layer_input = torch.cat([embedded, context], dim=-1)
        hiddens, cells = [], []
        for layer, rnn_cell in enumerate(self.cells):
            if state.cell is not None:
                h, c = rnn_cell(layer_input, (state.hidden[layer], state.cell[layer]))
                cells.append(c)
            else:
                h = rnn_cell(layer_input, state.hidden[layer])
            hiddens.append(h)
            layer_input = self.dropout(h) if layer + 1 < self.num_layers else h
        new_state = DecoderState(
            hidden=tuple(hiddens),
            cell=tuple(cells) if cells else None,
            keys=state.keys,
            values=state.values,
            mask=state.mask,
        )
        return context, weights, new_state

    def _logits(self, hidden: Tensor, context: Tensor, embedded: Tensor) -> Tensor:
        """Deep output: (..., hidden), (..., enc_size), (..., emb_size) -> (..., vocab)."""
        readout = torch.tanh(self.readout(torch.cat([self.dropout(hidden), context, embedded], dim=-1)))
        logits: Tensor = self.output(self.dropout(readout))
        return logits

    def forward(self, tgt_in: Tensor, state: DecoderState) -> Tensor:
        """Teacher forcing. tgt_in: (batch, tgt_len) starting with <s> -> logits (batch, tgt_len, vocab)."""
        embedded = self.emb_dropout(self.embedding(tgt_in))
        hiddens, contexts = [], []
        for embedded_t in embedded.unbind(1):  # unbind: slicing per step would cost a full-size backward each
            context, _, state = self._advance(embedded_t, state)
            hiddens.append(state.hidden[-1])
            contexts.append(context)
        return self._logits(torch.stack(hiddens, dim=1), torch.stack(contexts, dim=1), embedded)

    def step(self, prev: Tensor, state: DecoderState) -> tuple[Tensor, Tensor, DecoderState]:
        """One search step. prev: (batch,) previous pieces -> log-probs (batch, vocab), attention (batch, src_len)."""
        embedded = self.embedding(prev)
        context, weights, state = self._advance(embedded, state)
        logits = self._logits(state.hidden[-1], context, embedded).float()
        logits[:, [PAD, BOS]] = float("-inf")  # never outputs
        log_probs = torch.log_softmax(logits, dim=-1)
        return log_probs, weights, state
