"""Training beyond one process: how the ranks of a torchrun job share the model and the data.

`pretrain.parallel` / `finetune.parallel` pick the mode (one process ignores it and trains
plainly):

- `ddp`: every rank holds the whole model and optimizer; gradients are averaged over the ranks
  (pretraining wraps the model in `DistributedDataParallel`; fine-tuning, whose ranks run a
  different number of examples per step, all-reduces the gradients once per step itself).
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) over a 1-D device mesh: parameters,
  gradients and optimizer state sharded over all ranks; each transformer block is its own unit,
  so only one block's full parameters exist at a time. `bf16` adds a bf16 parameter/compute
  policy with float32 gradient reduction.
- `tp`: Megatron-style tensor parallelism (`torch.distributed.tensor.parallel`) over the "tp"
  dimension of a 2-D (dp, tp) mesh: in every block the q/k/v projections, the global q/k/v
  projections and the first MLP linear are split column-wise (each rank owns
  `heads / tp_size` heads and runs them through `kernels.attention`), the attention output and
  the second MLP linear row-wise (one all-reduce each); an LED's decoder blocks split their
  self- and cross-attention the same way (`TP_PLANS`). Ranks of one tp group read the same
  data; the dp groups are data parallel (gradients all-reduced over "dp" once per step).

Sharded modes checkpoint for resume with `torch.distributed.checkpoint` (every rank writes its
shards, and a run with another world size reshards on load), and publish the full model as a
plain HF checkpoint written by rank 0 (`full_model`), so any mode's output loads in any other
mode and in transformers' classes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

MODES = ("ddp", "fsdp", "tp")

#: Tensor-parallel plans (module path -> style name) of the blocks that shard, by block class:
#: Megatron's split, one all-reduce after each attention output and one after each MLP. The
#: LED's encoder block is a Longformer block under BART's names; its decoder block has causal
#: self-attention and cross-attention, split alike.
_ATTENTION_IN = ("query", "key", "value", "query_global", "key_global", "value_global")
_DECODER_ATTENTION = {
    "q_proj": "colwise",
    "k_proj": "colwise",
    "v_proj": "colwise",
    "out_proj": "rowwise",
}
TP_PLANS = {
    "LongformerLayer": {
        **{f"attention.self.{name}": "colwise" for name in _ATTENTION_IN},
        "attention.output.dense": "rowwise",
        "intermediate.dense": "colwise",
        "output.dense": "rowwise",
    },
    "LEDEncoderLayer": {
        **{f"self_attn.longformer_self_attn.{name}": "colwise" for name in _ATTENTION_IN},
        "self_attn.output": "rowwise",
        "fc1": "colwise",
        "fc2": "rowwise",
    },
    "LEDDecoderLayer": {
        **{f"self_attn.{name}": style for name, style in _DECODER_ATTENTION.items()},
        **{f"encoder_attn.{name}": style for name, style in _DECODER_ATTENTION.items()},
        "fc1": "colwise",
        "fc2": "rowwise",
    },
}


class DistEnv:
    """Rank, world size, device and (for fsdp/tp) the device mesh of this process.

    Under torchrun (WORLD_SIZE > 1) joins the process group: nccl with CUDA, gloo on CPU. The
    mesh is created for the device type explicitly ("cuda" or "cpu"), so a CPU run never asks
    for nccl. `dp_rank`/`dp_world` say which share of the data this rank reads: all ranks in
    ddp and fsdp, the tp groups in tp.
    """

    def __init__(self, mode: str = "ddp", tp_size: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"parallel must be one of {MODES}, got {mode!r}")
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.owned = False
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
            self.owned = True
        self.rank = dist.get_rank() if self.world > 1 else 0
        # one process: every mode is the plain model (nothing to shard)
        self.mode = mode if self.world > 1 else "ddp"
        self.mesh = None
        self.tp_size = 1
        self.dp_rank, self.dp_world, self.dp_group = self.rank, self.world, None
        if self.mode == "fsdp":
            self.mesh = _mesh(self.device, (self.world,), ("dp",))
        elif self.mode == "tp":
            self._tp_mesh(tp_size or self.world)

    def _tp_mesh(self, tp_size: int) -> None:
        if self.world % tp_size:
            raise ValueError(f"tp_size={tp_size} does not divide the world size {self.world}")
        self.tp_size = tp_size
        self.mesh = _mesh(self.device, (self.world // tp_size, tp_size), ("dp", "tp"))
        self.dp_rank = self.mesh["dp"].get_local_rank()
        self.dp_world = self.world // tp_size
        self.dp_group = self.mesh["dp"].get_group()

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Whether the parameters are DTensors (fsdp, tp): forwards are collective, checkpoints
        go through torch.distributed.checkpoint."""
        return self.mode in ("fsdp", "tp")

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """In place over all ranks."""
        if self.world > 1:
            dist.all_reduce(value)
        return value

    def data_sum(self, value: torch.Tensor) -> torch.Tensor:
        """In place over the data-parallel ranks (a tp group's ranks hold the same numbers)."""
        if self.dp_world > 1:
            dist.all_reduce(value, group=self.dp_group)
        return value

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group if this object joined it. No barrier here: on an error the
        rank must exit at once so that torchrun stops the others (callers meet at a barrier on
        the normal path)."""
        if self.owned:
            dist.destroy_process_group()


def _mesh(device: torch.device, shape: tuple[int, ...], names: tuple[str, ...]):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, shape, mesh_dim_names=names)


# --------------------------------------------------------------------------- sharding


def prepare(model: nn.Module, env: DistEnv, *, bf16: bool = False) -> nn.Module:
    """Shard `model` in place for fsdp/tp (before the optimizer is built: it must see the
    sharded parameters); ddp and one process leave it as it is."""
    if env.mode == "fsdp":
        _fully_shard(model, env, bf16)
    elif env.mode == "tp":
        _tensor_parallel(model, env)
    return model


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of `model` (Longformer's, or an LED's encoder and decoder ones)."""
    blocks = [m for m in model.modules() if type(m).__name__ in TP_PLANS]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no Longformer or LED layers to shard "
            f"(parallel: fsdp | tp shard {', '.join(TP_PLANS)})"
        )
    return blocks


