from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from mt.config import ModelConfig
from mt.model import Seq2Seq, pad_batch
from mt.search import SearchTimeout, _History, beam_search, best_continuations, greedy_search, length_penalty
from mt.tokenizer import BOS, EOS

A, B, C = 4, 5, 6  # tokens of the hand-made distributions; 0-3 are the special pieces
VOCAB = 8
SRC_LEN = 3


@dataclass
class History:
    """Search state of the fake model: the tokens each row has read so far."""

    tokens: Tensor  # (rows, steps)

    def select(self, index: Tensor) -> History:
        return History(self.tokens.index_select(0, index))

    def repeat(self, times: int) -> History:
        return History(self.tokens.repeat_interleave(times, dim=0))


def table_step(
    table: dict[tuple[int, ...], dict[int, float]],
) -> Callable[[Tensor, History], tuple[Tensor, Tensor, History]]:
    """A step function whose next-token distribution is looked up by the history (without <s>);
    histories not in the table are dead ends: they go on with C and almost never end."""

    def step(prev: Tensor, state: History) -> tuple[Tensor, Tensor, History]:
        tokens = torch.cat([state.tokens, prev.unsqueeze(1)], dim=1)
        rows = []
        for history in tokens[:, 1:].tolist():
            probs = torch.full((VOCAB,), 1e-9)
            for token, p in table.get(tuple(history), {EOS: 1e-6, C: 1 - 1e-6}).items():
                probs[token] = p
            rows.append((probs / probs.sum()).log())
        attention = torch.full((tokens.size(0), SRC_LEN), 1 / SRC_LEN)
        return torch.stack(rows), attention, History(tokens)

    return step


def start(batch: int = 1) -> History:
    return History(torch.empty(batch, 0, dtype=torch.long))


# greedy takes A (0.55) and ends with A A </s> (p = 0.198); beam search finds B </s> (p = 0.4275)
GARDEN_PATH = {
    (): {A: 0.55, B: 0.45},
    (A,): {A: 0.36, B: 0.34, EOS: 0.30},
    (A, A): {EOS: 1.0},
    (B,): {EOS: 0.95, C: 0.05},
}


def test_greedy_follows_the_most_probable_piece_and_stops_at_eos() -> None:
    [[hyp]] = greedy_search(table_step(GARDEN_PATH), start(), max_lengths=torch.tensor([10]), bos=BOS, eos=EOS)
    assert hyp.tokens == [A, A]
    assert hyp.log_prob == pytest.approx(math.log(0.55 * 0.36 * 1.0), abs=1e-4)


def test_beam_search_finds_the_better_sequence_greedy_misses() -> None:
    [[hyp]] = beam_search(
        table_step(GARDEN_PATH),
        start(),
        max_lengths=torch.tensor([10]),
        beam_size=2,
        bos=BOS,
        eos=EOS,
        length_penalty_alpha=0.0,
    )
    assert hyp.tokens == [B]
    assert hyp.log_prob == pytest.approx(math.log(0.45 * 0.95), abs=1e-4)


def test_length_normalization_lets_a_longer_hypothesis_win() -> None:
    # B </s>: log p = -1.49 (raw winner); A A </s>: log p = -1.62, but normalized -1.215 > -1.277
    table = {(): {A: 0.55, B: 0.45}, (A,): {A: 0.36, EOS: 0.04, C: 0.6}, (A, A): {EOS: 1.0}, (B,): {EOS: 0.5, C: 0.5}}
    step = table_step(table)
    lengths = torch.tensor([10])
    [[raw]] = beam_search(step, start(), max_lengths=lengths, beam_size=3, bos=BOS, eos=EOS, length_penalty_alpha=0.0)
    [[normalized]] = beam_search(
        step, start(), max_lengths=lengths, beam_size=3, bos=BOS, eos=EOS, length_penalty_alpha=1.0
    )
    assert raw.tokens == [B]
    assert normalized.tokens == [A, A]
    assert normalized.score == pytest.approx(normalized.log_prob / length_penalty(3, 1.0))


