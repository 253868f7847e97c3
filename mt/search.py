"""Greedy and beam search over any step function, batched over sentences and beams in one tensor.

Search knows nothing of the model: it calls `step(prev, state)`, which returns log-probabilities of
the next piece and the attention weights of this step, and reorders the state with
`state.select(rows)`. Sentences whose search is over leave the batch, so later steps only pay for
the sentences still being decoded.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor


class SearchState(Protocol):
    def select(self: StateT, index: Tensor) -> StateT:
        """The rows `index`, which keep the group size (k rows per sentence in beam search)."""
        ...

    def repeat(self: StateT, times: int) -> StateT:
        """Each row `times` times, side by side."""
        ...


StateT = TypeVar("StateT", bound=SearchState)
StepFn = Callable[[Tensor, StateT], tuple[Tensor, Tensor, StateT]]


@dataclass
class Hypothesis:
    tokens: list[int]  # output pieces, without <s> and </s>
    log_prob: float  # sum of the log-probabilities of tokens and </s>
    score: float  # log_prob normalized by `length_penalty`; hypotheses are ranked by it
    attention: Tensor  # (len(tokens), src_len): attention weights of each output piece


class SearchTimeout(RuntimeError):
    """The search ran past its deadline; whatever it had found is dropped."""


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, eq. 14); alpha 0 = none."""
    return float(((5.0 + length) / 6.0) ** alpha)


class _History:
    """Back-pointers: what each step's rows are, so a hypothesis is traced back only when it is returned.

    Rows are the hypotheses alive at a step. Step t records the attention of its rows and, for each
    row of step t + 1, the row of step t it continues and the piece it appended. Memory and time grow
    linearly with the output length (copying whole prefixes at every step would grow quadratically).

    The attention rows are copied into blocks of many steps, not kept as each step's own small tensor:
    glibc placed such a tensor after the step's large freed temporaries (rows x src_len x attn_size
    floats in `AdditiveAttention.align`), and a block freed before a live one is not given back or
    merged, so the heap grew by a temporary a step. `python bench/pathological.py`, a text of 5,000
    characters (1,104 pieces, beam 5, models/de-en): a peak of 2,027 MiB resident, in blocks 479 MiB.
    """

    BLOCK_STEPS = 64  # steps of rows per block, at the first step's row count

    def __init__(self) -> None:
        self.blocks: list[Tensor] = []  # (capacity, src_len) each; the last one filled up to `_filled`
        self.offsets: list[int] = []  # step t's first row in the concatenation of all steps' rows
        self.parents: list[list[int]] = []  # step t: for each row of step t + 1, its row at step t
        self.tokens: list[list[int]] = []  # step t: for each row of step t + 1, the piece it appended
        self._rows = 0
        self._filled = 0

    def add_attention(self, weights: Tensor) -> None:
        rows = weights.size(0)
        if not self.blocks or self._filled + rows > self.blocks[-1].size(0):
            if self.blocks:
                self.blocks[-1] = self.blocks[-1][: self._filled]  # the rows it holds
            # rows only ever shrink from step to step: a block holds at least BLOCK_STEPS steps
            self.blocks.append(weights.new_empty(rows * self.BLOCK_STEPS, weights.size(1)))
            self._filled = 0
        self.blocks[-1][self._filled : self._filled + rows] = weights
        self.offsets.append(self._rows)
        self._filled += rows
        self._rows += rows

    def attention(self) -> Tensor:
        """Every step's attention rows, one after another: (all rows, src_len)."""
        if not self.blocks:
            return torch.empty(0, 0)
        return torch.cat([*self.blocks[:-1], self.blocks[-1][: self._filled]])

    def add_rows(self, parents: Tensor, tokens: Tensor) -> None:
        self.parents.append(parents.tolist())
        self.tokens.append(tokens.tolist())

    def trace(self, step: int, row: int) -> tuple[list[int], list[int]]:
        """The pieces of `row` at `step`, and the ids of their attention rows among all steps' rows."""
        tokens, attention_rows = [], []
        for t in range(step - 1, -1, -1):
            tokens.append(self.tokens[t][row])
            row = self.parents[t][row]
            attention_rows.append(self.offsets[t] + row)
        return tokens[::-1], attention_rows[::-1]


@dataclass
class _Ending:
    """A hypothesis that chose </s> from `row` at `step`; traced back only if it is returned."""

    step: int
    row: int
    log_prob: float
    score: float


def _ending(step: int, row: int, log_prob: float, alpha: float) -> _Ending:
    return _Ending(step, row, log_prob, log_prob / length_penalty(step + 1, alpha))  # +1 counts </s>