def _fully_shard(model: nn.Module, env: DistEnv, bf16: bool) -> None:
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    policy = MixedPrecisionPolicy()
    if bf16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in _blocks(model):
        fully_shard(block, mesh=env.mesh, mp_policy=policy)
        if hasattr(block, "forward_global_rows"):
            # a classifier's last block runs `forward_global_rows` instead of `forward` (the CLS
            # row only): FSDP must gather the block's parameters around that call too
            register_fsdp_forward_method(block, "forward_global_rows")
    fully_shard(model, mesh=env.mesh, mp_policy=policy)  # the rest: embeddings, heads
    # An LED's encoder runs outside the root's forward in generation and with a frozen encoder,
    # reading the root's parameters (the shared embeddings): gather them around those calls too
    for method in ("generate", "encode"):
        if hasattr(model, method):
            register_fsdp_forward_method(model, method)


def _tensor_parallel(model: nn.Module, env: DistEnv) -> None:
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    tp_mesh, tp_rank = env.mesh["tp"], env.mesh["tp"].get_local_rank()
    for block in _blocks(model):
        for attn in _attentions(block):
            if attn.num_heads % env.tp_size:
                raise ValueError(
                    f"tp_size={env.tp_size} does not divide the {attn.num_heads} attention heads "
                    f"of {type(block).__name__}"
                )
        plan = {name: styles[style]() for name, style in TP_PLANS[type(block).__name__].items()}
        parallelize_module(block, tp_mesh, plan)
        for attn in _attentions(block):
            _local_head_pattern(attn, env.tp_size, tp_rank)


def _attentions(block: nn.Module) -> list[nn.Module]:
    """The block's attention modules (each knows its `num_heads`)."""
    return [m for m in block.modules() if hasattr(m, "num_heads") and m is not block]


