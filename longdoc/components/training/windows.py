"""Long inputs as overlapping windows, and the pieces that put window outputs back together.

Why windows: a real WikiHop or TriviaQA example can be longer than the model's positions. The
input is cut into windows of at most `width` tokens that overlap by `overlap` tokens (so an answer
near a cut is whole in at least one window); every window repeats the question (and the WikiHop
candidates) in front, with global attention on them. What is combined across windows depends on
the task (see components/training/adapters.py); this module holds the task-independent parts: where
the cuts go, span decoding, and mapping character spans to token spans.

Truncation (the 512-token baseline) is the same code with `max_windows=1`: only the first window
is kept, which is exactly what `truncation=True` in a tokenizer does to the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch


def window_starts(n: int, width: int, overlap: int, max_windows: int | None = None) -> list[int]:
    """Start offsets of windows of `width` tokens covering `n` tokens, neighbours sharing
    `overlap` tokens; the last window is flush with the end (no short tail window).

    `n == 0` still gives one (empty) window, so every example has something to score.
    """
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    if not 0 <= overlap < width:
        raise ValueError(f"window overlap must be in [0, {width}), got {overlap}")
    if n <= width:
        return [0]
    stride = width - overlap
    starts = list(range(0, n - width, stride)) + [n - width]
    if max_windows is not None:
        starts = starts[:max_windows]
    return starts


#: The config.json key of a fine-tuned checkpoint that records how it read long inputs, so
#: serving (inference.serving) reads them the same way.
WINDOW_CONFIG_KEY = "longdoc_windows"


def record_window_settings(config, max_len: int, overlap: int, windows: bool) -> None:
    """Note on a model config (saved with the checkpoint) the window settings it was fine-tuned
    and evaluated with: `max_len` tokens a window, `window_overlap` shared by neighbours,
    `windows` false = truncation at max_len."""
    setattr(
        config,
        WINDOW_CONFIG_KEY,
        {"max_len": int(max_len), "window_overlap": int(overlap), "windows": bool(windows)},
    )


def window_settings(config) -> dict | None:
    """The settings `record_window_settings` noted on `config`, or None (a checkpoint saved
    before they were recorded)."""
    value = getattr(config, WINDOW_CONFIG_KEY, None)
    return dict(value) if isinstance(value, dict) else None


def char_span_to_tokens(
    offsets: Sequence[tuple[int, int]], start: int, end: int
) -> tuple[int, int] | None:
    """The first and last token (inclusive) whose characters overlap [start, end), or None.

    Byte-level BPE offsets may include a leading space (" Paris" starts one character early), so
    overlap rather than equality decides membership.
    """
    first = last = None
    for i, (s, e) in enumerate(offsets):
        if e <= start or e == s:
            continue
        if s >= end:
            break
        if first is None:
            first = i
        last = i
    return None if first is None else (first, last)


def find_occurrences(text: str, answers: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of every occurrence of every answer string in `text`, case-insensitive,
    on word boundaries (so the alias "Tess" does not match inside "Tessik").

    Why every occurrence of every alias: TriviaQA gives no answer position, only strings; the
    distant-supervision recipe (Longformer, Clark & Gardner) trains on all of them and lets the
    model put its mass on the ones that fit.
    """
    spans: set[tuple[int, int]] = set()
    for ans in answers:
        ans = ans.strip()
        if not ans:
            continue
        pattern = re.compile(r"(?<!\w)" + re.escape(ans) + r"(?!\w)", re.IGNORECASE)
        spans.update((m.start(), m.end()) for m in pattern.finditer(text))
    return sorted(spans)


def word_boundaries(text: str, offsets: Sequence[tuple[int, int]]) -> tuple[list[bool], list[bool]]:
    """Which tokens may start and which may end an answer: those at the start (end) of a word.

    Why: answers are whole words (TriviaQA aliases, HotpotQA spans), but a small model left free
    picks sub-word pieces ("igi" out of "Luigi"); ruling those out shrinks the softmax to the
    spans that can be right. A token starts a word when the character before its first
    non-space character is not alphanumeric (or it is the first), ends one when the character
    after it is not alphanumeric; punctuation tokens qualify on both sides.
    """
    starts, ends = [], []
    for a, b in offsets:
        while a < b and text[a].isspace():
            a += 1
        if a >= b:
            starts.append(False)
            ends.append(False)
            continue
        starts.append(a == 0 or not text[a - 1].isalnum() or not text[a].isalnum())
        ends.append(b >= len(text) or not text[b].isalnum() or not text[b - 1].isalnum())
    return starts, ends


def best_span(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    allowed: torch.Tensor,
    max_answer_len: int,
    top_k: int = 20,
    allowed_end: torch.Tensor | None = None,
) -> tuple[float, int, int]:
    """The highest `start + end` score over spans with start <= end < start + max_answer_len,
    the start on an `allowed` token and the end on an `allowed_end` one (default: `allowed`);
    1-D tensors of one window. Returns (score, start, end); score is -inf when nothing is allowed.

    Only the top_k starts and ends are paired: the best span almost always uses one of them, and
    this keeps decoding O(k^2) instead of O(n^2) for 4k-token windows.
    """
    allowed_end = allowed if allowed_end is None else allowed_end
    neg = torch.finfo(start_logits.dtype).min
    s = start_logits.masked_fill(~allowed, neg)
    e = end_logits.masked_fill(~allowed_end, neg)
    if not bool(allowed.any()) or not bool(allowed_end.any()):
        return float("-inf"), 0, 0
    s_val, s_idx = s.topk(min(top_k, int(allowed.sum())))
    e_val, e_idx = e.topk(min(top_k, int(allowed_end.sum())))
    scores = s_val[:, None] + e_val[None, :]
    length = e_idx[None, :] - s_idx[:, None]
    ok = (length >= 0) & (length < max_answer_len)
    if not bool(ok.any()):  # no top-k pair fits: fall back to the best single token
        i = int((s + e).argmax())
        return float(s[i] + e[i]), i, i
    scores = scores.masked_fill(~ok, float("-inf"))
    flat = int(scores.argmax())
    i, j = divmod(flat, scores.shape[1])
    return float(scores[i, j]), int(s_idx[i]), int(e_idx[j])


def marginal_span_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    allowed: torch.Tensor,
    gold_starts: torch.Tensor,
    gold_ends: torch.Tensor,
    allowed_end: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log P(any gold start) - log P(any gold end), the softmax taken jointly over every allowed
    token of every window of the example (shared normalisation), so windows compete and scores
    are comparable across windows and documents at prediction time.

    All arguments have one shape (windows, seq); `gold_*` are boolean masks that may mark several
    positions (all occurrences of all aliases); ends are restricted to `allowed_end` (default
    `allowed`). Returns 0 (with a graph) when nothing is gold.
    """
    allowed_end = allowed if allowed_end is None else allowed_end
    neg = torch.finfo(start_logits.dtype).min
    total = start_logits.new_zeros(())
    for logits, gold, ok in (
        (start_logits, gold_starts, allowed),
        (end_logits, gold_ends, allowed_end),
    ):
        gold = gold & ok
        if not bool(gold.any()):
            return (start_logits.sum() + end_logits.sum()) * 0.0
        flat = logits.masked_fill(~ok, neg).reshape(-1)
        total = total + torch.logsumexp(flat, 0)
        total = total - torch.logsumexp(flat.masked_fill(~gold.reshape(-1), neg), 0)
    return total / 2
