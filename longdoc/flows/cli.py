"""`longdoc`: one subcommand per stage, each running its Prefect flow (plus `evaluate`, which
scores a predictions file and is neither a stage nor a flow: see `_evaluate`).

Every subcommand takes `--params FILE` and repeatable `--set section.key=value`; the handful of
per-command flags (`--out`, `--source`...) are shorthands for such overrides. Configuration and
input errors end the process with one line on stderr and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from longdoc.components.config import ConfigError, Params, load_params
from longdoc.components.io import InputError

EXIT_CONFIG, EXIT_INPUT = 2, 1

# (subcommand, flow name in flows.stages.STAGE_FLOWS, help, [(flag, dest key, help, repeatable)])
COMMANDS = [
    (
        "sample",
        "sample",
        "write the embedded synthetic corpus and task data sets",
        [
            ("--out", "sample.out", "directory to write to (default data/sample)", False),
            ("--seed", "sample.seed", "generator seed", False),
        ],
    ),
    (
        "ingest",
        "ingest",
        "read document archives into a deduplicated Parquet corpus",
        [
            ("--source", "ingest.sources", "a file, directory or archive (repeatable)", True),
            ("--out", "ingest.out", "corpus directory (default data/corpus)", False),
        ],
    ),
    (
        "tokenize",
        "tokenize",
        "train/load a tokenizer; write token and packed MLM shards",
        [
            ("--corpus", "tokenize.corpus", "ingested corpus directory", False),
            ("--out", "tokenize.out", "shards directory (default data/shards)", False),
            ("--base-tokenizer", "tokenize.base_tokenizer", "use this HF tokenizer dir", False),
        ],
    ),
    (
        "build-kernels",
        "build_kernels",
        "compile the TVM attention kernels into the cache",
        [
            ("--out", "kernels.out", "kernel cache directory (default data/kernels)", False),
        ],
    ),
    (
        "pretrain",
        "pretrain",
        "continued MLM pretraining of the long model",
        [
            ("--shards", "pretrain.shards", "tokenize output directory", False),
            ("--base", "pretrain.base", "HF checkpoint to continue from (default: fresh)", False),
            ("--out", "pretrain.out", "checkpoint directory", False),
            ("--steps", "pretrain.steps", "optimizer steps", False),
        ],
    ),
    (
        "convert",
        "convert",
        "convert a RoBERTa checkpoint into a long model (tiled positions, global q/k/v)",
        [
            ("--base", "convert.base", "RoBERTa-architecture HF dir (model + tokenizer)", False),
            ("--out", "convert.out", "long model directory", False),
            ("--max-positions", "convert.max_positions", "tokens the long model takes", False),
        ],
    ),
    (
        "finetune",
        "finetune",
        "fine-tune on a task next to a truncated 512-token baseline; register",
        [
            (
                "--task",
                "finetune.task",
                "wikihop, triviaqa, hotpotqa, imdb or hyperpartisan",
                False,
            ),
            ("--max-len", "finetune.max_len", "tokens per window of the long model", False),
            (
                "--baseline-max-len",
                "finetune.baseline_max_len",
                "tokens of the truncated baseline trained alongside (null = none)",
                False,
            ),
            ("--data", "finetune.data", "task data directory in its official layout", False),
            ("--base", "finetune.base", "pretrained checkpoint directory", False),
            ("--out", "finetune.out", "output checkpoint directory", False),
        ],
    ),
    (
        "score",
        "score",
        "score archives, directories or record files with a registered model",
        [
            ("--input", "score.inputs", "archive, file or directory (repeatable)", True),
            ("--source", "score.source", "the default input when no --input is given", False),
            ("--model", "score.model_uri", "MLflow model URI (default the champion)", False),
            ("--model-uri", "score.model_uri", "same as --model", False),
            ("--out", "score.out", "predictions directory", False),
        ],
    ),
    ("pipeline", None, "run every stage in order, skipping unchanged ones", []),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longdoc",
        description="Long-document transformer pipeline: ingest → tokenize → build-kernels → "
        "pretrain → finetune → score, orchestrated by Prefect and tracked in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, _flow, help_text, flags in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--params",
            default="params.yaml",
            metavar="FILE",
            help="parameters file (default params.yaml; missing = built-in defaults)",
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one parameter, e.g. --set pretrain.steps=10 (repeatable)",
        )
        for flag, key, flag_help, repeatable in flags:
            p.add_argument(
                flag,
                dest=f"opt:{key}",
                action="append" if repeatable else "store",
                metavar=flag.lstrip("-").upper().replace("-", "_"),
                help=f"{flag_help} [{key}]",
            )
        if name == "pipeline":
            p.add_argument(
                "--force", action="store_true", help="rerun every stage even when unchanged"
            )
    _add_evaluate(sub)
    return parser


def _add_evaluate(sub) -> None:
    """`evaluate` scores a prediction file; it reads no params (nothing in params.yaml bears on
    an official metric), so it is not in COMMANDS."""
    from longdoc.components.tasks import TASKS

    p = sub.add_parser(
        "evaluate",
        help="score a predictions file with a task's official metrics (prints JSON)",
        description="Score predictions in a task's official format against its gold data. "
        "--gold: wikihop dev.json; triviaqa qa/<domain>-dev.json or the root holding qa/; "
        "hotpotqa hotpot_dev_distractor_v1.json; imdb the aclImdb dir (test/) or a split dir; "
        "hyperpartisan a ground-truth-*-byarticle*.xml or the data dir (its dev split).",
    )
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--gold", required=True, metavar="PATH", help="gold file or directory")
    p.add_argument("--predictions", required=True, metavar="FILE", help="predictions file")
    p.add_argument("--out", metavar="FILE", help="also write the metrics JSON here")


def _evaluate(args: argparse.Namespace) -> int:
    """No Prefect flow here, on purpose: scoring is a pure function of two files that takes
    moments, produces no pipeline output and must work for predictions from any system without
    starting a Prefect server (a flow run took 20-32 s here against 0.4 s for this call, see
    benchmarks/RESULTS.md) or reading params.yaml."""
    from longdoc.components.evaluate import evaluate_file

    logging.basicConfig(level=logging.WARNING, format="longdoc: warning: %(message)s")
    try:
        metrics = evaluate_file(args.task, args.gold, args.predictions, args.out)
    except InputError as exc:
        print(f"longdoc: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(json.dumps(metrics, indent=2))
    return 0


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    for dest, value in vars(args).items():
        if dest.startswith("opt:") and value is not None:
            key = dest.removeprefix("opt:")
            out.append(f"{key}={json.dumps(value) if isinstance(value, list) else value}")
    return out


class _QuietUserErrors(logging.Filter):
    """Prefect logs a traceback for every failed run; for user errors the CLI's one line is the
    whole story, so drop those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InputError | ConfigError)