def _local_head_pattern(attn: nn.Module, tp_size: int, tp_rank: int) -> None:
    """A per-head pattern (a dilation per head) keeps only this rank's heads: column-wise q/k/v
    give rank r heads r * heads / tp_size ... (r + 1) * heads / tp_size - 1."""
    dilation = getattr(getattr(attn, "pattern", None), "dilation", None)
    if isinstance(dilation, tuple):
        per = attn.num_heads // tp_size
        local = dilation[tp_rank * per : (tp_rank + 1) * per]
        attn.pattern = dataclasses.replace(attn.pattern, dilation=local)


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """DistributedDataParallel around `model` in ddp mode with several ranks; else `model`."""
    if env.mode != "ddp" or env.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[env.device] if env.device.type == "cuda" else None,
        find_unused_parameters=True,  # the global q/k/v get no gradient without globals
    )


@contextlib.contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally for a micro-batch that is not a step's last one."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield  # tp: gradients are all-reduced over "dp" by `sync_gradients`, once per step


def sync_gradients(model: nn.Module, env: DistEnv, *, wrapped: bool) -> None:
    """Average the gradients over the data-parallel ranks where nothing did it in backward:
    tp (over "dp"), and ddp when the model is not `wrapped` in DistributedDataParallel. One
    flat all-reduce; a missing gradient counts as zeros, so every rank reduces the same
    tensors whatever its examples reached."""
    if env.dp_world == 1 or env.mode == "fsdp" or (env.mode == "ddp" and wrapped):
        return
    grads = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(_local(p.grad))
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=env.dp_group)
    flat /= env.dp_world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """`clip_grad_norm_` over plain and DTensor gradients alike (tp mixes them: torch's own
    cannot stack their norms): each DTensor's norm is reduced over its mesh first."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not any(isinstance(g, DTensor) for g in grads):  # ddp, one process: torch's own
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    squares = []
    for g in grads:
        norm = torch.linalg.vector_norm(g.float())
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        squares.append(norm.pow(2))
    total = torch.stack(squares).sum().sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype) if not isinstance(g, DTensor) else float(coef))
    return float(total)


# --------------------------------------------------------------------------- whole models


def full_model(model: nn.Module, env: DistEnv) -> nn.Module | None:
    """The plain (unsharded, unwrapped) model on rank 0, None on the other ranks.

    Sharded modes gather the full state dict (a collective: every rank calls this) into a fresh
    copy of the model's class on the CPU; ddp returns the model itself."""
    if not env.sharded:
        return model if env.main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    if not env.main:
        return None
    plain = plain_class(model)(model.config)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = set(getattr(plain, "all_tied_weights_keys", {}) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"gathered state does not fit: missing {missing}, extra {unexpected}")
    return plain.to(env.device)


def plain_class(model: nn.Module) -> type:
    """The model's own class (FSDP2 swaps in a subclass named FSDP<Class>)."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    while issubclass(cls, FSDPModule) and cls.__bases__:
        cls = next(b for b in cls.__bases__ if b is not FSDPModule)
    return cls


# --------------------------------------------------------------------------- checkpoints


def save_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Model and optimizer state as torch.distributed.checkpoint shards under `path` (every
    rank writes its own; collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(path))


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read `save_sharded`'s checkpoint into the model and optimizer, resharded to how they are
    laid out now (collective; a plain model in one process reads it too)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.load({"model": model_state}, checkpoint_id=str(path))
    # Partial for the optimizer only: a parameter that never had a gradient (the global q/k/v
    # without global tokens) has no optimizer state in the checkpoint, and keeps none here.
    optim = {"optimizer": optim_state}
    dcp.load(optim, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(
        model, optimizer, model_state_dict=model_state, optim_state_dict=optim["optimizer"]
    )


def is_fully_sharded(model: nn.Module) -> bool:
    """Whether `model` is sharded by FSDP2: its forwards are collective over all ranks."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def load_full(
    weights: Path, model: nn.Module, optimizer: torch.optim.Optimizer, optim_state: dict
) -> None:
    """A whole-model step (safetensors + `optimizer.state_dict()`, as ddp writes it) into a
    sharded model and optimizer: every rank reads the full tensors and keeps its shards. The
    optimizer's parameter indices become names by the order the optimizer holds them in, which
    is the same order however the model is sharded (`common.adamw` walks named_parameters)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, load_file(str(weights)), options=options)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {order[i]: s for i, s in optim_state["state"].items()},
        "param_groups": [
            {**g, "params": [order[i] for i in g["params"]]} for g in optim_state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, optim_state_dict=by_name, options=options)