def test_n_best_lists_are_distinct_and_ordered_by_score() -> None:
    [hyps] = beam_search(
        table_step(GARDEN_PATH), start(), max_lengths=torch.tensor([10]), beam_size=4, bos=BOS, eos=EOS, n_best=4
    )
    assert len(hyps) == 4
    assert len({tuple(h.tokens) for h in hyps}) == 4
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_eos_is_forced_at_the_max_length() -> None:
    never_ends = {(A,) * n: {A: 1.0, EOS: 1e-12} for n in range(20)}  # </s> below the other pieces: no ties
    for search in ("greedy", "beam"):
        if search == "greedy":
            [[hyp]] = greedy_search(table_step(never_ends), start(), max_lengths=torch.tensor([4]), bos=BOS, eos=EOS)
        else:
            [[hyp]] = beam_search(
                table_step(never_ends), start(), max_lengths=torch.tensor([4]), beam_size=3, bos=BOS, eos=EOS
            )
        assert hyp.tokens == [A] * 4
        assert hyp.attention.shape == (4, SRC_LEN)


def test_each_sentence_of_a_batch_stops_at_its_own_max_length() -> None:
    never_ends = {(A,) * n: {A: 1.0, EOS: 1e-12} for n in range(20)}  # </s> below the other pieces: no ties
    results = beam_search(
        table_step(never_ends), start(3), max_lengths=torch.tensor([2, 5, 3]), beam_size=2, bos=BOS, eos=EOS
    )
    assert [len(hyps[0].tokens) for hyps in results] == [2, 5, 3]


def test_n_best_larger_than_beam_is_refused() -> None:
    with pytest.raises(ValueError, match="n_best"):
        beam_search(
            table_step(GARDEN_PATH), start(), max_lengths=torch.tensor([5]), beam_size=2, bos=BOS, eos=EOS, n_best=3
        )


# --- on a tiny seeded model ---------------------------------------------------------------------------


def tiny_model(cell: str = "gru") -> Seq2Seq:
    torch.manual_seed(0)
    config = ModelConfig(cell=cell, emb_size=8, enc_hidden=8, dec_hidden=16, attn_size=8, dec_layers=2)  # type: ignore[arg-type]
    return Seq2Seq.from_config(config, src_vocab=30, tgt_vocab=30).eval()


def sources() -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(4, 30, (n,), generator=generator).tolist() + [EOS] for n in (3, 9, 1, 6, 12)]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_beam_size_one_equals_greedy(cell: str) -> None:
    model = tiny_model(cell)
    src, lengths = pad_batch(sources())
    max_lengths = lengths * 2
    greedy = greedy_search(model.decoder.step, model.encode(src, lengths), max_lengths=max_lengths, bos=BOS, eos=EOS)
    beam = beam_search(
        model.decoder.step, model.encode(src, lengths), max_lengths=max_lengths, beam_size=1, bos=BOS, eos=EOS
    )
    assert [g[0].tokens for g in greedy] == [b[0].tokens for b in beam]
    for g, b in zip(greedy, beam, strict=True):
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-4)


def test_batched_beam_search_equals_one_sentence_at_a_time() -> None:
    model = tiny_model()
    batch = sources()
    src, lengths = pad_batch(batch)
    together = beam_search(
        model.decoder.step, model.encode(src, lengths), max_lengths=lengths * 2, beam_size=4, bos=BOS, eos=EOS, n_best=2
    )
    for sentence, hyps in zip(batch, together, strict=True):
        one, one_length = pad_batch([sentence])
        [alone] = beam_search(
            model.decoder.step,
            model.encode(one, one_length),
            max_lengths=one_length * 2,
            beam_size=4,
            bos=BOS,
            eos=EOS,
            n_best=2,
        )
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-4)
        assert torch.allclose(hyps[0].attention[:, : len(sentence)], alone[0].attention, atol=1e-5)


