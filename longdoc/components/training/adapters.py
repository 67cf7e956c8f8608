"""Per-task encoding, loss, window aggregation and prediction for fine-tuning.

One `TaskAdapter` per kind of task turns a loader's example (components.tasks) into model windows
once, before training, and knows how to score them:

- classification (IMDB, Hyperpartisan): `<s> text </s>`, global attention on `<s>`; windows'
  logits are averaged.
- WikiHop: `<s> query </s> cand_1 </s> ... cand_n </s> supports </s>`, global attention on the
  query and every candidate token; a candidate's score is read from its pooled prefix tokens in
  each window and the scores are averaged across windows (every window repeats the prefix).
- TriviaQA: `<s> question </s></s> evidence </s>` per window of each evidence document, global
  attention on the question; trained on every occurrence of every answer alias with one softmax
  shared by all windows of all documents of the question; the answer is the best-scoring span
  over all of them.
- HotpotQA: `<s> question </s></s> title. sentences ... </s>`, global attention on the question;
  answer span as TriviaQA, answer type (span/yes/no) from `<s>` averaged over windows, and a
  supporting-fact score per sentence (averaged over the windows holding it).
- summarization (seq2seq): `<s> article </s>` cut at max_len into an LED (no windows: its
  encoder reads long inputs whole), global attention on `<s>`; loss on the reference summary,
  dev predictions generated with the settings the checkpoint keeps.

Windows (training.windows) apply when an input is longer than `max_len`; with `max_windows=1`
the same code truncates, which is how the 512-token baseline is built. `losses` and
`predictions` take several examples and run their windows in one forward pass (padded to the
longest window); each example's loss and prediction are what it would get alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from longdoc.components.modeling.heads import (
    ANSWER_TYPES,
    HotpotOutput,
    LongdocForHotpotQA,
    LongdocForWikiHop,
)
from longdoc.components.modeling.model import (
    LongformerForQuestionAnswering,
    LongformerForSequenceClassification,
    quiet_loading,
)
from longdoc.components.tasks import Task, get_task
from longdoc.components.training import parallel
from longdoc.components.training.windows import (
    best_span,
    char_span_to_tokens,
    find_occurrences,
    marginal_span_loss,
    window_starts,
    word_boundaries,
)

#: Longest question prefix kept (tokens); WikiHop candidates are cut to MAX_CANDIDATE_TOKENS each.
MAX_QUESTION_TOKENS = 64
MAX_CANDIDATE_TOKENS = 16
#: Longest answer span considered at prediction time, in tokens (fine-tuning's dev predictions
#: and serving: one limit).
MAX_ANSWER_TOKENS = 16
#: Supporting-fact sentences predicted when none scores above 0.5 (every HotpotQA question has
#: at least two).
MIN_SUPPORTING = 2


class EncodeError(ValueError):
    """An example that cannot be encoded at this max_len (reported and skipped, never fatal)."""


@dataclass
class Window:
    ids: list[int]
    global_positions: list[int]
    context: tuple[int, int] = (0, 0)  # [first, end) positions of context tokens in `ids`
    # per context token: (segment, char start, char end) in the example's segment texts
    offsets: list[tuple[int, int, int]] = field(default_factory=list)
    word_start: list[bool] = field(default_factory=list)  # per context token: may start a span
    word_end: list[bool] = field(default_factory=list)  # per context token: may end a span
    gold_starts: list[int] = field(default_factory=list)
    gold_ends: list[int] = field(default_factory=list)
    items: dict[int, list[int]] = field(default_factory=dict)  # item -> positions in `ids`


@dataclass
class Encoded:
    id: str
    windows: list[Window]
    n_items: int = 0  # candidates (WikiHop) or sentences (HotpotQA)
    label: int | None = None  # class, candidate or answer type
    segments: list[str] = field(default_factory=list)  # texts that spans are cut from
    item_keys: list[Any] = field(default_factory=list)  # candidate strings / (title, sent_id)
    item_labels: list[float] = field(default_factory=list)  # supporting-fact targets
    # serving: tokens the model read (one window's specials + every input token covered) and
    # whether some of the input was not read (truncation)
    tokens: int = 0
    truncated: bool = False

    @property
    def has_span_target(self) -> bool:
        return any(w.gold_starts for w in self.windows)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]


def _windows(encs: list[Encoded]) -> list[Window]:
    return [w for enc in encs for w in enc.windows]


def _rows(encs: list[Encoded]) -> list[slice]:
    """Each example's rows in a batch of the windows of `encs` (in order)."""
    rows, start = [], 0
    for enc in encs:
        rows.append(slice(start, start + len(enc.windows)))
        start += len(enc.windows)
    return rows


