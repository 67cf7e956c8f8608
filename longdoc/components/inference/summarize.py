"""Summaries of long documents with a fine-tuned LED: the engine behind `longdoc score` and the
served pyfunc model of `longdoc-summarization` (a `text` column in, a `summary` out).

A document is read exactly as fine-tuning read its dev articles (`training.adapters.
seq2seq_encoded`): `<s> tokens </s>` with global attention on `<s>`, in one piece (the LED's
encoder reads long inputs whole: no windows), up to the encoder's positions
(`max_encoder_position_embeddings`, or fewer with `max_len`); a longer document is cut there and
marked `truncated`. The summary is written by `generate()` with the generation settings
fine-tuning saved as the checkpoint's generation config (params.yaml's
`finetune.tasks.summarization.generation`), so dev predictions, batch scoring and serving
write the same summaries; `longdoc score` may replace any of them (`score.generation`), a
request to the served model too (params).

Documents are batched as the classifier engine batches them (sorted by length, a token budget
per batch, so rows pad to almost nothing), generated under `torch.inference_mode`, on CUDA when
present, optionally in bf16.
"""

from __future__ import annotations

import copy
import numbers
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import ValidationError

from longdoc.components.core.config import GenerationParams
from longdoc.components.inference.serving import (
    CHARS_PER_TOKEN_CAP,
    DEFAULT_BATCH_TOKENS,
    SUMMARIZATION,
    InferenceEngine,
    LongdocModel,
    checked_params,
    checked_rows,
    checkpoint_kind,
    output_columns,
    padded_windows,
    pick_device,
    refuse,
    token_budget_batches,
)
from longdoc.components.training.adapters import Encoded, seq2seq_encoded

#: The settings a scoring run or a request may replace: GenerationParams' fields.
GENERATION_KEYS = tuple(GenerationParams.model_fields)


def generation_defaults(checkpoint: Path | str) -> dict[str, Any]:
    """The checkpoint's own values of GENERATION_KEYS (its saved generation config)."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(checkpoint)
    except OSError:  # no generation_config.json: what the model config implies
        from transformers import AutoConfig

        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(checkpoint))
    return {key: getattr(config, key) for key in GENERATION_KEYS}


def checked_generation(
    values: dict[str, Any], decoder_positions: int, own: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`values` (some of GENERATION_KEYS, replacing the model's `own`) validated as
    GenerationParams validates params.yaml; raises ValueError with one line per problem
    ("; "-joined). The summary must fit the decoder's positions (the start token takes one)."""
    problems = []
    try:
        GenerationParams.model_validate(values)
    except ValidationError as exc:
        for e in exc.errors():
            key = ".".join(map(str, e["loc"]))
            problems.append(f"{key}={e.get('input')!r}: {e['msg']}")
    settings = {**(own or {}), **values}
    most, least = settings.get("max_new_tokens"), settings.get("min_new_tokens")
    if isinstance(most, int) and most > decoder_positions - 1:
        problems.append(
            f"max_new_tokens={most}: the decoder has {decoder_positions} positions "
            f"(at most {decoder_positions - 1} new tokens)"
        )
    if isinstance(least, int) and isinstance(most, int) and least > most:
        problems.append(f"min_new_tokens={least} is more than max_new_tokens={most}")
    if problems:
        raise ValueError("; ".join(problems))
    return dict(values)