def _prepare_environment(command: str) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if command == "score":
        # Scoring is pure inference, which runs on the compiled TVM kernels (their own thread
        # pool) between torch ops: torch's OpenMP threads, left spinning after each op, would
        # take the cores the kernel needs (a 1024-token attention call: 28 ms spinning vs 10 ms
        # passive on 2 cores). Read by libgomp when torch loads, so set before that; an
        # explicit setting wins. Training stays on the default (passive costs it ~6%).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    quiet = _QuietUserErrors()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(quiet)


def _print_summary(command: str, params: Params, result) -> None:
    if command == "pipeline":
        from longdoc.components.report import pipeline_report

        print(pipeline_report(params, result))
    else:
        print(json.dumps(result, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        return _evaluate(args)
    try:
        params = load_params(args.params, _overrides(args))
    except ConfigError as exc:
        print(f"longdoc: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _prepare_environment(args.command)
    # Prefect is imported only once the configuration is known good.
    from longdoc.flows import stages as flows

    flow_name = next(f for n, f, _, _ in COMMANDS if n == args.command)
    try:
        if args.command == "pipeline":
            result = flows.pipeline_flow(params, force=args.force)
        elif args.command == "pretrain" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            result = flows.pretrain_ranks(params)  # torchrun: DDP, one process per rank
            if "rank" in result:
                return 0  # rank 0 prints the summary
        else:
            result = flows.STAGE_FLOWS[flow_name](params)
    except (InputError, ConfigError) as exc:
        print(f"longdoc: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    _print_summary(args.command, params, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
