"""`longdoc`: one subcommand per stage, each running its Prefect flow (plus `evaluate`, which
scores a predictions file and is neither a stage nor a flow: see `_evaluate`).

Every subcommand takes `--params FILE` and repeatable `--set section.key=value`; the handful of
per-command flags (`--out`, `--source`...) are shorthands for such overrides. Configuration and
input errors end the process with one line on stderr and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from longdoc.components.core.config import ConfigError, Params, load_params
from longdoc.components.core.io import InputError, NothingProduced

# Exit codes: 0 done; 1 bad input (one line on stderr); 2 bad configuration; 3 the stage ran but
# produced nothing (every input rejected: the reasons are in its quarantine/errors file).
EXIT_INPUT, EXIT_CONFIG, EXIT_EMPTY = 1, 2, 3


@dataclass(frozen=True)
class Flag:
    """A per-command shorthand for `--set key=value`; `aliases` are accepted but not shown."""

    flag: str
    key: str
    help: str
    repeatable: bool = False
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """One stage subcommand: its flow, flags, a `--set` example about it, and the parameter keys
    naming what it reads (must exist) and the directories it writes (checked before anything
    heavy starts)."""

    name: str
    flow: str | None
    help: str
    flags: tuple[Flag, ...]
    example: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


COMMANDS = [
    Command(
        "sample",
        "sample",
        "write the embedded synthetic corpus and task data sets",
        (
            Flag("--out", "sample.out", "directory to write to"),
            Flag("--seed", "sample.seed", "generator seed"),
        ),
        "sample.corpus_docs=40",
        writes=("sample.out",),
    ),
    Command(
        "ingest",
        "ingest",
        "read document archives into a deduplicated Parquet corpus",
        (
            Flag("--input", "ingest.sources", "a file, directory or archive", True, ("--source",)),
            Flag("--out", "ingest.out", "corpus directory"),
        ),
        "ingest.near_dup_threshold=0.8",
        reads=("ingest.sources",),
        writes=("ingest.out",),
    ),
    Command(
        "tokenize",
        "tokenize",
        "train/load a tokenizer; write token and packed MLM shards",
        (
            Flag("--corpus", "tokenize.corpus", "ingested corpus directory"),
            Flag("--out", "tokenize.out", "shards directory"),
            Flag("--base-tokenizer", "tokenize.base_tokenizer", "use this HF tokenizer dir"),
        ),
        "tokenize.seq_len=4096",
        reads=("tokenize.corpus", "tokenize.base_tokenizer"),
        writes=("tokenize.out",),
    ),
    Command(
        "build-kernels",
        "build_kernels",
        "compile the TVM attention kernels into the cache",
        (Flag("--out", "kernels.out", "kernel cache directory"),),
        "kernels.head_dims=[32,64]",
        writes=("kernels.out",),
    ),
    Command(
        "pretrain",
        "pretrain",
        "continued pretraining of the long model (MLM; denoising for an LED)",
        (
            Flag("--shards", "pretrain.shards", "tokenize output directory"),
            Flag("--base", "pretrain.base", "HF checkpoint to continue from (null: fresh)"),
            Flag("--objective", "pretrain.objective", "mlm (Longformer) | denoise (LED base)"),
            Flag("--out", "pretrain.out", "checkpoint directory"),
            Flag("--steps", "pretrain.steps", "optimizer steps"),
        ),
        "pretrain.batch_size=8",
        reads=("pretrain.shards", "pretrain.base"),
        writes=("pretrain.out",),
    ),
    Command(
        "probe",
        "probe",
        "LAMA-style knowledge probing of a masked LM with prompt ensembles",
        (
            Flag("--model", "probe.model", "checkpoint directory or MLflow URI (models:/, runs:/)"),
            Flag("--relations", "probe.relations", "LAMA relations.jsonl (manual templates)"),
            Flag("--facts", "probe.facts", "directory of <relation>.jsonl fact files"),
            Flag("--prompts", "probe.prompts", "extra prompt file or directory", True),
            Flag("--out", "probe.out", "report directory"),
        ),
        "probe.top_k=5",
        reads=("probe.model_dir", "probe.relations", "probe.facts", "probe.prompts"),
        writes=("probe.out",),
    ),
    Command(
        "convert",
        "convert",
        "convert a RoBERTa (-> Longformer) or BART (-> LED) checkpoint into a long model",
        (
            Flag("--base", "convert.base", "RoBERTa or BART HF dir (model + tokenizer)"),
            Flag("--out", "convert.out", "long model directory"),
            Flag("--max-positions", "convert.max_positions", "tokens the long model takes"),
        ),
        "convert.attention_window=256",
        reads=("convert.base",),
        writes=("convert.out",),
    ),
    Command(
        "finetune",
        "finetune",
        "fine-tune on a task next to a truncated 512-token baseline; register",
        (
            Flag("--task", "finetune.task", "a registered task listed in finetune.tasks"),
            Flag("--max-len", "finetune.max_len", "tokens per window of the long model"),
            Flag(
                "--baseline-max-len",
                "finetune.baseline_max_len",
                "tokens of the truncated baseline trained alongside (null: none)",
            ),
            Flag("--data", "finetune.data", "task data in its official layout (null: the task's)"),
            Flag("--base", "finetune.base", "pretrained checkpoint directory"),
            Flag("--out", "finetune.out", "output checkpoint directory (null: the task's)"),
        ),
        "finetune.epochs=5",
        reads=("finetune.data", "finetune.base"),
        writes=("finetune.out",),
    ),
    Command(
        "score",
        "score",
        "score archives, directories or record files with a registered model",
        (
            Flag("--input", "score.inputs", "archive, file or directory", True),
            Flag("--source", "score.source", "what to score when no --input is given"),
            Flag(
                "--model",
                "score.model_uri",
                "MLflow model URI or checkpoint directory",
                aliases=("--model-uri",),
            ),
            Flag(
                "--zero-shot",
                "score.zero_shot",
                "score with this zero-shot classifier of zeroshot.classifiers instead",
            ),
            Flag("--out", "score.out", "predictions directory"),
        ),
        "score.batch_tokens=32768",
        reads=("score.sources",),
        writes=("score.out",),
    ),
    Command(
        "pipeline",
        None,
        "run every stage in order, skipping unchanged ones",
        (),
        "pretrain.steps=50",
        writes=(
            "sample.out",
            "ingest.out",
            "tokenize.out",
            "kernels.out",
            "pretrain.out",
            "probe.out",
        ),
    ),
]
BY_NAME = {c.name: c for c in COMMANDS}


def _lookup(params: Params, key: str):
    node = params
    for part in key.split("."):
        node = getattr(node, part)
    return node() if callable(node) else node


@functools.cache
def _defaults() -> Params:
    return Params()


def _default(key: str) -> str:
    value = _lookup(_defaults(), key)
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return "null" if value is None else str(value)


def build_parser() -> argparse.ArgumentParser:
    from longdoc import __version__

    parser = argparse.ArgumentParser(
        prog="longdoc",
        description="Long-document transformer pipeline: ingest → tokenize → build-kernels → "
        "pretrain → finetune → score, orchestrated by Prefect and tracked in MLflow.",
        epilog="Exit codes: 0 done, 1 bad input, 2 bad configuration, 3 nothing produced "
        "(every input rejected; see the stage's quarantine/errors file).",
    )
    parser.add_argument("--version", action="version", version=f"longdoc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        p.add_argument(
            "--params",
            default="params.yaml",
            metavar="FILE",
            help="parameters file (default: params.yaml; when params.yaml is missing the "
            "built-in defaults apply; any other missing file is an error)",
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help=f"override one parameter (repeatable; values are YAML), e.g. --set {cmd.example}",
        )
        for f in cmd.flags:
            p.add_argument(
                f.flag,
                dest=f"opt:{f.key}",
                action="append" if f.repeatable else "store",
                metavar=f.flag.lstrip("-").upper().replace("-", "_"),
                help=f"{f.help}{' (repeatable)' if f.repeatable else ''} "
                f"[{f.key}; default: {_default(f.key)}]",
            )
            for alias in f.aliases:
                p.add_argument(
                    alias,
                    dest=f"opt:{f.key}",
                    action="append" if f.repeatable else "store",
                    help=argparse.SUPPRESS,
                )
        if cmd.name == "pipeline":
            p.add_argument(
                "--force", action="store_true", help="rerun every stage even when unchanged"
            )
        else:
            sections = sorted({key.split(".")[0] for key in cmd.writes})
            p.add_argument(
                "--force",
                dest="replace_foreign",
                action="store_true",
                help="replace the output directory even if it holds files longdoc did not "
                f"write [{', '.join(f'{s}.force' for s in sections)}]",
            )
    _add_evaluate(sub)
    _add_server(sub)
    p = sub.add_parser(
        "dvc-yaml",
        help="write dvc.yaml from params.yaml and the stage specs (--check: only compare)",
        description="dvc.yaml is generated: the stages, their dependencies (data, parameters, "
        "code) and outputs are the ones `longdoc pipeline` uses to skip fresh stages.",
    )
    p.add_argument("--params", default="params.yaml", metavar="FILE", help="parameters file")
    p.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml is out of date")
    return parser


def _add_evaluate(sub) -> None:
    """`evaluate` scores a prediction file; it reads no params (nothing in params.yaml bears on
    an official metric), so it is not in COMMANDS."""
    from longdoc.components.tasks import all_tasks, task_names

    formats = "\n".join(
        f"  {t.name}\n    --gold         {t.gold_path}\n    --predictions  {t.predictions_format}"
        for t in all_tasks()
    )
    p = sub.add_parser(
        "evaluate",
        help="score a predictions file with a task's official metrics (prints JSON)",
        description="Score predictions in a task's official format against its gold data "
        "(no Prefect run, no params.yaml).",
        epilog=f"what each task takes:\n{formats}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--gold", required=True, metavar="PATH", help="gold file or directory")
    p.add_argument("--predictions", required=True, metavar="FILE", help="predictions file")
    p.add_argument("--out", metavar="FILE", help="also write the metrics JSON here")


def _add_server(sub) -> None:
    p = sub.add_parser(
        "server",
        help="the local Prefect server longdoc commands share (status, stop)",
        description="Without PREFECT_API_URL, the first longdoc command starts a local Prefect "
        "API server that later commands reuse; it stops by itself after "
        "20 minutes without requests, or with `longdoc server stop`.",
    )
    p.add_argument("action", choices=("status", "stop"))


def _evaluate(args: argparse.Namespace) -> int:
    """No Prefect flow here, on purpose: scoring is a pure function of two files that takes
    moments, produces no pipeline output and must work for predictions from any system without
    a Prefect server or params.yaml."""
    from longdoc.components.inference.evaluate import evaluate_file

    logging.basicConfig(level=logging.WARNING, format="longdoc: warning: %(message)s")
    try:
        metrics = evaluate_file(args.task, args.gold, args.predictions, args.out)
    except InputError as exc:
        return _fail(str(exc))
    print(json.dumps(metrics, indent=2))
    return 0


def _dvc_yaml(args: argparse.Namespace) -> int:
    from longdoc.components.core.io import atomic_write_text
    from longdoc.flows.freshness import dvc_yaml

    try:
        text = dvc_yaml(load_params(args.params), args.params)
    except ConfigError as exc:
        print(f"longdoc: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    dest = Path(args.params).with_name("dvc.yaml")
    current = dest.exists() and dest.read_text() == text
    if args.check:
        return 0 if current else _fail(f"{dest} is out of date: run `longdoc dvc-yaml`")
    if not current:
        atomic_write_text(dest, text)
    print(f"dvc-yaml: {dest} {'unchanged' if current else 'written'}")
    return 0


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    if getattr(args, "replace_foreign", False):
        out += [f"{key.split('.')[0]}.force=true" for key in BY_NAME[args.command].writes]
    for dest, value in vars(args).items():
        if dest.startswith("opt:") and value is not None:
            key = dest.removeprefix("opt:")
            out.append(f"{key}={json.dumps(value) if isinstance(value, list) else value}")
    return out


def check_paths(cmd: Command, params: Params) -> None:
    """Fail fast, before Prefect or torch load, on what would fail later anyway: an input that
    does not exist, an output that is a file, an output that cannot be created or written."""
    for key in cmd.reads:
        value = _lookup(params, key)
        for path in value if isinstance(value, list) else [value]:
            if path is not None and not Path(path).exists():
                raise InputError(f"not found: {path} ({key})")
    for key in cmd.writes:
        out = Path(_lookup(params, key))
        if out.exists() and not out.is_dir():
            raise InputError(f"{key}: {out} exists and is not a directory")
        existing = next(p for p in (out, *out.absolute().parents) if p.exists())
        if not existing.is_dir():
            raise InputError(f"{key}: cannot create {out}: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(f"{key}: cannot write to {existing} (permission denied or read-only)")


class _QuietUserErrors(logging.Filter):
    """Prefect logs a failed task's exception and then the failed flow's final state; for user
    errors the CLI's one `longdoc: error:` line is the whole story, so drop those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, InputError | ConfigError):
            return False
        message = record.getMessage()
        return not any(f"{cls.__name__}:" in message for cls in (InputError, ConfigError))