def _hypotheses(endings: list[list[_Ending]], history: _History, n_best: int) -> list[list[Hypothesis]]:
    all_attention = history.attention()
    results = []
    for sentence in endings:
        best = sorted(sentence, key=lambda e: e.score, reverse=True)[:n_best]
        hypotheses = []
        for ending in best:
            tokens, attention_rows = history.trace(ending.step, ending.row)
            index = torch.tensor(attention_rows, dtype=torch.long, device=all_attention.device)
            hypotheses.append(Hypothesis(tokens, ending.log_prob, ending.score, all_attention.index_select(0, index)))
        results.append(hypotheses)
    return results


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise SearchTimeout("search ran past its deadline")


def best_continuations(beam_scores: Tensor, log_probs: Tensor, count: int, chunk: int = 0) -> tuple[Tensor, Tensor]:
    """The `count` best continuations of each sentence's k beams, best first: their scores (beam score
    plus the piece's log-probability) and ids beam * vocab + piece, both (sentences, count).

    beam_scores: (sentences, k); log_probs: (sentences * k, vocab).
    The same as one topk over each sentence's k * vocab sums, at a third of its cost for a 6k vocabulary:
    each beam's vocabulary is cut into chunks, and a piece among the `count` best lies in one of the
    `count` chunks with the best maxima (a chunk outside them has `count` better pieces, their maxima).
    So only the maxima and those chunks are summed and ranked. `chunk` 0 picks a size; 1 ranks every piece.
    """
    sentences, k = beam_scores.shape
    vocab = log_probs.size(1)
    chunk = chunk or _chunk_size(vocab)
    if k * -(-vocab // chunk) < count:  # too few chunks to hold `count` pieces: rank every piece
        chunk = 1
    if vocab % chunk:  # pad the last chunk with pieces that are never chosen over a real one
        log_probs = F.pad(log_probs, (0, chunk - vocab % chunk), value=float("-inf"))
    chunks = log_probs.size(1) // chunk  # per beam
    pieces = log_probs.view(sentences * k * chunks, chunk)
    maxima = pieces.amax(dim=1).view(sentences, k, chunks) + beam_scores.unsqueeze(2)
    _, best_chunks = maxima.view(sentences, k * chunks).topk(count, dim=1)  # ids beam * chunks + chunk
    offsets = torch.arange(sentences, device=log_probs.device).unsqueeze(1) * (k * chunks)
    picked = pieces.index_select(0, (best_chunks + offsets).view(-1)).view(sentences, count, chunk)
    sums = picked + beam_scores.gather(1, best_chunks // chunks).unsqueeze(2)
    scores, best = sums.view(sentences, count * chunk).topk(count, dim=1)
    beam_chunk = best_chunks.gather(1, best // chunk)
    piece = (beam_chunk % chunks) * chunk + best % chunk
    return scores, (beam_chunk // chunks) * vocab + piece.clamp(max=vocab - 1)  # a padding piece only ties -inf


@functools.cache
def _chunk_size(vocab: int) -> int:
    """About twice the square root of the vocabulary, a divisor of it if one is near: for 6k pieces, chunks of
    100 to 300 measured alike and 2.5-4x faster than one topk (64 sentences x 5 beams, 2 threads)."""
    size = max(1, round(2 * math.sqrt(vocab)))
    return next((c for c in range(size, size // 2, -1) if vocab % c == 0), size)


@torch.inference_mode()
def greedy_search(
    step: StepFn[StateT],
    state: StateT,
    *,
    max_lengths: Tensor,
    bos: int,
    eos: int,
    length_penalty_alpha: float = 0.0,
    deadline: float | None = None,
) -> list[list[Hypothesis]]:
    """The most probable next piece at every step.

    max_lengths: (batch,) most output pieces per sentence before </s> is forced.
    deadline: a `time.monotonic()` time; past it, the search raises SearchTimeout.
    Returns one single-hypothesis list per sentence, in input order.
    """
    batch = max_lengths.size(0)
    device = max_lengths.device
    sentences = torch.arange(batch, device=device)  # sentence id of each row still decoding
    prev = torch.full((batch,), bos, dtype=torch.long, device=device)
    log_prob = torch.zeros(batch, device=device)
    history = _History()
    endings: list[list[_Ending]] = [[] for _ in range(batch)]
    for t in range(int(max_lengths.max()) + 1):
        _check_deadline(deadline)
        log_probs, weights, state = step(prev, state)
        history.add_attention(weights)
        best_log_prob, best = log_probs.max(dim=-1)
        at_limit = max_lengths[sentences] <= t
        best = best.masked_fill(at_limit, eos)
        log_prob = log_prob + torch.where(at_limit, log_probs[:, eos], best_log_prob)
        done = best == eos
        if bool(done.any()):
            for row, sentence, row_log_prob in zip(
                done.nonzero().squeeze(1).tolist(), sentences[done].tolist(), log_prob[done].tolist(), strict=True
            ):
                endings[sentence].append(_ending(t, row, row_log_prob, length_penalty_alpha))
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            sentences, best, log_prob = sentences[keep], best[keep], log_prob[keep]
            state = state.select(keep)
        else:
            keep = torch.arange(best.size(0), device=device)
        history.add_rows(keep, best)
        prev = best
    return _hypotheses(endings, history, n_best=1)


@torch.inference_mode()
def beam_search(
    step: StepFn[StateT],
    state: StateT,
    *,
    max_lengths: Tensor,
    beam_size: int,
    bos: int,
    eos: int,
    length_penalty_alpha: float = 1.0,
    n_best: int = 1,
    deadline: float | None = None,
) -> list[list[Hypothesis]]:
    """Beam search with `beam_size` live hypotheses per sentence.

    At each step the 2k best continuations of a sentence's k beams are ranked; those among the best k
    that end in </s> are finished, and the k best that do not end live on. A sentence is done once it
    has k finished hypotheses or reaches its max length (where </s> is forced).
    max_lengths: (batch,) most output pieces per sentence before </s> is forced.
    deadline: a `time.monotonic()` time; past it, the search raises SearchTimeout.
    Returns up to `n_best` hypotheses per sentence, best first, in input order.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    k = beam_size
    batch = max_lengths.size(0)
    device = max_lengths.device
    limits = max_lengths.tolist()
    live = list(range(batch))  # the sentence of each block of k rows; bookkeeping in Python, not small tensors
    first_row = torch.arange(batch, device=device).unsqueeze(1) * k  # of each block
    rank = torch.arange(2 * k, device=device)
    state = state.repeat(k)
    prev = torch.full((batch * k,), bos, dtype=torch.long, device=device)
    beam_scores = torch.zeros(batch, k, device=device)
    beam_scores[:, 1:] = float("-inf")  # all k beams start as one: expand only the first
    history = _History()
    endings: list[list[_Ending]] = [[] for _ in range(batch)]

    for t in range(max(limits) + 1):
        _check_deadline(deadline)
        log_probs, weights, state = step(prev, state)
        history.add_attention(weights)
        vocab = log_probs.size(-1)
        at_limit = [limits[s] <= t for s in live]
        if any(at_limit):  # only </s> may follow a hypothesis at its max length
            forced = torch.full_like(log_probs[0], float("-inf"))
            forced[eos] = 0.0
            rows_at_limit = torch.tensor(at_limit, device=device).repeat_interleave(k).unsqueeze(1)
            log_probs = torch.where(rows_at_limit, forced + log_probs, log_probs)

        n = len(live)
        top_scores, top_ids = best_continuations(beam_scores, log_probs, 2 * k)  # (n, 2k)
        origin = top_ids // vocab + first_row[:n]  # the row each continues
        token = top_ids % vocab
        is_eos = token == eos

        # finish the hypotheses that end in </s> among each sentence's best k
        ends = is_eos[:, :k] & (top_scores[:, :k] > float("-inf"))
        if bool(ends.any()):
            blocks_ending = ends.nonzero()[:, 0].tolist()
            for block, row, score in zip(
                blocks_ending, origin[:, :k][ends].tolist(), top_scores[:, :k][ends].tolist(), strict=True
            ):
                endings[live[block]].append(_ending(t, row, score, length_penalty_alpha))

        # the best k continuations that do not end live on, in rank order (there are always k: at most k end)
        live_first = torch.where(is_eos, rank + 2 * k, rank).topk(k, dim=1, largest=False).indices
        new_origin, new_token = origin.gather(1, live_first), token.gather(1, live_first)
        beam_scores = top_scores.gather(1, live_first)

        done = [len(endings[s]) >= k or limits[s] <= t for s in live]
        if all(done):
            break
        if any(done):
            going_on = [block for block, over in enumerate(done) if not over]
            live = [live[block] for block in going_on]
            blocks = torch.tensor(going_on, device=device)
            new_origin, new_token, beam_scores = new_origin[blocks], new_token[blocks], beam_scores[blocks]
        rows = new_origin.view(-1)
        prev = new_token.view(-1)
        history.add_rows(rows, prev)
        state = state.select(rows)

    return _hypotheses(endings, history, n_best)
