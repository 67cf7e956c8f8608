"""BART's noising (`training.denoise`) on hand-checked cases: span infilling, the Poisson span
lengths, the 30% mask ratio, sentence permutation keeping the multiset of sentences, and noise
that is a pure function of (seed, row)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from longdoc.components.training.denoise import (
    NoiseParams,
    denoise_batch,
    infill,
    noise_row,
    permute_sentences,
    row_generator,
    span_lengths,
)

MASK = 4


def test_infill_replaces_each_span_with_one_mask():
    ids = np.arange(10, 20)
    # kept tokens: 10 13 14 15 19; gap 1 after "10" eats 11 12, gap 3 inserts (length 0),
    # gap 4 before "19" eats 16 17 18
    got = infill(ids, np.array([3, 2, 0]), np.array([4, 1, 3]), MASK)
    assert got.tolist() == [10, MASK, 13, 14, MASK, 15, MASK, 19]
    # at both ends; a span of the whole row
    assert infill(ids, np.array([1, 0]), np.array([0, 9]), MASK).tolist() == [
        MASK, *range(11, 20), MASK,
    ]  # fmt: skip
    assert infill(ids, np.array([10]), np.array([0]), MASK).tolist() == [MASK]


def test_span_lengths_are_poisson_and_add_up_exactly():
    rng = np.random.default_rng(0)
    drawn = []
    for _ in range(400):
        lengths = span_lengths(300, 3.0, rng)
        assert lengths.sum() == 300 and (lengths >= 0).all()
        drawn.extend(lengths[:-1].tolist())  # the last one is cut to fit
    freq = Counter(drawn)
    for k in range(9):
        assert freq[k] / len(drawn) == pytest.approx(
            3.0**k * math.exp(-3.0) / math.factorial(k), abs=0.01
        ), k
    assert np.mean(drawn) == pytest.approx(3.0, abs=0.05)
    assert span_lengths(0, 3.0, rng).size == 0


def test_noise_row_masks_30_percent_in_spans_that_never_touch():
    n = 1000
    ids = np.arange(100, 100 + n)  # distinct, so what survived is visible
    for row in range(20):
        noise = NoiseParams(mask_id=MASK, permute=False)
        out = noise_row(ids, np.zeros(0), noise, row_generator(7, row))
        kept = out[out != MASK]
        assert len(kept) == n - 300  # exactly round(0.3 * n) tokens masked
        assert (np.diff(kept) > 0).all()  # the survivors, in order
        is_mask = out == MASK
        assert not (is_mask[1:] & is_mask[:-1]).any()  # one <mask> per span, never two in a row
        # every run of missing tokens is marked by a mask (zero-length spans add more masks)
        missing_runs = int((np.diff(np.concatenate([[99], kept, [100 + n]])) > 1).sum())
        assert is_mask.sum() >= missing_runs
        assert is_mask.sum() == pytest.approx(100, rel=0.3)  # ~ 300 / 3 spans


def test_zero_length_spans_insert_masks():
    # 200 rows of 20 tokens, 6 masked each: a zero-length span shows as more masks than runs
    inserted = 0
    for row in range(200):
        ids = np.arange(100, 120)
        out = noise_row(ids, np.zeros(0), NoiseParams(MASK, permute=False), row_generator(0, row))
        kept = out[out != MASK]
        runs = int((np.diff(np.concatenate([[99], kept, [120]])) > 1).sum())
        inserted += int((out == MASK).sum()) - runs
    assert inserted > 0


def test_a_noised_row_is_never_longer_than_the_row():
    for n in (1, 2, 5, 8, 32):
        for row in range(300):
            out = noise_row(
                np.arange(100, 100 + n), np.zeros(0), NoiseParams(MASK), row_generator(5, row)
            )
            assert len(out) <= n, (n, row)


def test_sentence_permutation_keeps_the_multiset_of_sentences():
    ids = np.arange(10, 30)
    starts = np.array([0, 3, 7, 8, 15])
    sentences = Counter(tuple(s) for s in np.split(ids, starts[1:]))
    orders = set()
    for row in range(30):
        out = permute_sentences(ids, starts, row_generator(1, row))
        assert sorted(out.tolist()) == ids.tolist()
        got = []
        while len(out):  # read the sentences back: each starts with a known first token
            s = next(s for s in sentences if tuple(out[: len(s)]) == s)
            got.append(s)
            out = out[len(s) :]
        assert Counter(got) == sentences
        orders.add(tuple(got))
    assert len(orders) > 10  # really shuffled (5 sentences: 120 orders)
    one = permute_sentences(ids, np.array([0]), row_generator(1, 0))
    assert one.tolist() == ids.tolist()  # one sentence: nothing to permute


def test_noise_is_a_pure_function_of_seed_and_row():
    rng = np.random.default_rng(3)
    rows = rng.integers(5, 300, size=(6, 64))
    starts = [np.array([0, 10, 30, 50])] * 6
    kw = dict(seed=11, noise=NoiseParams(MASK), pad_id=1, decoder_start_id=2)
    whole = denoise_batch(rows, starts, 40, **kw)
    again = denoise_batch(rows, starts, 40, **kw)
    assert all(getattr(whole, f).equal(getattr(again, f)) for f in vars(whole))
    for i in range(6):  # a row noised alone equals the row noised in a batch: no batch state
        alone = denoise_batch(rows[i : i + 1], starts[:1], 40 + i, **kw)
        n = int(alone.attention_mask.sum())
        assert whole.input_ids[i, :n].equal(alone.input_ids[0, :n])
        assert int(whole.attention_mask[i].sum()) == n
        assert (whole.input_ids[i, n:] == 1).all()  # padded
    other_row = denoise_batch(rows[:1], starts[:1], 41, **kw)
    other_seed = denoise_batch(rows[:1], starts[:1], 40, **{**kw, "seed": 12})
    assert not other_row.input_ids.equal(whole.input_ids[:1, : other_row.input_ids.shape[1]])
    assert not other_seed.input_ids.equal(whole.input_ids[:1, : other_seed.input_ids.shape[1]])
    # targets: the original rows; the decoder reads them shifted right behind the start token
    assert whole.labels.tolist() == rows.tolist()
    assert (whole.decoder_input_ids[:, 0] == 2).all()
    assert whole.decoder_input_ids[:, 1:].equal(whole.labels[:, :-1])
    assert whole.global_attention_mask[:, 0].all() and whole.global_attention_mask.sum() == 6
