"""Cloze queries to a masked language model: the forward pass that knowledge probing
(`inference.probe`) and zero-shot classification (`inference.zeroshot`) share.

A query is a row of token ids with one `<mask>`; the model reads every row with global attention
on the mask (and on whatever else the row names: a zero-shot prompt), and what comes back is the
log-probability of every vocabulary token at the mask. Rows are batched by a token budget exactly
as the scoring engine batches windows (`serving.token_budget_batches`), and only the mask
positions go through the vocabulary projection (a row of 4,096 tokens needs one of them).

Checkpoints are HF directories or MLflow URIs: a `models:/` or `runs:/` URI is downloaded and the
checkpoint found in it (a pretraining run's `checkpoint` artifact, or the checkpoint inside a
logged longdoc pyfunc model). A checkpoint without a masked-LM head (a fine-tuned classifier) is
refused: its vocabulary projection would be random.

Global projections that were never trained are replaced by copies of the local ones (see
`modeling.model.untrained_global_projections`): MLM pretraining, ours as Longformer's, marks no
token global, so a model pretrained from scratch would keep its random initial
`query_global` / `key_global` / `value_global`, and a mask read through them would see noise.
Copying is the rule Longformer's conversion uses to initialise them (`longdoc convert` does the
same), and for a query shorter than the window it gives exactly what the local attention
computes. `longdoc pretrain` now publishes such checkpoints with the copies in place
(`global_projections_are_local_copies`); the read-time copy is for checkpoints written before
it did.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from longdoc.components.core.io import InputError
from longdoc.components.inference.serving import pick_device, token_budget_batches
from longdoc.components.modeling.model import (
    copy_local_to_global,
    global_projections_are_local_copies,
    untrained_global_projections,
)

log = logging.getLogger(__name__)

MASKED_LM_ARCHITECTURES = ("LongformerForMaskedLM", "RobertaForMaskedLM")


@dataclass
class ClozeRow:
    """One query: token ids (specials included), the mask's position, extra global positions."""

    ids: list[int]
    mask: int
    global_positions: list[int] = field(default_factory=list)


def _find_checkpoint(root: Path) -> Path | None:
    """`root` itself when it holds config.json, else the one directory below it that does (the
    artifacts folder of a logged pyfunc model, a run's `checkpoint` artifact)."""
    if (root / "config.json").is_file():
        return root
    found = sorted(p.parent for p in root.rglob("config.json") if p.parent != root)
    return found[0] if found else None


def resolve_checkpoint(model: str) -> Path:
    """A local checkpoint directory for `model`: a path, or an MLflow URI (downloaded from the
    tracking store the caller set up)."""
    if ":/" not in model:
        path = Path(model)
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: not a checkpoint directory (no config.json)")
        return path
    import mlflow

    try:
        root = Path(mlflow.artifacts.download_artifacts(model))
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise InputError(f"{model}: cannot download ({exc})") from exc
    found = _find_checkpoint(root)
    if found is None:
        raise InputError(f"{model}: no checkpoint (config.json) in the downloaded artifacts")
    return found


def check_masked_lm(checkpoint: Path) -> None:
    """Refuse a checkpoint whose config names no masked-LM architecture."""
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{checkpoint}/config.json: cannot read ({exc})") from exc
    archs = config.get("architectures") or []
    if not any(a in MASKED_LM_ARCHITECTURES for a in archs):
        raise InputError(
            f"{checkpoint}: architectures {archs} have no masked-LM head; cloze queries need a "
            f"pretrained checkpoint ({' or '.join(MASKED_LM_ARCHITECTURES)})"
        )


class MaskedLM:
    """A masked-LM checkpoint (our Longformer classes) and its tokenizer, read-only (except that
    never-trained global projections of `model` are replaced in place, see the module doc;
    `global_projections` says which: "trained" or "copied from local")."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "auto") -> None:
        self.tokenizer = tokenizer
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.global_projections = "trained"
        if global_projections_are_local_copies(self.model):  # pretraining published them so
            self.global_projections = "copied from local"
        elif untrained_global_projections(self.model):  # a checkpoint from before it did
            layers = copy_local_to_global(self.model)
            self.global_projections = "copied from local"
            log.warning(
                "the checkpoint's global attention projections were never trained (biases all "
                "zero, as after MLM pretraining from scratch): reading global tokens with copies "
                "of the local ones in its %d layers, as Longformer initialises them",
                layers,
            )
        if tokenizer.mask_token_id is None:
            raise InputError("the tokenizer has no mask token")
        self.max_len = int(model.config.max_position_embeddings) - 2  # RoBERTa's offset
        # Read every row as if it started this many tokens into a document (position ids
        # shifted): how benchmarks/probe_conversion.py asks a long model about positions a
        # short model never had.
        self.position_offset = 0

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, device: str = "auto") -> MaskedLM:
        from transformers import AutoTokenizer

        from longdoc.components.modeling.model import LongformerForMaskedLM, quiet_loading

        check_masked_lm(checkpoint)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        with quiet_loading():
            model = LongformerForMaskedLM.from_pretrained(checkpoint)
        return cls(model, tokenizer, device)

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def mask_log_probs(
        self, rows: list[ClozeRow], batch_tokens: int = 16384, global_mask: bool = True
    ) -> torch.Tensor:
        """(len(rows), vocab) float32 log-probabilities at each row's mask, in row order; with
        `global_mask` false the mask reads through the local window only (see `probe`)."""
        vocab = self.model.config.vocab_size
        out = torch.empty((len(rows), vocab), dtype=torch.float32)
        pad = self.tokenizer.pad_token_id
        lengths = [len(r.ids) for r in rows]
        for batch in token_budget_batches(lengths, batch_tokens):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            glob = torch.zeros((len(batch), width), dtype=torch.long)
            for j, i in enumerate(batch):
                row = rows[i]
                ids[j, : len(row.ids)] = torch.tensor(row.ids)
                attn[j, : len(row.ids)] = 1
                glob[j, [row.mask] if global_mask else []] = 1
                glob[j, row.global_positions] = 1
            masks = torch.tensor([rows[i].mask for i in batch])
            positions = None
            if self.position_offset:
                first = pad + 1  # RoBERTa's positions: pad + 1 for the first real token
                positions = torch.arange(first, first + width).expand(len(batch), width)
                positions = (positions + self.position_offset).masked_fill(attn == 0, pad)
            with torch.inference_mode():
                hidden = self.model.longformer(
                    input_ids=ids.to(self.device),
                    attention_mask=attn.to(self.device),
                    global_attention_mask=glob.to(self.device),
                    position_ids=None if positions is None else positions.to(self.device),
                ).last_hidden_state
                at_mask = hidden[torch.arange(len(batch)), masks.to(self.device)]
                logits = self.model.lm_head(at_mask).float()
            out[batch] = torch.log_softmax(logits, -1).cpu()
        return out
