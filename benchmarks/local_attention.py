"""Disjoint block-local attention vs the sliding window at small scale (issue 18; Xiong et al.
2022, "Simple Local Attentions Remain Competitive for Long-Context Tasks").

The same model (same size, same initial weights) is pretrained with each local pattern on the
same rows of the sample corpus for the same number of tokens, then fine-tuned on the sample's
tasks; the table and the PNG compare MLM loss against steps, training seconds and attention
FLOPs, and the fine-tuned dev metrics.

    .venv/bin/python benchmarks/local_attention.py                 # ~11 min on 2 cores
    .venv/bin/python benchmarks/local_attention.py --steps 10 --eval-every 5 --tasks imdb \\
        --imdb-train 8 --no-append                                  # smoke run, ~2 min

Patterns (``w`` = ``--window``, one side): ``SlidingWindow(w)`` (Longformer: 2w+1 keys per
query), ``BlockLocal(w, 0)`` (the query's own block of w: w keys) and ``BlockLocal(w/2, 1)``
(own block and one neighbour each side: 3w/2 keys). The model config's ``attention_pattern`` /
``attention_pattern_kwargs`` select them (``components.modeling.model.layer_pattern``).

What is identical across the patterns: the initial weights (one model is drawn and its state
dict loaded into each), the training rows and their masks (``pretrain.mask_rows``: a pure
function of seed and row), the dropout masks of each step (the RNG is reseeded per step), the
optimizer and schedule (AdamW without decay on biases/LayerNorm, linear warmup and decay, grad
clip 1.0: what ``longdoc pretrain`` does). The pretraining loop is written out here rather than
calling ``pretrain()`` so that the variants can take their steps in turn (step s of every
pattern, in a rotating order, before step s+1 of any), which spreads the load of other jobs on
a shared machine evenly over them, and so the validation loss can be taken every
``--eval-every`` steps outside the timed part. Fine-tuning is ``components.training.finetune``
itself (``finetune()``, no truncated baseline, nothing registered), one task after the other.

Attention FLOPs are counted analytically: ``4 * head_dim`` per (query, key) pair per head (q.k
and p.v, a multiply-add each counted as 2), forward only (the backward does about twice that
for every pattern alike), summed over every query of the sequence with each pattern's exact
number of keys (fewer at the edges), checked against the pattern's own dense mask. The other
FLOPs of the model (projections, feed-forward, the MLM head at the masked positions) are the
same for every pattern; their share is printed so the saving on the whole model is visible too.

Wall-clock figures are indicative on a shared machine (the load average is printed); steps and
FLOPs are not affected by it. Workers' OpenMP threads sleep when idle (``OMP_WAIT_POLICY=
PASSIVE``) unless ``--omp-spin``: on 2 shared cores spinning threads made steps several times
slower and far noisier.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if "--omp-spin" not in sys.argv:  # libgomp reads it when torch loads: before the import
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from machine import cpu_flags, load_average  # noqa: E402

from longdoc.kernels import BlockLocal, Pattern, SlidingWindow  # noqa: E402

#: fine-tuning tasks by default (registry names; their dev metrics come from the registry)
DEFAULT_TASKS = ("imdb", "hyperpartisan")


@dataclass
class Variant:
    """One local pattern: how the model config asks for it, and its training record."""

    name: str
    kind: str  # the config's attention_pattern
    kwargs: dict | None  # the config's attention_pattern_kwargs
    model: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    pattern: Pattern | None = None
    train: list[tuple[int, float, float]] = field(default_factory=list)  # step, seconds, loss
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # step, seconds, loss
    step_s: list[float] = field(default_factory=list)
    finetune: dict[str, dict] = field(default_factory=dict)


def make_variants(window: int) -> list[Variant]:
    if window % 2:
        raise SystemExit(f"--window must be even (BlockLocal(w/2, 1) needs w/2), got {window}")
    return [
        Variant(f"SlidingWindow({window})", "sliding", None),
        Variant(f"BlockLocal({window}, 0)", "block", {"block": window, "neighbors": 0}),
        Variant(f"BlockLocal({window // 2}, 1)", "block", {"block": window // 2, "neighbors": 1}),
    ]


# ---- FLOPs --------------------------------------------------------------------------------------


def keys_per_query(pattern: Pattern, n: int) -> torch.Tensor:
    """How many keys each of the ``n`` queries attends to (no global tokens, no padding), from
    the pattern's parameters, without building the ``n x n`` mask."""
    i = torch.arange(n)
    if isinstance(pattern, SlidingWindow) and pattern.dilation == 1 and not pattern.causal:
        return (i + pattern.window).clamp(max=n - 1) - (i - pattern.window).clamp(min=0) + 1
    if isinstance(pattern, BlockLocal):
        b, k = pattern.block, pattern.neighbors
        lo = ((i // b - k) * b).clamp(min=0)
        hi = ((i // b + k + 1) * b).clamp(max=n)
        return hi - lo
    raise ValueError(f"no key count for {pattern}")


def attention_flops(pattern: Pattern, n: int, hidden: int) -> int:
    """Forward attention FLOPs of one layer on one sequence of ``n`` tokens: 4 * head_dim per
    (query, key) pair and head, i.e. 4 * hidden per pair over all heads."""
    return int(keys_per_query(pattern, n).sum()) * 4 * hidden


def other_flops(config, n: int, mlm_probability: float) -> int:
    """Forward FLOPs of everything else in one sequence (the same for every pattern): q/k/v/o
    projections and the feed-forward in every layer, the MLM head (dense + vocabulary
    projection) at the masked positions only."""
    h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    per_token_layer = 2 * (4 * h * h + 2 * h * f)
    head = 2 * (h * h + h * v) * mlm_probability
    return int(n * (config.num_hidden_layers * per_token_layer + head))


# ---- data ---------------------------------------------------------------------------------------


def prepare_data(root: Path, seq_len: int, seed: int) -> tuple[Path, Path]:
    """The sample (tasks + corpus), ingested and tokenized into packed rows of ``seq_len``, under
    ``root`` (reused when a previous run left it complete with the same settings)."""
    from longdoc.components.core.config import IngestParams, SampleParams, TokenizeParams
    from longdoc.components.data.ingest import ingest
    from longdoc.components.data.tokenize import tokenize
    from longdoc.components.synthetic.generator import write_sample

    sample, corpus, shards = root / "sample", root / "corpus", root / "shards"
    stamp = root / "prepared.json"
    want = {"seq_len": seq_len, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return sample, shards
    for d in (sample, corpus, shards):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    write_sample(SampleParams(out=sample, seed=seed))
    ingest(IngestParams(sources=[sample / "corpus"], out=corpus))
    tokenize(TokenizeParams(corpus=corpus, out=shards, seq_len=seq_len, seed=seed))
    stamp.write_text(json.dumps(want))
    print(f"data: sample, ingest, tokenize in {time.perf_counter() - t0:.0f} s -> {root}")
    return sample, shards


# ---- pretraining --------------------------------------------------------------------------------


def build(variants: list[Variant], args, tokenizer, seq_len: int):
    """One initial model; each variant gets its weights under its own pattern."""
    from longdoc.components.core.config import ModelParams
    from longdoc.components.modeling.model import LongformerForMaskedLM, layer_pattern, make_config
    from longdoc.components.training.common import adamw, warmup_linear_decay

    model_params = ModelParams(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        attention_window=2 * args.window,  # HF convention: the full window
        max_position_embeddings=max(seq_len, args.finetune_max_len) + 2,
        attention_backend=args.backend,
        dropout=0.1,
    )
    special = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(args.seed)
    initial = LongformerForMaskedLM(make_config(model_params, **special)).state_dict()
    for v in variants:
        config = make_config(
            model_params, **special, attention_pattern=v.kind, attention_pattern_kwargs=v.kwargs
        )
        v.model = LongformerForMaskedLM(config)
        v.model.load_state_dict(initial)
        v.model.train()
        v.pattern = layer_pattern(config, 0)
        v.optimizer = adamw(v.model, args.lr, 0.01)
        v.scheduler = warmup_linear_decay(v.optimizer, args.warmup, args.steps)
    return variants[0].model.config


def train_step(v: Variant, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """One optimizer step, as ``longdoc pretrain`` takes it; returns (loss, seconds)."""
    t0 = time.perf_counter()
    loss = v.model(input_ids=x, labels=y, labelled_logits_only=True).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(v.model.parameters(), 1.0)
    v.optimizer.step()
    v.scheduler.step()
    v.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), time.perf_counter() - t0


def pretrain_all(variants: list[Variant], args, tokenizer, shards: Path) -> None:
    """Every variant takes step s (same rows, same masks, same dropout seed) before any takes
    step s+1, in a rotating order; validation loss every ``--eval-every`` steps, untimed."""
    from longdoc.components.training.pretrain import PackedRows, evaluate, mask_rows

    data = PackedRows(shards, "train")
    vocab = variants[0].model.config.vocab_size

    def validate(v: Variant, step: int) -> None:
        loss = evaluate(v.model, tokenizer, shards, args.batch, args.eval_batches, args.seed)
        v.evals.append((step, sum(v.step_s), loss))

    for v in variants:
        validate(v, 0)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        first = (step - 1) * args.batch
        x, y = mask_rows(
            data.rows(first, args.batch), first, seed=args.seed, tokenizer=tokenizer,
            vocab_size=vocab, probability=args.mlm_probability,
        )  # fmt: skip
        order = variants[step % len(variants) :] + variants[: step % len(variants)]
        for v in order:
            torch.manual_seed(args.seed * 1_000_003 + step)  # same dropout masks for all
            loss, seconds = train_step(v, x, y)
            v.step_s.append(seconds)
            v.train.append((step, sum(v.step_s), loss))
        if step % args.eval_every == 0 or step == args.steps:
            for v in variants:
                validate(v, step)
            elapsed = time.perf_counter() - started
            losses = "  ".join(f"{v.name} {v.evals[-1][2]:.3f}" for v in variants)
            eta = elapsed / step * (args.steps - step)
            print(
                f"pretrain step {step}/{args.steps}: eval loss {losses}  "
                f"({elapsed:.0f} s, ETA {eta:.0f} s, load {load_average()})",
                flush=True,
            )


# ---- fine-tuning --------------------------------------------------------------------------------


def finetune_all(variants: list[Variant], args, tokenizer, sample: Path, work: Path) -> None:
    """``finetune()`` on each task from each variant's pretrained weights (no baseline, no
    registration); the dev metrics land in ``v.finetune[task]``."""
    from longdoc.components.core.config import FinetuneParams, TrackingParams
    from longdoc.components.tasks import get_task
    from longdoc.components.training.finetune import finetune

    tracking = TrackingParams(uri=f"sqlite:///{work / 'mlflow.db'}", experiment="local-attention")
    for v in variants:
        base = work / slug(v.name) / "pretrained"
        v.model.save_pretrained(base)
        tokenizer.save_pretrained(base)
        for task in args.tasks:
            spec = get_task(task)
            params = FinetuneParams(
                task=task,
                data=sample / spec.sample_dir,
                base=base,
                out=work / slug(v.name) / task,
                metrics=work / slug(v.name) / f"{task}.json",
                force=True,
                max_len=args.finetune_max_len,
                baseline_max_len=None,
                register_model=False,
                max_train_samples=args.imdb_train if task == "imdb" else None,
                seed=args.seed,
            )
            t0 = time.perf_counter()
            long = finetune(params, tracking)["long"]
            seconds = time.perf_counter() - t0
            v.finetune[task] = {
                "metric": spec.primary_metric,
                "value": long[spec.primary_metric],
                "tokens_per_s": long["tokens_per_s"],
                "seconds": seconds,
            }
            print(
                f"finetune {task} from {v.name}: {spec.primary_metric} "
                f"{long[spec.primary_metric]:.3f} ({seconds:.0f} s, load {load_average()})",
                flush=True,
            )


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


# ---- report -------------------------------------------------------------------------------------


def loss_at(curve: list[tuple[float, float]], x: float) -> float:
    """Linear interpolation of a (x, loss) curve at x (clamped to its ends)."""
    if x <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return curve[-1][1]


def smoothed(losses: list[float], last: int) -> float:
    return statistics.fmean(losses[-last:])


def pretrain_table(variants: list[Variant], args, config) -> str:
    ref = variants[0]
    n, h = args.seq_len, args.hidden
    per_seq = {v.name: attention_flops(v.pattern, n, h) * args.layers for v in variants}
    rest = other_flops(config, n, args.mlm_probability)
    lines = [
        "| pattern | keys/query (mean) | attn GFLOP/step (fwd) | attn vs sliding | model FLOPs "
        "vs sliding | s/step (median) | time vs sliding | eval loss, end | train loss, last "
        f"{args.smooth} steps | sliding's eval loss at the same attn FLOPs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ref_curve = [(s * per_seq[ref.name], loss) for s, _, loss in ref.evals]
    for v in variants:
        keys = float(keys_per_query(v.pattern, n).float().mean())
        attn = per_seq[v.name] * args.batch
        model_ratio = (per_seq[v.name] + rest) / (per_seq[ref.name] + rest)
        med = statistics.median(v.step_s)
        same_flops = loss_at(ref_curve, args.steps * per_seq[v.name])
        attn_ratio = per_seq[v.name] / per_seq[ref.name]
        lines.append(
            f"| {v.name} | {keys:.1f} | {attn / 1e9:.2f} | {attn_ratio:.2f} "
            f"| {model_ratio:.2f} | {med:.3f} | {med / statistics.median(ref.step_s):.2f} "
            f"| {v.evals[-1][2]:.3f} | {smoothed([x[2] for x in v.train], args.smooth):.3f} "
            f"| {same_flops:.3f} |"
        )
    share = per_seq[ref.name] / (per_seq[ref.name] + rest)
    lines.append("")
    lines.append(
        f"Attention is {share:.0%} of the sliding-window model's forward FLOPs per sequence "
        f"(the rest, {rest / 1e9:.2f} GFLOP, is the same for every pattern)."
    )
    return "\n".join(lines)


def finetune_table(variants: list[Variant], tasks: list[str]) -> str:
    if not tasks:
        return "(no fine-tuning: --tasks none)"
    head = " | ".join(f"{t} {variants[0].finetune[t]['metric']}" for t in tasks)
    lines = [f"| pattern | {head} | fine-tune tokens/s |", "|---|" + "---:|" * (len(tasks) + 1)]
    for v in variants:
        vals = " | ".join(f"{v.finetune[t]['value']:.3f}" for t in tasks)
        tps = statistics.fmean(v.finetune[t]["tokens_per_s"] for t in tasks)
        lines.append(f"| {v.name} | {vals} | {tps:,.0f} |")
    return "\n".join(lines)


def plot(variants: list[Variant], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    per_step = {
        v.name: attention_flops(v.pattern, args.seq_len, args.hidden) * args.layers * args.batch
        for v in variants
    }
    xs = (
        ("optimizer steps", lambda v, s, t: s),
        ("training seconds (shared CPU: indicative)", lambda v, s, t: t),
        ("attention GFLOP (forward, cumulative)", lambda v, s, t: s * per_step[v.name] / 1e9),
    )
    for ax, (label, fx) in zip(axes, xs, strict=True):
        for v in variants:
            (line,) = ax.plot(
                [fx(v, s, t) for s, t, _ in v.evals], [x[2] for x in v.evals], marker="o",
                label=f"{v.name} (validation)",
            )  # fmt: skip
            k = max(1, args.smooth)
            train = [x[2] for x in v.train]
            avg = [statistics.fmean(train[max(0, i - k + 1) : i + 1]) for i in range(len(train))]
            ax.plot(
                [fx(v, s, t) for s, t, _ in v.train], avg, color=line.get_color(), alpha=0.3,
                linewidth=1,
            )  # fmt: skip
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"MLM loss (faint: train, mean of {args.smooth} steps)")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Local attention patterns, same init and data: hidden {args.hidden}, {args.layers} "
        f"layers, seq {args.seq_len}, {args.steps} steps x {args.batch} rows"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=int, default=128, help="w: one side of the sliding window")
    ap.add_argument("--seq-len", type=int, default=1024, help="packed MLM rows (tokens)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=4, help="rows per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--mlm-probability", type=float, default=0.15)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=8, help="validation batches per eval")
    ap.add_argument("--smooth", type=int, default=25, help="train-loss averaging window (steps)")
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "tvm"))
    ap.add_argument(
        "--tasks", nargs="+", default=list(DEFAULT_TASKS), help="fine-tuning tasks ('none': skip)"
    )
    ap.add_argument(
        "--finetune-max-len", type=int, default=4096, help="fine-tuning max_len (as the demo)"
    )
    ap.add_argument("--imdb-train", type=int, default=None, help="IMDB training reviews used")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--work", type=Path, default=Path("/tmp/longdoc-local-attention"))
    ap.add_argument("--omp-spin", action="store_true", help="leave OMP_WAIT_POLICY unset")
    ap.add_argument("--plot", type=Path, default=HERE / "local_attention.png")
    ap.add_argument("--no-append", action="store_true", help="don't append to RESULTS.md")
    args = ap.parse_args()
    if args.tasks == ["none"]:
        args.tasks = []
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from longdoc.components.data.tokenize import load_tokenizer
    from longdoc.kernels.api import select_backend

    start, load0 = time.perf_counter(), load_average()
    args.work.mkdir(parents=True, exist_ok=True)
    sample, shards = prepare_data(args.work / "data", args.seq_len, args.seed)
    tokenizer = load_tokenizer(shards)
    variants = make_variants(args.window)
    config = build(variants, args, tokenizer, args.seq_len)
    q = torch.empty(1, args.seq_len, args.heads, args.hidden // args.heads)
    for v in variants:  # the analytic key count against the pattern's own definition
        want = v.pattern.mask(args.seq_len).sum(dim=-1)
        assert torch.equal(keys_per_query(v.pattern, args.seq_len), want), v.name
        if args.backend == "auto":
            picked = select_backend(q, v.pattern, needs_grad=True)
            print(f"{v.name}: auto picks '{picked}' for training at {args.seq_len} tokens")
    pretrain_all(variants, args, tokenizer, shards)
    pretrained_s = time.perf_counter() - start
    finetune_all(variants, args, tokenizer, sample, args.work)
    total, load1 = time.perf_counter() - start, load_average()
    imdb_note = f", IMDB on its first {args.imdb_train} reviews" if args.imdb_train else ""
    pre, fin = pretrain_table(variants, args, config), finetune_table(variants, args.tasks)
    plot(variants, args, args.plot)
    curves = {v.name: {"train": v.train, "eval": v.evals, "finetune": v.finetune} for v in variants}
    (args.work / "curves.json").write_text(json.dumps(curves, indent=1))  # to redraw or re-read
    header = (
        f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip()
        + "  \n"
        f"Machine: {platform.machine()}, {args.threads} threads, CPU flags: {cpu_flags()}; load "
        f"average (1/5/15 min) at the start {load0}, at the end {load1}; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; torch {torch.__version__}; backend "
        f"{args.backend}.  \n"
        f"Model: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, FFN "
        f"{4 * args.hidden}, vocab {config.vocab_size}; pretraining {args.steps} steps x "
        f"{args.batch} rows x {args.seq_len} tokens ({args.steps * args.batch * args.seq_len:,} "
        f"tokens), lr {args.lr}, warmup {args.warmup}; validation: {args.eval_batches} batches "
        f"of the validation split every {args.eval_every} steps. Fine-tuning: `finetune()` "
        f"with max_len {args.finetune_max_len} (longer documents as overlapping windows), the "
        f"task defaults otherwise{imdb_note}. Pretraining took "
        f"{pretrained_s:.0f} s, everything {total:.0f} s. Plot: `{shown(args.plot)}`."
    )
    text = f"{header}\n\nPretraining (MLM):\n\n{pre}\n\nFine-tuned dev metrics:\n\n{fin}\n"
    print()
    print(text)
    if not args.no_append:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(f"\n## Local attention patterns (issue 18), {stamp}\n\n{text}")
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