def _batch(encs: list[Encoded], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Tensors for the windows of `encs` (one forward pass over several examples: their
    windows in order, padded to the longest)."""
    windows = _windows(encs)
    width = max(len(w.ids) for w in windows)
    n = len(windows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    glob = torch.zeros((n, width), dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, : len(w.ids)] = torch.tensor(w.ids)
        mask[i, : len(w.ids)] = 1
        glob[i, w.global_positions] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "global": glob}


def _item_weights(encs: list[Encoded], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, N, L) mean-pooling weights of each item's tokens per window of `encs`, and the (W, N)
    mask of which items a window holds (N: the most items of any example)."""
    windows = _windows(encs)
    items = max(1, *(e.n_items for e in encs))
    weights = torch.zeros((len(windows), items, width))
    present = torch.zeros((len(windows), items))
    for w_i, w in enumerate(windows):
        for item, positions in w.items.items():
            if positions:
                weights[w_i, item, positions] = 1.0 / len(positions)
                present[w_i, item] = 1.0
    return weights, present


def _span_masks(enc: Encoded, width: int) -> tuple[torch.Tensor, ...]:
    """(may start, may end, gold start, gold end) masks, each (windows, width): context tokens
    at word boundaries may start/end a span."""
    n = len(enc.windows)
    allowed = torch.zeros((n, width), dtype=torch.bool)
    allowed_end = torch.zeros((n, width), dtype=torch.bool)
    starts = torch.zeros((n, width), dtype=torch.bool)
    ends = torch.zeros((n, width), dtype=torch.bool)
    for i, w in enumerate(enc.windows):
        a, b = w.context
        allowed[i, a:b] = torch.tensor(w.word_start, dtype=torch.bool) if w.word_start else True
        allowed_end[i, a:b] = torch.tensor(w.word_end, dtype=torch.bool) if w.word_end else True
        starts[i, w.gold_starts] = True
        ends[i, w.gold_ends] = True
    return allowed, allowed_end, starts, ends


def span_text(enc: Encoded, window: Window, start: int, end: int) -> str:
    seg, cs, _ = window.offsets[start - window.context[0]]
    seg_end, _, ce = window.offsets[end - window.context[0]]
    if seg_end != seg:  # a span never crosses documents; keep the start's document
        ce = len(enc.segments[seg])
    return enc.segments[seg][cs:ce].strip()


def _context_windows(
    prefix: list[int],
    global_positions: list[int],
    tokens: list[int],
    offsets: list[tuple[int, int]],
    segment: int,
    sep_id: int,
    max_len: int,
    overlap: int,
    max_windows: int | None,
    answer_spans: list[tuple[int, int]] = (),
    items: list[tuple[int, int, int]] = (),
    text: str | None = None,
) -> list[Window]:
    """`prefix + tokens[s:s+width] + </s>` for each window start s, with gold span positions
    (`answer_spans`, token index pairs) and item positions (`items`: (item, first, last)) that
    fall inside the window, shifted to window positions."""
    width = max_len - len(prefix) - 1
    if width < 16:
        raise EncodeError(
            f"the question prefix takes {len(prefix)} of {max_len} tokens; no room for context"
        )
    starts_word, ends_word = word_boundaries(text, offsets) if text is not None else ([], [])
    out = []
    for s in window_starts(len(tokens), width, min(overlap, width // 2), max_windows):
        e = min(len(tokens), s + width)
        shift = len(prefix) - s
        w = Window(
            ids=prefix + tokens[s:e] + [sep_id],
            global_positions=list(global_positions),
            context=(len(prefix), len(prefix) + e - s),
            offsets=[(segment, a, b) for a, b in offsets[s:e]],
            word_start=starts_word[s:e],
            word_end=ends_word[s:e],
        )
        for a, b in answer_spans:
            if s <= a and b < e:
                w.gold_starts.append(a + shift)
                w.gold_ends.append(b + shift)
        for item, a, b in items:
            lo, hi = max(a, s), min(b, e - 1)
            if lo <= hi:  # an item may have several ranges (a sentence and its title)
                w.items.setdefault(item, []).extend(range(lo + shift, hi + shift + 1))
        out.append(w)
    return out


class TaskAdapter:
    """What fine-tuning needs to know about one kind of task."""

    kind: str = ""

    def __init__(self, task: Task, tokenizer) -> None:
        self.task = task  # the registration: labels, evaluate, write_predictions...
        self.tokenizer = tokenizer
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad = tokenizer.pad_token_id

    def build_model(self, base):  # pragma: no cover - overridden
        raise NotImplementedError

    def encode(
        self, example, max_len: int, overlap: int, max_windows: int | None, train: bool
    ) -> Encoded:  # pragma: no cover - overridden
        raise NotImplementedError

    def learnable(self, enc: Encoded) -> bool:
        """Whether `enc` has something to learn from (decided before any forward pass)."""
        return enc.label is not None

    def losses(self, model, encs: list[Encoded]) -> torch.Tensor:  # pragma: no cover
        """The loss of each of `encs` (all learnable), from one forward pass over all their
        windows: a tensor of ``len(encs)`` losses."""
        raise NotImplementedError

    def predictions(self, model, encs: list[Encoded]) -> list[Any]:  # pragma: no cover
        """The prediction for each of `encs`, from one forward pass where the kind allows."""
        raise NotImplementedError

    def prediction_file(self, predictions: dict[str, Any]) -> dict:
        return dict(predictions)

    #: the suffix of the task's prediction files (beside the metrics file)
    predictions_suffix = ".json"
    #: whether `predictions` runs one forward pass for all its examples (not: generation)
    predicts_in_passes = True

    def configure(self, params) -> None:
        """Take what the adapter needs from the run's FinetuneParams (nothing by default)."""

    def max_input_tokens(self, model) -> int:
        """The longest input (tokens) the model takes: what `finetune.max_len` may not exceed."""
        return model.config.max_position_embeddings - 2

    def _device(self, model) -> torch.device:
        return next(model.parameters()).device


class ClassificationAdapter(TaskAdapter):
    """IMDB and Hyperpartisan: `{id: label}` with the task's label names (`Task.labels`)."""

    kind = "classification"

    def build_model(self, base):
        labels = tuple(self.task.labels)
        with quiet_loading():  # the MLM head is dropped and the classifier is new: expected
            return LongformerForSequenceClassification.from_pretrained(
                base,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={n: i for i, n in enumerate(labels)},
            )

    def encode(self, example, max_len, overlap, max_windows, train):
        tokens = _ids(self.tokenizer, example.text)
        enc = classification_encoded(
            example.id, tokens, self.cls, self.sep, max_len, overlap, max_windows
        )
        enc.label = example.label
        return enc

    def logits(self, model, encs: list[Encoded]) -> torch.Tensor:
        """(examples, classes)."""
        b = _batch(encs, self.pad, self._device(model))
        out = model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            global_attention_mask=b["global"].to(b["input_ids"].device),
        )
        return torch.stack([aggregate_class_logits(out.logits[r]) for r in _rows(encs)])

    def losses(self, model, encs):
        target = torch.tensor([e.label for e in encs], device=self._device(model))
        return F.cross_entropy(self.logits(model, encs), target, reduction="none")

    def predictions(self, model, encs):
        return [self.task.labels[int(i)] for i in self.logits(model, encs).argmax(1)]


def classification_encoded(
    id: str,
    tokens: list[int],
    cls: int,
    sep: int,
    max_len: int,
    overlap: int,
    max_windows: int | None,
) -> Encoded:
    """`<s> tokens[s:s+max_len-2] </s>` per window start s, global attention on `<s>`: what
    fine-tuning trains and predicts on and what serving scores (inference.serving)."""
    width = max_len - 2
    starts = window_starts(len(tokens), width, min(overlap, width // 2), max_windows)
    windows = [
        Window(ids=[cls] + tokens[s : s + width] + [sep], global_positions=[0]) for s in starts
    ]
    read = min(len(tokens), starts[-1] + width)
    return Encoded(id, windows, tokens=read + 2, truncated=read < len(tokens))


def aggregate_class_logits(window_logits: torch.Tensor) -> torch.Tensor:
    """One example's class logits from its windows' (W, C) logits: windows vote with equal
    weight (the mean). Fine-tuning's loss and dev predictions and serving all use this."""
    return window_logits.float().mean(0)


class WikiHopAdapter(TaskAdapter):
    """WikiHop: `{id: candidate}`; candidate scores averaged over windows."""

    kind = "choice"

    def build_model(self, base):
        with quiet_loading():
            return LongdocForWikiHop.from_pretrained(base)

    def encode(self, example, max_len, overlap, max_windows, train):
        # WikiHop's query and candidates are lower-cased; lower-casing the supports too makes a
        # candidate and its mentions the same tokens.
        query = example.query.replace("_", " ").lower()
        prefix = [self.cls] + _ids(self.tokenizer, query)[:MAX_QUESTION_TOKENS] + [self.sep]
        spans = []
        for i, cand in enumerate(example.candidates):
            toks = _ids(self.tokenizer, " " + cand.lower())[:MAX_CANDIDATE_TOKENS] or [self.sep]
            spans.append((i, len(prefix), len(prefix) + len(toks) - 1))
            prefix += toks + [self.sep]
        context: list[int] = []
        for doc in example.supports:
            context += _ids(self.tokenizer, " " + doc.lower()) + [self.sep]
        windows = _context_windows(
            prefix,
            list(range(len(prefix))),  # query and every candidate token are global
            context,
            [(0, 0)] * len(context),
            0,
            self.sep,
            max_len,
            overlap,
            max_windows,
        )
        for w in windows:  # the candidates sit in the prefix: same positions in every window
            w.items = {i: list(range(a, b + 1)) for i, a, b in spans}
        return Encoded(
            example.id,
            windows,
            n_items=len(example.candidates),
            label=example.answer,
            item_keys=list(example.candidates),
        )

    def scores(self, model, encs: list[Encoded]) -> list[torch.Tensor]:
        """Each example's candidate scores, averaged over its windows."""
        b = _batch(encs, self.pad, self._device(model))
        weights, _ = _item_weights(encs, b["input_ids"].shape[1])
        dev = b["input_ids"].device
        out = model(
            b["input_ids"], b["attention_mask"], b["global"].to(dev), weights.to(dev)
        ).float()
        return [out[r].mean(0)[: e.n_items] for r, e in zip(_rows(encs), encs, strict=True)]

    def losses(self, model, encs):
        dev = self._device(model)
        return torch.stack(
            [
                F.cross_entropy(s[None], torch.tensor([e.label], device=dev))
                for s, e in zip(self.scores(model, encs), encs, strict=True)
            ]
        )

    def predictions(self, model, encs):
        scores = self.scores(model, encs)
        return [e.item_keys[int(s.argmax())] for s, e in zip(scores, encs, strict=True)]


class TriviaQAAdapter(TaskAdapter):
    """TriviaQA: `{QuestionId: answer}`; best span over every window of every document."""

    kind = "span"

    def build_model(self, base):
        with quiet_loading():
            return LongformerForQuestionAnswering.from_pretrained(base, num_labels=2)

    def encode(self, example, max_len, overlap, max_windows, train):
        q = _ids(self.tokenizer, example.question)[:MAX_QUESTION_TOKENS]
        windows: list[Window] = []
        segments = []
        for d, doc in enumerate(example.documents):
            segments.append(doc.text)
            tokens, offsets = _with_offsets(self.tokenizer, doc.text)
            answers = example.answers if train else ()
            windows += span_windows(
                q, tokens, offsets, doc.text, d, self.cls, self.sep, max_len, overlap,
                max_windows, answers,
            )  # fmt: skip
        if not windows:
            raise EncodeError("no evidence documents")
        return Encoded(example.id, windows, segments=segments)

    def outputs(self, model, encs: list[Encoded]):
        """(start logits, end logits) of all windows of `encs`, each (windows, width), and
        the width."""
        b = _batch(encs, self.pad, self._device(model))
        out = model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            global_attention_mask=b["global"].to(b["input_ids"].device),
        )
        return out.start_logits.float(), out.end_logits.float(), b["input_ids"].shape[1]

    def learnable(self, enc):  # answer absent from the evidence: nothing to learn from
        return enc.has_span_target

    def losses(self, model, encs):
        start, end, width = self.outputs(model, encs)
        out = []
        for r, enc in zip(_rows(encs), encs, strict=True):
            allowed, allowed_end, gs, ge = (m.to(start.device) for m in _span_masks(enc, width))
            out.append(marginal_span_loss(start[r], end[r], allowed, gs, ge, allowed_end))
        return torch.stack(out)

    def predictions(self, model, encs):
        start, end, width = self.outputs(model, encs)
        start, end = start.cpu(), end.cpu()
        return [
            _best_text(enc, start[r], end[r], width)
            for r, enc in zip(_rows(encs), encs, strict=True)
        ]


def span_windows(
    question_ids: list[int],
    tokens: list[int],
    offsets: list[tuple[int, int]],
    text: str,
    segment: int,
    cls: int,
    sep: int,
    max_len: int,
    overlap: int,
    max_windows: int | None,
    answers=(),
) -> list[Window]:
    """The windows of one context (a TriviaQA evidence document, a served QA text):
    `<s> question </s></s> context[s:s+width] </s>`, global attention on `<s>` and the question,
    gold spans at every occurrence of every `answers` string. The question is cut to
    MAX_QUESTION_TOKENS tokens; EncodeError when it leaves no room for context."""
    q = question_ids[:MAX_QUESTION_TOKENS]
    spans = []
    for cs, ce in find_occurrences(text, answers) if answers else ():
        t = char_span_to_tokens(offsets, cs, ce)
        if t is not None:
            spans.append(t)
    return _context_windows(
        [cls] + q + [sep, sep],
        list(range(len(q) + 1)),  # <s> and the question
        tokens,
        offsets,
        segment,
        sep,
        max_len,
        overlap,
        max_windows,
        answer_spans=spans,
        text=text,
    )


def best_window_span(enc: Encoded, start, end, width: int) -> tuple[float, int, int, int]:
    """(score, window, start, end) of the best span (at most MAX_ANSWER_TOKENS tokens, word
    boundaries) over every window of `enc`, from (W, width) start/end logits; score is
    start + end logit (-inf when no span is allowed). Fine-tuning's dev predictions and serving
    both decode with this."""
    allowed, allowed_end, _, _ = _span_masks(enc, width)
    best = (float("-inf"), 0, 0, 0)
    for i in range(len(enc.windows)):
        score, s, e = best_span(
            start[i], end[i], allowed[i], MAX_ANSWER_TOKENS, allowed_end=allowed_end[i]
        )
        if score > best[0]:
            best = (score, i, s, e)
    return best


def span_score(enc: Encoded, start, end, width: int, best: float) -> float:
    """P(start) x P(end) of a span scoring `best`, both softmaxes taken jointly over the tokens
    that may start (end) a span in every window (the shared normalisation training uses)."""
    allowed, allowed_end, _, _ = _span_masks(enc, width)
    neg = torch.finfo(torch.float32).min
    z = torch.logsumexp(start.float().masked_fill(~allowed, neg).reshape(-1), 0)
    z = z + torch.logsumexp(end.float().masked_fill(~allowed_end, neg).reshape(-1), 0)
    return float(torch.exp(torch.tensor(best) - z))


def _best_text(enc: Encoded, start, end, width: int) -> str:
    score, i, s, e = best_window_span(enc, start, end, width)
    if score == float("-inf"):
        return ""
    return span_text(enc, enc.windows[i], s, e)


def _hotpot_context(context) -> tuple[str, list, list, list]:
    """The paragraphs as one text ("title. sentences\n" each) with, per sentence, its character
    span, its paragraph title's span and its (title, sentence index) key."""
    parts, sent_chars, title_chars, keys, pos = [], [], [], [], 0
    for title, sentences in context:
        head = f"{title}. "
        parts.append(head)
        span = (pos, pos + len(title))
        pos += len(head)
        for j, sent in enumerate(sentences):
            parts.append(sent)
            sent_chars.append((pos, pos + len(sent)))
            title_chars.append(span)
            keys.append((title, j))
            pos += len(sent)
        parts.append("\n")
        pos += 1
    return "".join(parts), sent_chars, title_chars, keys


def _hotpot_answer(answer: str | None, text: str, offsets) -> tuple[int | None, list]:
    """(answer type label, token spans of the answer in `text`): None, [] without an answer;
    yes/no answers have no span."""
    if answer is None:
        return None, []
    answer = answer.strip()
    if answer.lower() in ("yes", "no"):
        return ANSWER_TYPES.index(answer.lower()), []
    found = (char_span_to_tokens(offsets, cs, ce) for cs, ce in find_occurrences(text, [answer]))
    return 0, [t for t in found if t is not None]


class HotpotQAAdapter(TaskAdapter):
    """HotpotQA: `{"answer": {_id: answer}, "sp": {_id: [[title, sent_id], ...]}}`."""

    kind = "hotpot"

    def build_model(self, base):
        with quiet_loading():
            return LongdocForHotpotQA.from_pretrained(base)

    def encode(self, example, max_len, overlap, max_windows, train):
        q = _ids(self.tokenizer, example.question)[:MAX_QUESTION_TOKENS]
        prefix = [self.cls] + q + [self.sep, self.sep]
        text, sent_chars, title_chars, keys = _hotpot_context(example.context)
        tokens, offsets = _with_offsets(self.tokenizer, text)
        items = []
        # a sentence is pooled with its paragraph's title: whether the title is what the
        # question asks about is most of what makes a sentence supporting
        for k, (cs, ce) in enumerate(sent_chars):
            for a, b in ((cs, ce), title_chars[k]):
                t = char_span_to_tokens(offsets, a, b)
                if t is not None:
                    items.append((k, *t))
        label, spans = _hotpot_answer(example.answer, text, offsets)
        gold = {(t, i) for t, i in example.supporting_facts}
        windows = _context_windows(
            prefix,
            list(range(len(q) + 1)),
            tokens,
            offsets,
            0,
            self.sep,
            max_len,
            overlap,
            max_windows,
            answer_spans=spans,
            items=items,
            text=text,
        )
        return Encoded(
            example.id,
            windows,
            n_items=len(keys),
            label=label,
            segments=[text],
            item_keys=keys,
            item_labels=[float(k in gold) for k in keys],
        )

    def outputs(self, model, encs: list[Encoded]):
        """Per example: its windows' outputs, its sentences' scores averaged over the windows
        holding them, and which sentences some window holds."""
        b = _batch(encs, self.pad, self._device(model))
        dev = b["input_ids"].device
        weights, present = _item_weights(encs, b["input_ids"].shape[1])
        out = model(b["input_ids"], b["attention_mask"], b["global"].to(dev), weights.to(dev))
        present = present.to(dev)
        per_example = []
        for r, enc in zip(_rows(encs), encs, strict=True):
            seen = present[r].sum(0)
            sent = (out.sentence_logits[r].float() * present[r]).sum(0) / seen.clamp(min=1)
            mine = HotpotOutput(*(t[r] for t in out))
            per_example.append((mine, sent[: enc.n_items], seen[: enc.n_items] > 0))
        return per_example

    def losses(self, model, encs):
        outputs = self.outputs(model, encs)
        return torch.stack([self._loss(*o, enc) for o, enc in zip(outputs, encs, strict=True)])

    def _loss(self, out: HotpotOutput, sent, seen, enc: Encoded) -> torch.Tensor:
        dev = sent.device
        loss = F.cross_entropy(
            out.type_logits.float().mean(0)[None], torch.tensor([enc.label], device=dev)
        )
        if enc.n_items and bool(seen.any()):
            target = torch.tensor(enc.item_labels, device=dev)
            loss = loss + F.binary_cross_entropy_with_logits(sent[seen], target[seen])
        if enc.label == 0 and enc.has_span_target:
            width = out.start_logits.shape[1]
            allowed, allowed_end, gs, ge = (m.to(dev) for m in _span_masks(enc, width))
            loss = loss + marginal_span_loss(
                out.start_logits.float(), out.end_logits.float(), allowed, gs, ge, allowed_end
            )
        return loss

    def predictions(self, model, encs):
        outputs = self.outputs(model, encs)
        return [self._predict(*o, enc) for o, enc in zip(outputs, encs, strict=True)]

    def _predict(self, out: HotpotOutput, sent, seen, enc: Encoded) -> dict:
        kind = ANSWER_TYPES[int(out.type_logits.float().mean(0).argmax())]
        if kind == "span":
            width = out.start_logits.shape[1]
            start, end = out.start_logits.float().cpu(), out.end_logits.float().cpu()
            answer = _best_text(enc, start, end, width)
        else:
            answer = kind
        probs = torch.sigmoid(sent).masked_fill(~seen, -1.0).cpu()
        chosen = [k for k in range(enc.n_items) if probs[k] > 0.5]
        if len(chosen) < MIN_SUPPORTING:
            top = probs.topk(min(MIN_SUPPORTING, enc.n_items)).indices.tolist()
            chosen = sorted(set(chosen) | {k for k in top if probs[k] >= 0})
        sp = [[enc.item_keys[k][0], enc.item_keys[k][1]] for k in chosen]
        return {"answer": answer, "sp": sp}

    def prediction_file(self, predictions):
        return {
            "answer": {k: v["answer"] for k, v in predictions.items()},
            "sp": {k: v["sp"] for k, v in predictions.items()},
        }


#: Reference summaries are cut to this many tokens (</s> included) for training.
MAX_TARGET_TOKENS = 256


@dataclass
class Seq2SeqEncoded(Encoded):
    target: list[int] = field(default_factory=list)  # reference tokens + </s>; [] = none


def seq2seq_encoded(id: str, tokens: list[int], cls: int, sep: int, max_len: int) -> Seq2SeqEncoded:
    """`<s> tokens[:max_len-2] </s>`, global attention on `<s>`: one window, because the LED's
    encoder reads long inputs whole (fine-tuning, its dev predictions and serving use this)."""
    read = min(len(tokens), max_len - 2)
    window = Window(ids=[cls] + tokens[:read] + [sep], global_positions=[0])
    return Seq2SeqEncoded(id, [window], tokens=read + 2, truncated=read < len(tokens))


def generate_text(model, tokenizer, enc: Encoded, pad: int) -> str:
    """The model's output for one encoded input, decoded: `generate()` with the settings in
    the model's generation config, global attention reaching the encoder."""
    b = _batch([enc], pad, next(model.parameters()).device)
    ids = b["input_ids"]
    out = model.generate(
        input_ids=ids,
        attention_mask=b["attention_mask"],
        global_attention_mask=b["global"].to(ids.device),
        # FSDP: every forward gathers parameters from all ranks, so a rank whose output ended
        # keeps stepping until every rank's has (transformers' flag for exactly this)
        synced_gpus=parallel.is_fully_sharded(model),
    )
    return tokenizer.decode(out[0], skip_special_tokens=True).strip()


def frozen_encoder_states(model, attention_mask: torch.Tensor, inputs: dict) -> tuple:
    """The frozen encoder's states, without gradient and without dropout: exactly what
    generation will read, so the decoder trains on the states it is later given."""
    model = getattr(model, "module", model)  # (a ddp wrapper's module)
    encoder = model.led.encoder
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            states = model.encode(**inputs, attention_mask=attention_mask).last_hidden_state
    finally:
        encoder.train(was_training)
    return (states,)


class Seq2SeqAdapter(TaskAdapter):
    """Summarization with an LED (`modeling.warm_start`: the pretrained long encoder plus a
    decoder warm-started from its layers, or an LED base as it is). Input `<s> article </s>`
    cut to max_len tokens, global attention on `<s>`; no windows (the baseline is the same
    input cut shorter). The target is the reference summary and `</s>`, teacher-forced behind
    the decoder start token. Dev predictions are generated with the task's `generation`
    settings, which the checkpoint keeps as its generation config, so scoring and serving
    generate alike."""

    kind = "seq2seq"
    predictions_suffix = ".txt"
    predicts_in_passes = False  # generate() one input at a time

    def __init__(self, task: Task, tokenizer) -> None:
        super().__init__(task, tokenizer)
        self.generation: dict[str, Any] = {}
        self.seed = 0
        self.freeze_encoder = False

    def configure(self, params) -> None:
        self.generation = params.task_generation.model_dump()
        self.seed = params.seed
        self.freeze_encoder = params.task_freeze_encoder

    def build_model(self, base):
        from longdoc.components.modeling.warm_start import led_from_encoder

        model = led_from_encoder(base, seed=self.seed)
        for key, value in self.generation.items():
            setattr(model.generation_config, key, value)
        if self.freeze_encoder:  # the shared embeddings stay trainable (decoder and LM head)
            for name, p in model.led.encoder.named_parameters():
                if not name.startswith("embed_tokens."):
                    p.requires_grad_(False)
        return model

    def max_input_tokens(self, model) -> int:
        return model.config.max_encoder_position_embeddings

    def encode(self, example, max_len, overlap, max_windows, train):
        tokens = _ids(self.tokenizer, example.article)
        enc = seq2seq_encoded(example.id, tokens, self.cls, self.sep, max_len)
        if train:
            enc.target = _ids(self.tokenizer, example.summary)[: MAX_TARGET_TOKENS - 1] + [self.sep]
        return enc

    def learnable(self, enc):
        return bool(enc.target)

    def losses(self, model, encs):
        """Each summary's mean token loss, teacher-forced; the targets are padded with -100
        behind their `</s>` (the decoder is causal: no target token sees the padding)."""
        dev = self._device(model)
        b = _batch(encs, self.pad, dev)
        inputs = {"input_ids": b["input_ids"], "global_attention_mask": b["global"].to(dev)}
        if self.freeze_encoder:
            inputs = {"encoder_outputs": frozen_encoder_states(model, b["attention_mask"], inputs)}
        labels = torch.full((len(encs), max(len(e.target) for e in encs)), -100, device=dev)
        for i, e in enumerate(encs):
            labels[i, : len(e.target)] = torch.tensor(e.target)
        decoder_ids = getattr(model, "module", model).prepare_decoder_input_ids_from_labels(labels)
        logits = model(
            **inputs, attention_mask=b["attention_mask"], decoder_input_ids=decoder_ids
        ).logits.float()
        return torch.stack(
            [
                F.cross_entropy(logits[i, : len(e.target)], labels[i, : len(e.target)])
                for i, e in enumerate(encs)
            ]
        )

    def predictions(self, model, encs):
        return [generate_text(model, self.tokenizer, e, self.pad) for e in encs]


#: Adapter kinds a task registration (components.tasks.Task.adapter) may name.
ADAPTERS: dict[str, type[TaskAdapter]] = {
    ClassificationAdapter.kind: ClassificationAdapter,
    WikiHopAdapter.kind: WikiHopAdapter,
    TriviaQAAdapter.kind: TriviaQAAdapter,
    HotpotQAAdapter.kind: HotpotQAAdapter,
    Seq2SeqAdapter.kind: Seq2SeqAdapter,
}


def adapter_for(task: Task | str, tokenizer) -> TaskAdapter:
    """The adapter the registration of `task` (a Task or a registered name) asks for."""
    if isinstance(task, str):
        task = get_task(task)
    cls = task.adapter
    if isinstance(cls, str):
        try:
            cls = ADAPTERS[cls]
        except KeyError:
            raise ValueError(
                f"task {task.name!r}: unknown adapter kind {cls!r}; "
                f"expected one of {', '.join(ADAPTERS)} or a TaskAdapter subclass"
            ) from None
    return cls(task, tokenizer)


def n_tokens(enc: Encoded) -> int:
    return sum(len(w.ids) for w in enc.windows)


def steps_for(n_examples: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(n_examples / batch_size)