class SummaryEngine(InferenceEngine):
    """The scoring engine's interface (encode, run, char_cap, reconfigured) over an LED:
    `run` answers `{"summary": ...}` per document. `generation` replaces some of the
    checkpoint's generation settings (GENERATION_KEYS) for every document this engine reads."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        max_len: int | None = None,
        device: str = "auto",
        bf16: bool = False,
        generation: dict[str, Any] | None = None,
    ) -> None:
        # not InferenceEngine.__init__: no RoBERTa position offset, no labels, no windows
        self.kind = SUMMARIZATION
        self.tokenizer = tokenizer
        self.device = pick_device(device)
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        limit = int(model.config.max_encoder_position_embeddings)
        self.max_len = min(max_len, limit) if max_len else limit
        self.windows, self.window_overlap = False, 0
        self.decoder_positions = int(model.config.max_decoder_position_embeddings)
        own = {k: getattr(model.generation_config, k, None) for k in GENERATION_KEYS}
        self.overrides = checked_generation(
            {k: v for k, v in (generation or {}).items() if v is not None},
            self.decoder_positions,
            own,
        )
        self.generation_config = self._config(self.overrides)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Path | str,
        *,
        max_len: int | None = None,
        device: str = "auto",
        bf16: bool = False,
        generation: dict[str, Any] | None = None,
    ) -> SummaryEngine:
        from transformers import AutoTokenizer

        from longdoc.components.modeling.led import LEDForConditionalGeneration
        from longdoc.components.modeling.model import quiet_loading

        if checkpoint_kind(checkpoint) != SUMMARIZATION:
            raise ValueError(f"{checkpoint}: not an LEDForConditionalGeneration checkpoint")
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        with quiet_loading():
            model = LEDForConditionalGeneration.from_pretrained(checkpoint)
        return cls(
            model, tokenizer, max_len=max_len, device=device, bf16=bf16, generation=generation
        )

    def reconfigured(
        self,
        *,
        max_len: int | None = None,
        device: str = "auto",
        bf16: bool = False,
        generation: dict[str, Any] | None = None,
    ) -> SummaryEngine:
        return SummaryEngine(
            self.model, self.tokenizer, max_len=max_len, device=device, bf16=bf16,
            generation={**self.overrides, **(generation or {})},
        )  # fmt: skip

    def _config(self, overrides: dict[str, Any]):
        config = copy.deepcopy(self.model.generation_config)
        config.update(**overrides)
        return config

    @property
    def settings(self) -> dict[str, Any]:
        """This engine's values of GENERATION_KEYS (the model's own, some replaced)."""
        return {k: getattr(self.generation_config, k, None) for k in GENERATION_KEYS}

    @property
    def generation(self) -> dict[str, Any]:
        """Every generation setting that differs from transformers' defaults (what decides the
        summaries: the manifest records it and scoring's fingerprint covers it)."""
        settings = self.generation_config.to_diff_dict()
        # private bookkeeping (`_from_model_config`) and the library version decide nothing
        return {k: v for k, v in sorted(settings.items()) if not k.startswith("_")
                and k != "transformers_version"}  # fmt: skip

    def char_cap(self, max_len: int | None = None) -> int | None:
        """Always a cap: the LED reads one piece of at most max_len tokens."""
        limit = min(max_len, self.max_len) if max_len else self.max_len
        return limit * CHARS_PER_TOKEN_CAP

    def encode(
        self, texts: list[str], questions: list[str] | None = None, max_len: int | None = None
    ) -> list[Encoded]:
        """`<s> tokens </s>` per document, cut at `max_len` tokens (fine-tuning's encoding)."""
        limit = min(max_len, self.max_len) if max_len else self.max_len
        cap = self.char_cap(limit)
        clipped = [t[:cap] for t in texts]
        tok = self.tokenizer
        ids = tok(clipped, add_special_tokens=False)["input_ids"] if clipped else []
        out = []
        for i, (row, text) in enumerate(zip(ids, texts, strict=True)):
            enc = seq2seq_encoded(str(i), list(row), tok.cls_token_id, tok.sep_token_id, limit)
            enc.truncated = enc.truncated or len(text) > cap
            out.append(enc)
        return out

    def run(
        self,
        docs: list[Encoded],
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        generation: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """`{"summary": ...}` per document, in their order. `generation` replaces some settings
        for this call only (a request's params)."""
        config = self._config({**self.overrides, **generation}) if generation else None
        config = config or self.generation_config
        lengths = [len(doc.windows[0].ids) for doc in docs]
        summaries: dict[int, str] = {}
        for batch in token_budget_batches(lengths, batch_tokens):
            ids, mask, glob = padded_windows(
                [docs[i].windows[0] for i in batch], self.tokenizer.pad_token_id, self.device
            )
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    global_attention_mask=glob,
                    generation_config=config,
                )
            # decoded as fine-tuning decodes its dev predictions (adapters.generate_text)
            decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
            for i, text in zip(batch, decoded, strict=True):
                summaries[i] = text.strip()
        return [{"summary": summaries[i]} for i in range(len(docs))]


def summarizer_param_defaults(checkpoint: Path | str) -> dict[str, Any]:
    """The served model's params beyond `batch_tokens`, with their defaults: `max_len` = every
    encoder position, the generation settings = the checkpoint's own."""
    from transformers import AutoConfig

    import longdoc.components.modeling.led  # noqa: F401 (registers the LED config class)

    positions = int(AutoConfig.from_pretrained(checkpoint).max_encoder_position_embeddings)
    return {"max_len": positions, **generation_defaults(checkpoint)}


class SummaryModel(LongdocModel):
    """The pyfunc model of an LED summarizer: `text` in; `summary`, `tokens`, `truncated`,
    `windows` out. Requests are checked as the classifier's are (every bad row and param named,
    HTTP 400 when served, nothing generated); a request may replace any generation setting."""

    def load_context(self, context) -> None:
        self.engine = SummaryEngine.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        engine = self.engine
        params = params or {}
        generation = _request_generation(params, engine)
        max_len, batch_tokens = checked_params(params, engine.max_len)
        texts, _ = checked_rows(model_input, engine, max_len)
        docs = engine.encode(texts, None, max_len)
        preds = engine.run(docs, batch_tokens, generation)
        for pred, doc in zip(preds, docs, strict=True):
            pred.update(tokens=doc.tokens, truncated=doc.truncated, windows=len(doc.windows))
        return pd.DataFrame(preds, columns=output_columns(SUMMARIZATION))


def _request_generation(params: dict[str, Any], engine: SummaryEngine) -> dict[str, Any]:
    """The generation settings a request's params replace, or a refusal naming the bad ones
    (a whole number given as 2.0 is still a whole number: JSON does not tell them apart)."""
    values = {k: params[k] for k in GENERATION_KEYS if params.get(k) is not None}
    for key, value in values.items():
        if isinstance(value, float) and value.is_integer() and key != "length_penalty":
            values[key] = int(value)
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise refuse([f"param {key}={value!r}: expected a number"], "invalid params:")
    try:
        return checked_generation(values, engine.decoder_positions, engine.settings)
    except ValueError as exc:
        raise refuse(
            [f"param {line}" for line in str(exc).split("; ")], "invalid params:"
        ) from None