def _fail(message: str, code: int = EXIT_INPUT) -> int:
    print(f"longdoc: error: {message}", file=sys.stderr)
    return code


def _prepare_environment() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    quiet = _QuietUserErrors()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(quiet)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "server":
        from longdoc.flows import server

        print(server.status() if args.action == "status" else server.stop())
        return 0
    if args.command == "dvc-yaml":
        return _dvc_yaml(args)
    cmd = BY_NAME[args.command]
    try:
        params = load_params(args.params, _overrides(args))
    except ConfigError as exc:
        print(f"longdoc: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        check_paths(cmd, params)
    except InputError as exc:
        return _fail(str(exc))
    _prepare_environment()
    ranks = args.command in ("pretrain", "finetune") and "LOCAL_RANK" in os.environ
    from longdoc.flows.server import ServerError, start_api

    try:
        # torchrun ranks train without Prefect runs (see flows.pretrain_ranks)
        api_ready = None if ranks else start_api()
        # Prefect is imported only now: once the configuration and paths are known good, and
        # while a server started just now boots
        from longdoc.flows import stages as flows

        if api_ready is not None:
            api_ready()
    except ServerError as exc:
        return _fail(str(exc))
    try:
        if args.command == "pipeline":
            result = flows.pipeline_flow(params, force=args.force)
        elif ranks:
            # torchrun: one process per rank (ddp, fsdp or tp)
            by_stage = {"pretrain": flows.pretrain_ranks, "finetune": flows.finetune_ranks}
            result = by_stage[args.command](params)
            if "rank" in result:
                return 0  # rank 0 prints the summary
        else:
            result = flows.STAGE_FLOWS[cmd.flow](params)
    except NothingProduced as exc:
        return _fail(str(exc), EXIT_EMPTY)
    except (InputError, ConfigError) as exc:
        return _fail(str(exc))
    from longdoc.flows.report import summary_line

    print(summary_line(args.command, params, result))
    if args.command == "score" and not result["counts"].get("scored"):
        errors = Path(params.score.out) / "errors.jsonl"
        return _fail(f"nothing scored (reasons in {errors})", EXIT_EMPTY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
