"""BART's denoising objective (Lewis et al. 2019, its best setting): sentence permutation, then
text infilling, of a packed row; the decoder reconstructs the original row.

- Sentence permutation: the row is cut at its sentence starts (the `sentence_starts` column of
  the packed shards: where tokenize mapped ingest's sentence offsets to tokens, plus every
  document boundary and the row's first token) and the pieces are put in a random order.
- Text infilling: `round(mask_ratio * n)` tokens are covered by spans whose lengths are drawn
  from Poisson(`poisson_lambda`) (drawn until they add up to that count; the last one is cut
  short so they add up exactly). Each span, whatever its length, becomes ONE `<mask>`, so the
  model must also predict how many tokens are missing; a zero-length span inserts a `<mask>`
  where nothing is missing, as BART does. Spans sit in distinct gaps between the kept tokens,
  so no two spans touch (two touching spans would read as one) and exactly the drawn number of
  tokens is masked. The noised row is never longer than the original, so it fits the positions
  the original fits: where insertions would make it longer (short rows only), the excess
  zero-length spans are dropped.

Why a pure function of (seed, row number in the stream), like the MLM masks of
`training.pretrain`: a row is noised differently every epoch but identically whatever the world
size or whether the run was resumed, so there is no noise generator to checkpoint and a resumed
run logs the losses an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "NoiseParams",
    "Seq2SeqBatch",
    "denoise_batch",
    "infill",
    "noise_row",
    "permute_sentences",
    "row_generator",
    "span_lengths",
]


@dataclass(frozen=True)
class NoiseParams:
    """BART's best noising: 30% of the tokens in Poisson(3) spans, sentences permuted."""

    mask_id: int
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute: bool = True


def row_generator(seed: int, row: int) -> np.random.Generator:
    """The noise generator of stream row `row` under `seed` (PCG64 from the seed sequence
    (seed, row): the same numbers on every platform and numpy version that keeps PCG64)."""
    return np.random.default_rng([seed % 2**64, row])


def span_lengths(n_masked: int, poisson_lambda: float, rng: np.random.Generator) -> np.ndarray:
    """Span lengths ~ Poisson(poisson_lambda) drawn until they cover `n_masked` tokens, the last
    one cut so the sum is exactly `n_masked`; zero-length spans are kept (insertions)."""
    if n_masked <= 0:
        return np.zeros(0, dtype=np.int64)
    chunk = max(8, int(2 * n_masked / max(poisson_lambda, 0.5)))
    lengths = rng.poisson(poisson_lambda, chunk)
    while lengths.sum() < n_masked:
        lengths = np.concatenate([lengths, rng.poisson(poisson_lambda, chunk)])
    total = np.cumsum(lengths)
    last = int(np.searchsorted(total, n_masked))  # first span reaching n_masked
    lengths = lengths[: last + 1].copy()
    lengths[-1] -= int(total[last]) - n_masked
    return lengths


def infill(ids: np.ndarray, lengths: np.ndarray, gaps: np.ndarray, mask_id: int) -> np.ndarray:
    """`ids` with span i (of `lengths[i]` tokens) replaced by one `mask_id` at gap `gaps[i]`.

    Gaps count the kept tokens (`len(ids) - sum(lengths)` of them): gap g is just before the
    g-th kept token (g = number kept: at the end). Gaps must be distinct."""
    order = np.argsort(gaps, kind="stable")
    g, lens = np.asarray(gaps)[order], np.asarray(lengths)[order]
    before = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    starts = g + before  # the span's first position in `ids`
    covered = np.repeat(starts - before, lens) + np.arange(int(lens.sum()))
    kept = np.ones(len(ids), dtype=bool)
    kept[covered] = False
    return np.insert(ids[kept], g, mask_id)


def permute_sentences(ids: np.ndarray, starts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`ids` cut at `starts` (plus 0) into sentences, which are put in a random order."""
    cuts = np.unique(np.concatenate([[0], np.asarray(starts, dtype=np.int64)]))
    cuts = cuts[(cuts >= 0) & (cuts < len(ids))]
    if len(cuts) < 2:
        return ids.copy()
    pieces = np.split(ids, cuts[1:])
    return np.concatenate([pieces[i] for i in rng.permutation(len(pieces))])


def noise_row(
    ids: np.ndarray, starts: np.ndarray, noise: NoiseParams, rng: np.random.Generator
) -> np.ndarray:
    """The encoder input for one row: sentences permuted (if `noise.permute`), then infilled."""
    x = permute_sentences(ids, starts, rng) if noise.permute else np.asarray(ids).copy()
    n = len(x)
    lengths = span_lengths(round(noise.mask_ratio * n), noise.poisson_lambda, rng)
    excess = len(lengths) - int(lengths.sum())  # more masks than masked tokens: longer than n
    if excess > 0:  # (short rows only) drop that many insertions, so the row fits n positions
        lengths = np.delete(lengths, np.flatnonzero(lengths == 0)[:excess])
    n_gaps = n - int(lengths.sum()) + 1
    if len(lengths) > n_gaps:  # tiny rows only: more spans than places; merge the excess
        lengths = np.concatenate([lengths[: n_gaps - 1], [lengths[n_gaps - 1 :].sum()]])
        n_gaps = n - int(lengths.sum()) + 1
    gaps = rng.choice(n_gaps, size=len(lengths), replace=False)
    return infill(x, lengths, gaps, noise.mask_id)


@dataclass
class Seq2SeqBatch:
    """A denoising micro-batch: the noised rows (padded, with their attention mask and global
    attention on the first token, as LED wants), the decoder input (the original rows shifted
    right behind `decoder_start_token_id`) and the labels (the original rows)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    global_attention_mask: torch.Tensor
    decoder_input_ids: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> Seq2SeqBatch:
        return Seq2SeqBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "global_attention_mask": self.global_attention_mask,
            "decoder_input_ids": self.decoder_input_ids,
        }


def denoise_batch(
    rows: np.ndarray,
    starts: list[np.ndarray],
    first_row: int,
    *,
    seed: int,
    noise: NoiseParams,
    pad_id: int,
    decoder_start_id: int,
) -> Seq2SeqBatch:
    """Rows `first_row, first_row + 1, ...` of the stream noised (each by its own
    `row_generator(seed, row)`) into one padded batch."""
    noised = [
        noise_row(np.asarray(r), s, noise, row_generator(seed, first_row + i))
        for i, (r, s) in enumerate(zip(rows, starts, strict=True))
    ]
    width = max(len(x) for x in noised)
    input_ids = torch.full((len(noised), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(noised), width), dtype=torch.long)
    for i, x in enumerate(noised):
        input_ids[i, : len(x)] = torch.from_numpy(x.astype(np.int64))
        attention_mask[i, : len(x)] = 1
    global_mask = torch.zeros_like(attention_mask)
    global_mask[:, 0] = 1
    labels = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    decoder_input_ids = torch.full_like(labels, decoder_start_id)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    return Seq2SeqBatch(input_ids, attention_mask, global_mask, decoder_input_ids, labels)
