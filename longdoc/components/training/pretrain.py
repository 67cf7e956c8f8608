"""Continued pretraining of the long model on the tokenize stage's shards.

The objective follows the model family (`pretrain.objective`): masked-language modelling for the
encoder (Longformer), BART's denoising for the encoder-decoder (an LED converted from BART by
`longdoc convert`; `training.denoise`: sentences permuted, Poisson spans infilled with one
`<mask>` each, the decoder reconstructs the row). Everything below holds for both.

Data: the packed training rows are read through a memory map (never loaded whole), as one
endless cyclic stream of rows. The position in that stream is a single number, `rows`, which is
what a checkpoint records; under DDP, rank r of W takes micro-batches r, r + W, ... of the
stream, so ranks read disjoint rows and a 2-process run sees exactly the rows that a 1-process
run with twice the batch sees.

Masking (and denoising's noise) is dynamic (RoBERTa) but a pure function of (seed, row number
in the stream): a row is masked differently every epoch, yet identically whatever the world size
or whether the run was resumed, so there is no masking generator to checkpoint and runs compare
exactly.

The loss is summed over the target tokens (MLM: the masked ones; denoising: every token of the
original rows) of all micro-batches of a step on all ranks and divided by their global count,
so gradient accumulation and DDP compute the same step as one big batch (up to float summation
order).

Resuming: every `checkpoint_every` steps rank 0 writes `<out>.ckpt/step-N/` (written under a
temporary name, then renamed: a directory with the final name is complete) holding the weights
(safetensors), optimizer, scheduler, every rank's RNG states (a `torch.load(weights_only=True)`
file) and `state.json` (step, stream position, MLflow run id, a fingerprint of the parameters).
A rerun with the same parameters resumes from the newest one and reproduces the losses an
uninterrupted run would have logged; a finished run deletes `<out>.ckpt/`.

Every step's loss is appended to `<out>.ckpt/log.jsonl`, which ends up in the published
checkpoint as `train_log.jsonl`. An MLM checkpoint is published with global q/k/v projections
that never trained (MLM marks no token global) replaced by copies of the local ones
(`fill_untrained_global_projections`).

Short pieces (`pretrain.piece_len`, MLM from fresh init): a small model trained from scratch
on long rows stays on a unigram plateau for a long time, since each of its many position
embeddings sees few examples per update; trained on short pieces cut from the rows (each a row
of its own, positions 0..piece_len-1) it learns positional attention in far fewer updates, and
is published with those positions tiled over the long ones (Longformer's copy rule). The
evaluation reads whole validation rows, so it measures the published long model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from pyarrow import ipc
from tqdm import tqdm

from longdoc.components.core import tracking
from longdoc.components.core.config import ModelParams, PretrainParams, TrackingParams, params_dict
from longdoc.components.core.io import (
    InputError,
    atomic_path,
    atomic_write_json,
    check_own_dir,
    check_publish_target,
    is_longdoc_dir,
    mark_output_dir,
    publish_dir,
    remove_own_dir,
    require_path,
    staging_dir,
    write_manifest,
)
from longdoc.components.data import tokenize as tok
from longdoc.components.modeling.convert import tile_positions
from longdoc.components.modeling.led import LEDForConditionalGeneration
from longdoc.components.modeling.model import (
    LongformerForMaskedLM,
    copy_local_to_global,
    make_config,
    untrained_global_projections,
)
from longdoc.components.training import parallel
from longdoc.components.training.common import (
    StepMetrics,
    Throughput,
    adamw,
    bits_per_char,
    plot_curve,
    seed_everything,
    warmup_linear_decay,
)
from longdoc.components.training.denoise import NoiseParams, Seq2SeqBatch, denoise_batch

log = logging.getLogger(__name__)


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: list[int],
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `probability` of the non-special tokens; of those 80% become <mask>,
    10% a random token, 10% stay. Labels are -100 everywhere else."""
    labels = input_ids.clone()
    special = torch.isin(input_ids, torch.tensor(special_ids))
    probs = torch.full(input_ids.shape, probability).masked_fill(special, 0.0)
    picked = torch.bernoulli(probs, generator=generator).bool()
    labels[~picked] = -100
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & picked
    inputs[to_mask] = mask_token_id
    to_random = (
        torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool()
        & picked
        & ~to_mask
    )
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    inputs[to_random] = random_ids[to_random]
    return inputs, labels


