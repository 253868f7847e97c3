"""Greedy and beam search over any step function, batched over sentences and beams in one tensor.

Search knows nothing of the model: it calls `step(prev, state)`, which returns log-probabilities of
the next piece and the attention weights of this step, and reorders the state with
`state.select(rows)`. Sentences whose search is over leave the batch, so later steps only pay for
the sentences still being decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from torch import Tensor


class SearchState(Protocol):
    def select(self: StateT, index: Tensor) -> StateT: ...


StateT = TypeVar("StateT", bound=SearchState)
StepFn = Callable[[Tensor, StateT], tuple[Tensor, Tensor, StateT]]


@dataclass
class Hypothesis:
    tokens: list[int]  # output pieces, without <s> and </s>
    log_prob: float  # sum of the log-probabilities of tokens and </s>
    score: float  # log_prob normalized by `length_penalty`; hypotheses are ranked by it
    attention: Tensor  # (len(tokens), src_len): attention weights of each output piece


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, eq. 14); alpha 0 = none."""
    return float(((5.0 + length) / 6.0) ** alpha)


def _hypothesis(tokens: list[int], log_prob: float, attention: Tensor, alpha: float) -> Hypothesis:
    score = log_prob / length_penalty(len(tokens) + 1, alpha)  # +1 counts </s>
    return Hypothesis(tokens=tokens, log_prob=log_prob, score=score, attention=attention)


@torch.inference_mode()
def greedy_search(
    step: StepFn[StateT],
    state: StateT,
    *,
    max_lengths: Tensor,
    bos: int,
    eos: int,
    length_penalty_alpha: float = 0.0,
) -> list[list[Hypothesis]]:
    """The most probable next piece at every step.

    max_lengths: (batch,) most output pieces per sentence before </s> is forced.
    Returns one single-hypothesis list per sentence, in input order.
    """
    batch = max_lengths.size(0)
    device = max_lengths.device
    rows = torch.arange(batch, device=device)  # sentence id of each row still decoding
    prev = torch.full((batch,), bos, dtype=torch.long, device=device)
    tokens = torch.empty(batch, 0, dtype=torch.long, device=device)
    attention: Tensor | None = None  # (rows, steps, src_len)
    log_prob = torch.zeros(batch, device=device)
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for t in range(int(max_lengths.max()) + 1):
        log_probs, weights, state = step(prev, state)
        best_log_prob, best = log_probs.max(dim=-1)
        at_limit = max_lengths[rows] <= t
        best = best.masked_fill(at_limit, eos)
        log_prob = log_prob + torch.where(at_limit, log_probs[:, eos], best_log_prob)
        attention = weights.unsqueeze(1) if attention is None else torch.cat([attention, weights.unsqueeze(1)], 1)
        done = best == eos
        if bool(done.any()):
            for row in done.nonzero().squeeze(1).tolist():
                results[int(rows[row])] = [
                    _hypothesis(
                        tokens[row].tolist(), float(log_prob[row]), attention[row, :t].clone(), length_penalty_alpha
                    )
                ]
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            rows, best, tokens, attention, log_prob = (
                rows[keep],
                best[keep],
                tokens[keep],
                attention[keep],
                log_prob[keep],
            )
            state = state.select(keep)
        tokens = torch.cat([tokens, best.unsqueeze(1)], dim=1)
        prev = best
    return results


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
) -> list[list[Hypothesis]]:
    """Beam search with `beam_size` live hypotheses per sentence.

    At each step the 2k best continuations of a sentence's k beams are ranked; those among the best k
    that end in </s> are finished, and the k best that do not end live on. A sentence is done once it
    has k finished hypotheses or reaches its max length (where </s> is forced).
    max_lengths: (batch,) most output pieces per sentence before </s> is forced.
    Returns up to `n_best` hypotheses per sentence, best first, in input order.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    k = beam_size
    batch = max_lengths.size(0)
    device = max_lengths.device
    sentences = torch.arange(batch, device=device)  # sentence id of each block of k rows
    state = state.select(torch.arange(batch, device=device).repeat_interleave(k))
    prev = torch.full((batch * k,), bos, dtype=torch.long, device=device)
    tokens = torch.empty(batch * k, 0, dtype=torch.long, device=device)
    attention: Tensor | None = None  # (rows, steps, src_len)
    beam_scores = torch.zeros(batch, k, device=device)
    beam_scores[:, 1:] = float("-inf")  # all k beams start as one: expand only the first
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]

    for t in range(int(max_lengths.max()) + 1):
        log_probs, weights, state = step(prev, state)
        vocab = log_probs.size(-1)
        at_limit = (max_lengths[sentences] <= t).repeat_interleave(k)
        if bool(at_limit.any()):  # only </s> may follow a hypothesis at its max length
            forced = torch.full_like(log_probs[0], float("-inf"))
            forced[eos] = 0.0
            log_probs = torch.where(at_limit.unsqueeze(1), forced + log_probs, log_probs)
        attention = weights.unsqueeze(1) if attention is None else torch.cat([attention, weights.unsqueeze(1)], 1)

        n = sentences.size(0)
        candidates = (beam_scores.view(-1, 1) + log_probs).view(n, k * vocab)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)  # (n, 2k)
        origin = top_ids // vocab + torch.arange(n, device=device).unsqueeze(1) * k  # row each continues
        token = top_ids % vocab
        is_eos = token == eos

        # finish the hypotheses that end in </s> among each sentence's best k
        ends = (is_eos[:, :k] & (top_scores[:, :k] > float("-inf"))).nonzero().tolist()
        for sentence, rank in ends:
            row = int(origin[sentence, rank])
            finished[int(sentences[sentence])].append(
                _hypothesis(
                    tokens[row].tolist(),
                    float(top_scores[sentence, rank]),
                    attention[row, :t].clone(),
                    length_penalty_alpha,
                )
            )

        # the best k continuations that do not end live on (there are always k: at most k end)
        live_rank = (~is_eos).float().cumsum(dim=1)
        keep_candidate = (~is_eos) & (live_rank <= k)
        new_origin = origin[keep_candidate].view(n, k)
        new_token = token[keep_candidate].view(n, k)
        new_scores = top_scores[keep_candidate].view(n, k)

        done = torch.tensor(
            [len(finished[int(s)]) >= k for s in sentences.tolist()], dtype=torch.bool, device=device
        ) | (max_lengths[sentences] <= t)
        if bool(done.all()):
            break
        active = (~done).nonzero().squeeze(1)
        sentences = sentences[active]
        rows = new_origin[active].view(-1)
        beam_scores = new_scores[active]
        prev = new_token[active].view(-1)
        tokens = torch.cat([tokens[rows], prev.unsqueeze(1)], dim=1)
        attention = attention[rows]
        state = state.select(rows)

    return [sorted(hyps, key=lambda h: h.score, reverse=True)[:n_best] for hyps in finished]