@dataclass
class Trail:
    """Search state whose attention weights record the row's step and the piece it was fed."""

    steps: Tensor  # (rows,)

    def select(self, index: Tensor) -> Trail:
        return Trail(self.steps.index_select(0, index))

    def repeat(self, times: int) -> Trail:
        return Trail(self.steps.repeat_interleave(times, dim=0))


def trail_step(prev: Tensor, state: Trail) -> tuple[Tensor, Tensor, Trail]:
    """Every row prefers a different piece at every step, so beams reorder; </s> comes at step 4."""
    rows = prev.size(0)
    logits = torch.sin(torch.arange(rows * VOCAB, dtype=torch.float).view(rows, VOCAB) * (prev.unsqueeze(1) + 1.7))
    logits[:, EOS] = torch.where(state.steps >= 4, 10.0, -10.0)
    attention = torch.stack([state.steps.float(), prev.float(), torch.zeros(rows)], dim=1)
    return logits.log_softmax(-1), attention, Trail(state.steps + 1)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_each_hypothesis_carries_the_attention_of_its_own_ancestors(beam_size: int) -> None:
    """Row i of a hypothesis's attention was computed at step i, fed the piece before piece i."""
    results = beam_search(
        trail_step,
        Trail(torch.zeros(2, dtype=torch.long)),
        max_lengths=torch.tensor([9, 9]),
        beam_size=beam_size,
        bos=BOS,
        eos=EOS,
        n_best=beam_size,
    )
    for hypotheses in results:
        for hyp in hypotheses:
            assert len(hyp.tokens) == 4
            assert hyp.attention[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
            assert hyp.attention[:, 1].tolist() == [float(BOS), *map(float, hyp.tokens[:-1])]


def test_greedy_and_beam_stop_at_a_deadline_in_the_past() -> None:
    start, lengths, past = Trail(torch.zeros(1, dtype=torch.long)), torch.tensor([9]), time.monotonic() - 1
    with pytest.raises(SearchTimeout):
        greedy_search(trail_step, start, max_lengths=lengths, bos=BOS, eos=EOS, deadline=past)
    with pytest.raises(SearchTimeout):
        beam_search(trail_step, start, max_lengths=lengths, beam_size=2, bos=BOS, eos=EOS, deadline=past)


@pytest.mark.parametrize(("vocab", "chunk"), [(6000, 0), (6000, 64), (997, 0), (997, 10), (8, 0), (8, 3), (3, 0)])
def test_best_continuations_equal_one_topk_over_every_beam_and_piece(vocab: int, chunk: int) -> None:
    generator = torch.Generator().manual_seed(vocab + chunk)
    sentences, k = 7, 3
    log_probs = torch.log_softmax(3 * torch.randn(sentences * k, vocab, generator=generator), dim=-1)
    log_probs[4, :] = float("-inf")  # a beam with nothing left, as at the first step
    log_probs[k : 2 * k, 1:] = float("-inf")  # a sentence at its max length: only one piece per beam
    beam_scores = torch.randn(sentences, k, generator=generator)
    count = min(2 * k, k * vocab)

    scores, ids = best_continuations(beam_scores, log_probs, count, chunk)

    expected_scores, expected_ids = (beam_scores.view(-1, 1) + log_probs).view(sentences, k * vocab).topk(count, dim=1)
    assert torch.equal(scores, expected_scores)
    finite = expected_scores > float("-inf")  # among equal -inf scores either id is as good
    assert torch.equal(ids[finite], expected_ids[finite])
    assert bool((ids >= 0).all()) and bool((ids < k * vocab).all())


def test_the_history_keeps_every_steps_attention_rows_across_its_blocks() -> None:
    history = _History()
    steps = [torch.rand(rows, 7) for rows in [10] * 70 + [6] * 100 + [1] * 200]  # sentences leave; 3+ blocks
    for weights in steps:
        history.add_attention(weights)
    assert len(history.blocks) >= 3
    assert torch.equal(history.attention(), torch.cat(steps))
    assert history.offsets[71] == 10 * 70 + 6