def mask_rows(
    ids: torch.Tensor, first_row: int, *, seed: int, tokenizer, vocab_size: int, probability: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`mask_tokens` row by row, each row's generator seeded by (seed, its stream position)."""
    inputs, labels = [], []
    for i in range(len(ids)):
        gen = torch.Generator().manual_seed((seed * 1_000_003 + first_row + i) % 2**63)
        x, y = mask_tokens(
            ids[i : i + 1],
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=vocab_size,
            special_ids=tokenizer.all_special_ids,
            probability=probability,
            generator=gen,
        )
        inputs.append(x)
        labels.append(y)
    return torch.cat(inputs), torch.cat(labels)


class PackedRows:
    """The packed rows of one split as an endless cyclic stream with random access, read
    through a memory map: only the record batch being read is touched."""

    def __init__(self, shards: Path, split: str = "train"):
        path = require_path(Path(shards) / "packed" / f"{split}.arrow", "packed shard")
        self.path = path
        self._reader = ipc.open_file(pa.memory_map(str(path), "r"))
        self.seq_len = self._reader.schema.field("input_ids").type.list_size
        sizes = [self._reader.get_batch(b).num_rows for b in range(self._reader.num_record_batches)]
        self._starts = np.cumsum([0, *sizes])
        self.n_rows = int(self._starts[-1])
        if self.n_rows == 0:
            raise InputError(f"{path}: no packed {split} sequences (corpus too small?)")
        self._cached: tuple[int, np.ndarray] | None = None
        self._cached_starts: tuple[int, pa.ListArray] | None = None

    def _batch(self, b: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != b:
            arr = self._reader.get_batch(b).column("input_ids")
            rows = arr.values.to_numpy(zero_copy_only=False).reshape(-1, self.seq_len)
            self._cached = (b, rows)
        return self._cached[1]

    def _where(self, j: int) -> tuple[int, int]:
        """(record batch, row in it) of stream row j."""
        j %= self.n_rows
        b = int(np.searchsorted(self._starts, j, side="right")) - 1
        return b, j - int(self._starts[b])

    def rows(self, start: int, count: int) -> torch.Tensor:
        """Rows start .. start+count-1 of the stream (wrapping around at the end)."""
        out = np.empty((count, self.seq_len), dtype=np.int64)
        for i in range(count):
            b, r = self._where(start + i)
            out[i] = self._batch(b)[r]
        return torch.from_numpy(out)

    def sentence_starts(self, start: int, count: int) -> list[np.ndarray]:
        """The sentence starts (`tokenize.packed_schema`) of the same rows as `rows`."""
        if "sentence_starts" not in self._reader.schema.names:
            raise InputError(
                f"{self.path}: the packed rows have no sentence_starts (written by an older "
                "tokenize); denoising permutes sentences: remove the shards and rerun "
                "`longdoc tokenize`, or set pretrain.denoise_permute_sentences: false"
            )
        out = []
        for i in range(count):
            b, r = self._where(start + i)
            if self._cached_starts is None or self._cached_starts[0] != b:
                self._cached_starts = (b, self._reader.get_batch(b).column("sentence_starts"))
            column = self._cached_starts[1]
            lo, hi = column.offsets[r].as_py(), column.offsets[r + 1].as_py()
            out.append(column.values.to_numpy()[lo:hi])
        return out


class PiecedRows:
    """`pretrain.piece_len`: the packed rows cut into pieces of `piece_len` tokens, each a row of
    its own (a row's last `seq_len % piece_len` tokens are left out), as the same endless
    stream interface as `PackedRows`; a stream position counts pieces, so masking stays a pure
    function of (seed, piece number) and a resumed run sees the same pieces."""

    def __init__(self, rows: PackedRows, piece_len: int):
        self.path, self.seq_len, self._rows = rows.path, piece_len, rows
        self.per_row = rows.seq_len // piece_len
        self.n_rows = rows.n_rows * self.per_row

    def rows(self, start: int, count: int) -> torch.Tensor:
        """Pieces start .. start+count-1 of the stream (wrapping around at the end)."""
        first_row = start // self.per_row
        last_row = (start + count - 1) // self.per_row
        long = self._rows.rows(first_row, last_row - first_row + 1)
        usable = long[:, : self.per_row * self.seq_len].reshape(-1, self.seq_len)
        skip = start - first_row * self.per_row
        return usable[skip : skip + count].contiguous()


@torch.no_grad()
def evaluate(model, tokenizer, shards: Path, batch_size: int, max_batches: int, seed: int):
    """Masked-LM loss on held-out sequences with a fixed masking seed, so evaluations compare."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + 1)
    total, count = 0.0, 0
    for i, batch in enumerate(tok.iter_packed(shards, "validation", batch_size)):
        if i >= max_batches:
            break
        inputs, labels = _masked(torch.from_numpy(batch.astype(np.int64)), tokenizer, model, gen)
        n = int((labels != -100).sum())
        if n == 0:
            continue
        inputs, labels = inputs.to(device), labels.to(device)
        out = model(input_ids=inputs, labels=labels, labelled_logits_only=True)
        total += float(out.loss) * n
        count += n
    model.train()
    return total / count if count else float("nan")


def _masked(ids: torch.Tensor, tokenizer, model, gen: torch.Generator, probability: float = 0.15):
    return mask_tokens(
        ids,
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=model.config.vocab_size,
        special_ids=tokenizer.all_special_ids,
        probability=probability,
        generator=gen,
    )


# --------------------------------------------------------------------------- objectives


class MaskedLM:
    """The MLM objective: a micro-batch is (masked inputs, labels with -100 off the masks)."""

    loss_name = "MLM loss"

    def __init__(self, tokenizer, vocab_size: int, probability: float) -> None:
        self.tokenizer, self.vocab_size, self.probability = tokenizer, vocab_size, probability

    def batch(self, data: PackedRows, first: int, count: int, seed: int):
        return mask_rows(
            data.rows(first, count),
            first,
            seed=seed,
            tokenizer=self.tokenizer,
            vocab_size=self.vocab_size,
            probability=self.probability,
        )

    @staticmethod
    def targets(batch) -> int:
        return int((batch[1] != -100).sum())

    @staticmethod
    def loss_sum(model, batch, device: torch.device) -> torch.Tensor:
        x, y = batch
        y = y.to(device)
        # the vocabulary projection only at the masked positions
        logits = model(input_ids=x.to(device), labels=y, labelled_logits_only=True).logits
        return torch.nn.functional.cross_entropy(logits.float(), y[y != -100], reduction="sum")

    def evaluate(self, model, shards: Path, batch_size: int, max_batches: int) -> float:
        return evaluate(model, self.tokenizer, shards, batch_size, max_batches, 0)


class Denoising:
    """BART's denoising objective (`training.denoise`): a micro-batch is a `Seq2SeqBatch`
    whose targets are every token of the original rows."""

    loss_name = "denoising loss"

    def __init__(self, noise: NoiseParams, pad_id: int, decoder_start_id: int) -> None:
        self.noise, self.pad_id, self.decoder_start_id = noise, pad_id, decoder_start_id

    @classmethod
    def for_model(cls, params: PretrainParams, tokenizer, config, seq_len: int) -> Denoising:
        if tokenizer.mask_token_id is None:
            raise InputError("pretrain.objective: denoise needs a tokenizer with a <mask> token")
        positions = min(
            config.max_encoder_position_embeddings, config.max_decoder_position_embeddings
        )
        if seq_len > positions:
            raise InputError(
                f"packed rows of {seq_len} tokens do not fit pretrain.base {params.base}: the "
                f"decoder reconstructs whole rows and has {config.max_decoder_position_embeddings} "
                f"positions (encoder {config.max_encoder_position_embeddings}); tokenize with "
                "a shorter tokenize.seq_len"
            )
        noise = NoiseParams(
            mask_id=tokenizer.mask_token_id,
            mask_ratio=params.denoise_mask_ratio,
            poisson_lambda=params.denoise_poisson_lambda,
            permute=params.denoise_permute_sentences,
        )
        return cls(noise, config.pad_token_id, config.decoder_start_token_id)

    def batch(self, data: PackedRows, first: int, count: int, seed: int) -> Seq2SeqBatch:
        rows = data.rows(first, count).numpy()
        starts = data.sentence_starts(first, count) if self.noise.permute else [[]] * count
        return denoise_batch(
            rows,
            [np.asarray(x, dtype=np.int64) for x in starts],
            first,
            seed=seed,
            noise=self.noise,
            pad_id=self.pad_id,
            decoder_start_id=self.decoder_start_id,
        )

    @staticmethod
    def targets(batch: Seq2SeqBatch) -> int:
        return batch.labels.numel()

    @staticmethod
    def loss_sum(model, batch: Seq2SeqBatch, device: torch.device) -> torch.Tensor:
        batch = batch.to(device)
        logits = model(**batch.model_inputs()).logits
        return torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), batch.labels.flatten(), reduction="sum"
        )

    @torch.no_grad()
    def evaluate(self, model, shards: Path, batch_size: int, max_batches: int) -> float:
        """Denoising loss on the first `max_batches` batches of validation rows, each noised
        by (seed 0, its row number), so evaluations compare."""
        model.eval()
        device = next(model.parameters()).device
        data, b = PackedRows(shards, "validation"), batch_size
        total, count = 0.0, 0
        for first in range(0, min(data.n_rows, b * max_batches), b):
            batch = self.batch(data, first, min(b, data.n_rows - first), seed=0)
            total += float(self.loss_sum(model, batch, device))
            count += self.targets(batch)
        model.train()
        return total / count


def make_objective(params: PretrainParams, tokenizer, model, seq_len: int) -> MaskedLM | Denoising:
    if params.objective == "denoise":
        return Denoising.for_model(params, tokenizer, model.config, seq_len)
    return MaskedLM(tokenizer, model.config.vocab_size, params.mlm_probability)


#: config.json model types of encoder-decoder checkpoints (denoising; MLM refuses them)
ENCODER_DECODER_TYPES = ("led", "bart")


def _base_model_type(base: Path) -> str | None:
    path = require_path(Path(base) / "config.json", "base checkpoint config")
    try:
        return json.loads(path.read_text()).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise InputError(f"{path}: not a JSON object: {exc}") from None


def check_objective(params: PretrainParams) -> None:
    """The objective must suit the base's family: MLM an encoder (Longformer, or a fresh one
    from `model`), denoising an LED. Refused with one line saying what to do instead."""
    model_type = None if params.base is None else _base_model_type(params.base)
    if params.objective == "mlm" and model_type in ENCODER_DECODER_TYPES:
        raise InputError(
            f"pretrain.base {params.base} is an encoder-decoder ({model_type}); masked-LM "
            "pretraining needs an encoder-only model: set pretrain.objective: denoise"
        )
    if params.objective == "denoise" and model_type != "led":
        what = "no base" if params.base is None else f"{params.base} is a {model_type!r} model"
        hint = " (convert it first: `longdoc convert --base DIR`)" if model_type == "bart" else ""
        raise InputError(
            f"pretrain.objective: denoise trains an encoder-decoder (LED) given as pretrain.base, "
            f"but {what}{hint}; an LED comes from `longdoc convert` of a BART-architecture "
            "checkpoint; for an encoder-only model use objective: mlm"
        )


def build_model(params: PretrainParams, model_params: ModelParams, tokenizer):
    check_objective(params)
    if params.base is not None:
        require_path(params.base, "base checkpoint")
        cls = LEDForConditionalGeneration if params.objective == "denoise" else None
        model = (cls or LongformerForMaskedLM).from_pretrained(params.base)
        if len(tokenizer) > model.config.vocab_size:
            raise InputError(
                f"the shards' tokenizer has {len(tokenizer)} tokens, more than the vocabulary of "
                f"pretrain.base {params.base} ({model.config.vocab_size}): tokenize with the "
                "base's tokenizer (tokenize.base_tokenizer)"
            )
        return model
    config = make_config(
        model_params,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LongformerForMaskedLM(config)


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    """This process's RNG states in types `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def fingerprint(params: PretrainParams, model_params: ModelParams, data_world: int = 1) -> str:
    """What a checkpoint must agree on to be resumed: everything that shapes the trajectory
    except the run length and bookkeeping. A step sees `batch_size * grad_accum * data_world`
    rows however they are split into micro-batches and ranks, and every parallel mode computes
    the same steps (up to float summation order); a sharded checkpoint reshards into any mode
    and world size. So a run may resume under another layout with the same rows per step."""
    cfg = params_dict(params)
    bookkeeping = ("steps", "out", "metrics", "checkpoint_every", "keep_checkpoints")
    layout = ("parallel", "tp_size", "batch_size", "grad_accum")
    for key in (*bookkeeping, *layout, "eval_batches"):
        cfg.pop(key)
    cfg["rows_per_step"] = params.batch_size * params.grad_accum * data_world
    blob = json.dumps({"pretrain": cfg, "model": params_dict(model_params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_root(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".ckpt")


#: A `<out>.ckpt` written before directories were marked is recognised by its complete steps.
_CKPT_LEGACY = ("step-*/state.json",)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete `step-N` directory (a partial one never has that name)."""
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


def save_checkpoint(
    root: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    rng: list,
    state: dict,
    keep: int,
    env: parallel.DistEnv | None = None,
) -> Path | None:
    """Rank 0 writes the step (every rank calls this when `env` is sharded: each writes its
    model and optimizer shards under `shards/`); the other ranks return None."""
    from safetensors.torch import save_model

    sharded = env is not None and env.sharded
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.partial"
    if env is None or env.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if sharded:
        env.barrier()
        parallel.save_sharded(tmp / "shards", model, optimizer)
        env.barrier()
        if not env.main:
            return None
    else:
        save_model(model, str(tmp / "model.safetensors"))
    trainer = {"scheduler": scheduler.state_dict(), "rng": rng}
    if not sharded:
        trainer["optimizer"] = optimizer.state_dict()
    torch.save(trainer, tmp / "trainer_state.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for f in tmp.rglob("*"):  # the rename below must not publish data still in the page cache
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int) -> dict:
    """Weights, optimizer, scheduler and this rank's RNG from a step; a step written by a
    sharded mode (a `shards/` directory) is read collectively."""
    from safetensors.torch import load_model

    blob = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    # A saved optimizer carries its writer's kernel choice (fused, for-each): this run's
    # layout decides it (the fused kernel refuses the DTensors tensor parallelism makes)
    kernel = [{k: g[k] for k in ("fused", "foreach")} for g in optimizer.param_groups]
    if (path / "shards").is_dir():  # written by fsdp/tp: resharded to this run's layout
        parallel.load_sharded(path / "shards", model, optimizer)
    elif parallel.is_sharded(model):
        parallel.load_full(path / "model.safetensors", model, optimizer, blob["optimizer"])
    else:
        device = str(next(model.parameters()).device)
        load_model(model, str(path / "model.safetensors"), device=device)
        optimizer.load_state_dict(blob["optimizer"])
    for group, own in zip(optimizer.param_groups, kernel, strict=True):
        group.update(own)
    scheduler.load_state_dict(blob["scheduler"])
    if rank < len(blob["rng"]):
        _set_rng_state(blob["rng"][rank])
    else:
        log.warning("%s: no RNG state for rank %d (world size changed)", path, rank)
    return json.loads((path / "state.json").read_text())


def _read_log(path: Path, up_to: int) -> list[dict]:
    """Entries of a loss log with step <= up_to (a killed writer may leave a torn last line)."""
    entries = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("step", math.inf) <= up_to:
                entries.append(entry)
    return entries


# --------------------------------------------------------------------------- training


def _autocast(params: PretrainParams, device: torch.device):
    if not params.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class LoopState:
    """Where a pretraining run stands; checkpointed as `state.json` (these keys)."""

    step: int = 0
    rows: int = 0  # position in the cyclic stream of packed rows
    tokens: int = 0
    run_id: str | None = None
    eval0: float | None = None  # validation loss before the first step
    fp: str | None = None  # `fingerprint` of the parameters that wrote the checkpoint

    @classmethod
    def from_json(cls, data: dict) -> LoopState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class _Job:
    """One pretraining run's inputs (shared by every step of `_train` and by `_finish`)."""

    params: PretrainParams
    model_params: ModelParams
    tracking_params: TrackingParams
    env: parallel.DistEnv
    shards: Path
    tokenizer: Any
    chars_per_token: float
    manifest: dict
    on_step: Callable[[int, float], None] | None = None
    piece_len: int | None = None  # the pieces `_build` trains on (`_piece_len`); None = rows
    # training-stream rows per micro-batch (`_build`): batch_size packed rows, or with pieces
    # their pieces, so a step trains on the same tokens either way
    micro_rows: int = 0

    @property
    def root(self) -> Path:
        return checkpoint_root(Path(self.params.out))

    @property
    def log_path(self) -> Path:
        return self.root / "log.jsonl"


@dataclass
class _Trainer:
    """The model and what updates it."""

    model: Any
    optimizer: Any
    scheduler: Any
    data: PackedRows | PiecedRows
    objective: MaskedLM | Denoising
    ddp: Any = None


def pretrain(
    params: PretrainParams,
    model_params: ModelParams,
    tracking_params: TrackingParams,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """Train for `params.steps` optimizer steps; write an HF checkpoint to `params.out`.

    Under torchrun every rank calls this; rank 0 alone logs, checkpoints and publishes, and the
    other ranks return `{"rank": r}`. `on_step(step, loss)` is called on rank 0 after each step.
    """
    shards = require_path(params.shards, "token shards")
    # Before any training: `out` will be replaced and `<out>.ckpt` written and deleted, so both
    # must be longdoc's (every rank checks, so none waits on a rank that gave up).
    check_publish_target(Path(params.out), "pretrain", force=params.force)
    check_own_dir(checkpoint_root(Path(params.out)), "pretrain", _CKPT_LEGACY)
    manifest = json.loads(require_path(shards / "manifest.json", "shards manifest").read_text())
    chars_per_token = float(manifest.get("chars_per_token") or 1.0)
    tokenizer = tok.load_tokenizer(shards)
    env = parallel.DistEnv(params.parallel, params.tp_size)
    try:
        job = _Job(
            params,
            model_params,
            tracking_params,
            env,
            shards,
            tokenizer,
            chars_per_token,
            manifest,
            on_step,
        )
        return _train(job)
    finally:
        env.close()


def _piece_len(params: PretrainParams, seq_len: int) -> int | None:
    """The piece length this run trains on, or None for whole rows: `piece_len` steps aside
    (and says so) where it does not apply, so one params.yaml serves every kind of run."""
    if params.piece_len is None:
        return None
    if not params.from_scratch_mlm:
        log.info(
            "pretrain.piece_len %d does not apply to %s: training on whole rows",
            params.piece_len,
            f"base {params.base}" if params.base is not None else f"objective {params.objective}",
        )
        return None
    if params.piece_len >= seq_len:
        log.info(
            "pretrain.piece_len %d: the packed rows are %d tokens already: training on them whole",
            params.piece_len,
            seq_len,
        )
        return None
    return params.piece_len


def _build(job: _Job) -> _Trainer:
    params = job.params
    seed_everything(params.seed)
    data = PackedRows(job.shards, "train")
    job.piece_len = _piece_len(params, data.seq_len)
    job.micro_rows = params.batch_size
    if job.piece_len is not None:
        data = PiecedRows(data, job.piece_len)
        job.micro_rows = params.batch_size * data.per_row
    model = build_model(params, job.model_params, job.tokenizer).to(job.env.device)
    objective = make_objective(params, job.tokenizer, model, data.seq_len)
    if params.gradient_checkpointing:
        kwargs = {"use_reentrant": False}  # non-reentrant: works with DDP and unused params
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    parallel.prepare(model, job.env, bf16=params.bf16)  # fsdp/tp: before the optimizer
    optimizer = adamw(model, params.lr, params.weight_decay)
    scheduler = warmup_linear_decay(optimizer, params.warmup_steps, params.steps)
    return _Trainer(model, optimizer, scheduler, data, objective)


def _resume(job: _Job, t: _Trainer) -> tuple[LoopState, bool]:
    """(state, resumed): from the newest checkpoint written with the same parameters, else a
    fresh state; the loss log is cut back to the checkpoint's step."""
    env, root = job.env, job.root
    fp = fingerprint(job.params, job.model_params, env.dp_world)
    start = None
    if env.main:
        start = latest_checkpoint(root) if root.exists() else None
        if start is not None and json.loads((start / "state.json").read_text()).get("fp") != fp:
            log.warning("%s: checkpoints from other parameters; starting afresh", root)
            remove_own_dir(root, "pretrain", _CKPT_LEGACY)
            start = None
    start = env.broadcast(str(start) if start else None)
    state = LoopState(fp=fp)
    if start is not None:
        loaded = load_checkpoint(Path(start), t.model, t.optimizer, t.scheduler, env.rank)
        state = LoopState.from_json({**loaded, "fp": fp})
        log.info("pretrain: resuming from %s (step %d)", start, state.step)
    if env.main:
        root.mkdir(parents=True, exist_ok=True)
        mark_output_dir(root, "pretrain")
        kept = _read_log(job.log_path, state.step)
        with atomic_path(job.log_path) as tmp:
            tmp.write_text("".join(json.dumps(e) + "\n" for e in kept))
    return state, start is not None


def _log_start(job: _Job, model, objective, state: LoopState) -> None:
    """A fresh run's parameters and step-0 validation loss (rank 0)."""
    import mlflow  # here, not at the top: the other ranks never track (core/tracking.py)

    params = job.params
    mlflow.set_tag("stage", "pretrain")
    mlflow.log_params({f"pretrain.{k}": v for k, v in params_dict(params).items()})
    mlflow.log_params({f"model.{k}": v for k, v in params_dict(job.model_params).items()})
    mlflow.log_params(
        {"n_parameters": sum(p.numel() for p in model.parameters()), "world_size": job.env.world}
    )
    eval_loss = objective.evaluate(model, job.shards, params.batch_size, params.eval_batches)
    mlflow.log_metrics(_eval_metrics(eval_loss, job.chars_per_token), step=0)
    state.eval0 = eval_loss


def _train(job: _Job) -> dict:
    env = job.env
    t = _build(job)
    state, resumed = _resume(job, t)
    t.ddp = parallel.wrap_ddp(t.model, env)
    run_ctx = contextlib.nullcontext()
    if env.main:
        tracking.setup(job.tracking_params)
        run_ctx = _start_run(state.run_id)
    with run_ctx as run:
        start_model = None if resumed else parallel.full_model(t.model, env)
        if env.main and not resumed:
            _log_start(job, start_model, t.objective, state)
        del start_model
        if env.main:
            state.run_id = run.info.run_id
        env.barrier()
        _loop(job, t, state)
        final_model = parallel.full_model(t.model, env)  # rank 0 (collective when sharded)
        if not env.main:
            env.barrier()
            return {"rank": env.rank}
        summary = _finish(job, final_model, t.objective, state, run)
    env.barrier()
    if is_longdoc_dir(job.root, "pretrain", _CKPT_LEGACY):  # marked above; never another's dir
        shutil.rmtree(job.root, ignore_errors=True)
    return summary


def _micro_batches(job: _Job, t: _Trainer, state: LoopState) -> list:
    """This rank's micro-batches of the next step (r, r + W, ...), made by the objective."""
    b, world, rank = job.micro_rows, job.env.dp_world, job.env.dp_rank
    micro = []
    for a in range(job.params.grad_accum):
        first = state.rows + (a * world + rank) * b
        micro.append(t.objective.batch(t.data, first, b, job.params.seed))
    return micro


def _step(job: _Job, t: _Trainer, state: LoopState) -> float:
    """One optimizer step; returns the loss over the target tokens of all ranks."""
    env, params = job.env, job.params
    micro = _micro_batches(job, t, state)
    count = torch.tensor(float(sum(t.objective.targets(m) for m in micro)))
    count = env.data_sum(count).item()
    total = torch.zeros((), device=env.device)
    for k, batch in enumerate(micro):
        sync = env.world == 1 or k == len(micro) - 1
        with contextlib.nullcontext() if sync else parallel.no_sync(t.ddp):
            with _autocast(params, env.device):
                loss_sum = t.objective.loss_sum(t.ddp, batch, env.device)
            (loss_sum * env.dp_world / max(count, 1.0)).backward()  # gradients are averaged
        total += loss_sum.detach()
    loss = env.data_sum(total).item() / max(count, 1.0)
    parallel.sync_gradients(t.model, env, wrapped=t.ddp is not t.model)
    parallel.clip_grad_norm(t.model, params.max_grad_norm)
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return loss


def _maybe_checkpoint(job: _Job, t: _Trainer, state: LoopState, metrics: StepMetrics) -> None:
    every, step = job.params.checkpoint_every, state.step
    if not every or step % every != 0 or step >= job.params.steps:
        return
    if job.env.main:  # a run resumed from this checkpoint logs from the next step on
        metrics.flush()
    rng = job.env.gather(_rng_state())
    if job.env.main or job.env.sharded:  # sharded: every rank writes its shards
        save_checkpoint(
            job.root,
            step,
            t.model,
            t.optimizer,
            t.scheduler,
            rng,
            state.to_json(),
            job.params.keep_checkpoints,
            job.env,
        )


def _loop(job: _Job, t: _Trainer, state: LoopState) -> None:
    """Steps from `state.step + 1` to `params.steps`: loss log, metrics, checkpoints."""
    params, env = job.params, job.env
    rows_per_step = job.micro_rows * params.grad_accum * env.dp_world
    step_tokens = rows_per_step * t.data.seq_len
    speed = Throughput()
    bar = tqdm(
        total=params.steps,
        initial=state.step,
        desc="pretrain",
        unit="step",
        mininterval=2,
        disable=not env.main,
    )
    logf = open(job.log_path, "a") if env.main else None  # noqa: SIM115 (closed below)
    metrics = StepMetrics()
    try:
        for step in range(state.step + 1, params.steps + 1):
            loss = _step(job, t, state)
            state.rows += rows_per_step
            state.tokens += step_tokens
            state.step = step
            tps = speed.add(step_tokens)
            lr = t.scheduler.get_last_lr()[0]
            if env.main:
                logf.write(json.dumps({"step": step, "loss": loss, "lr": lr}) + "\n")
                logf.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
                metrics.log({"loss": loss, "lr": lr, "tokens_per_s": tps}, step=step)
            _maybe_checkpoint(job, t, state, metrics)
            if env.main and job.on_step is not None:
                job.on_step(step, loss)
    finally:
        bar.close()
        if logf is not None:
            metrics.flush()
            logf.close()


def _start_run(run_id: str | None):
    import mlflow

    if run_id:
        try:
            return mlflow.start_run(run_id=run_id)
        except mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s not found; logging the resumed run as a new one", run_id)
    return mlflow.start_run(run_name="pretrain")


def fill_untrained_global_projections(model) -> bool:
    """Copy the local q/k/v projections into global ones that never trained, in place; True
    if it did. MLM marks no token global, so a model pretrained from scratch never trains its
    global projections; a probe or fine-tuning that puts global attention on a token would read
    it through random ones. Copies are what Longformer's conversion (and `longdoc convert`)
    starts them from. A base whose global projections trained (or were copied) is left as is."""
    if not untrained_global_projections(model):
        return False
    layers = copy_local_to_global(model)
    log.info(
        "pretrain: global q/k/v projections never trained; published as copies of the "
        "local ones in %d layers (as Longformer's conversion initialises them)",
        layers,
    )
    return True


def tile_piece_positions(model, piece_len: int) -> None:
    """In place: the position embeddings a model trained on `piece_len`-token pieces learned
    (its first `piece_len` positions) copied over and over across all its positions, as
    Longformer's conversion fills a long model from a short one (`convert.tile_positions`)."""
    embeddings = model.longformer.embeddings
    table = embeddings.position_embeddings.weight
    offset = embeddings.padding_idx + 1  # RoBERTa's positions start after the pad row
    with torch.no_grad():
        table.copy_(tile_positions(table[: offset + piece_len].clone(), len(table), offset))
    log.info(
        "pretrain: positions 0..%d (trained on pieces) tiled over all %d positions",
        piece_len - 1,
        len(table) - offset,
    )


def _publish(job: _Job, model, curve: dict, loss_name: str) -> None:
    """The HF checkpoint (+ loss log) to `params.out`, via a staging dir; plots to MLflow."""
    import mlflow

    if job.params.objective == "mlm":
        fill_untrained_global_projections(model)
    staging = staging_dir(Path(job.params.out), "pretrain")
    model.save_pretrained(staging)
    job.tokenizer.save_pretrained(staging)
    shutil.copyfile(job.log_path, staging / "train_log.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(
            str(plot_curve(curve, Path(tmp) / "loss_curve.png", loss_name)), "plots"
        )
    mlflow.log_artifacts(str(staging), "checkpoint")
    publish_dir(staging, Path(job.params.out), stage="pretrain", force=job.params.force)


def _finish(job: _Job, model, objective, state: LoopState, run) -> dict:
    import mlflow

    params = job.params
    if job.piece_len is not None:  # before the evaluation: it measures the published model
        tile_piece_positions(model, job.piece_len)
    eval_loss = objective.evaluate(model, job.shards, params.batch_size, params.eval_batches)
    final = _eval_metrics(eval_loss, job.chars_per_token)
    mlflow.log_metrics(final, step=params.steps)
    entries = _read_log(job.log_path, params.steps)
    curve = {
        "train": [(e["step"], e["loss"]) for e in entries],
        "validation": [(0, state.eval0), (params.steps, eval_loss)]
        if state.eval0 is not None
        else [(params.steps, eval_loss)],
    }
    _publish(job, model, curve, objective.loss_name)
    summary = {
        "run_id": run.info.run_id,
        "steps": params.steps,
        "tokens_seen": state.tokens,
        "final_train_loss": entries[-1]["loss"] if entries else float("nan"),
        **final,
        "checkpoint": str(params.out),
    }
    atomic_write_json(params.metrics, summary)
    write_manifest(
        params.out,
        stage="pretrain",
        inputs={
            "shards": str(job.shards),
            "tokenizer_sha256": job.manifest.get("tokenizer_sha256"),
        },
        params=params_dict(params),
        model=params_dict(job.model_params),
        results=summary,
    )
    log.info("pretrain: eval loss %.3f, bpc %.3f", final["eval_loss"], final["eval_bpc"])
    return summary


def _eval_metrics(loss: float, chars_per_token: float) -> dict[str, float]:
    return {
        "eval_loss": loss,
        "eval_perplexity": math.exp(min(loss, 50.0)),
        "eval_bpc": bits_per_char(loss, chars_per_token),
    }
