"""Fixed cost of a `longdoc` command: ours (lazy imports, one shared local Prefect server) vs the
same flow run the way Prefect runs it by default (a temporary API server started and stopped by
every process), side by side in one run, as ratios.

Rows:
- `error path`: `longdoc ingest --input <missing>` (ours stops before Prefect starts);
- `stage command`: `longdoc sample` on a tiny configuration (the work itself is ~0.1 s);
- `first command`: the same on a fresh `PREFECT_HOME` (a new machine): ours starts the shared
  server and imports the stage while it boots, the peer starts its temporary server; both
  create and migrate Prefect's database;
- `pipeline, all fresh` (with `--pipeline`): `longdoc pipeline` when every stage is up to date
  (a tiny project, trained once first).

The peer runs the same flow functions from `longdoc.flows.stages` in a fresh interpreter without
`PREFECT_API_URL`, which is what every command did before the shared server.

    python benchmarks/cli.py [--rounds 3] [--pipeline]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = [
    "--set", "sample.corpus_docs=4", "--set", "sample.imdb_train=4", "--set", "sample.imdb_test=2",
    "--set", "sample.task_train=2", "--set", "sample.task_dev=2", "--set", "sample.score_docs=2",
]  # fmt: skip
TINY_PROJECT = """
sample: {corpus_docs: 10, min_words: 200, max_words: 400, imdb_train: 16, imdb_test: 8,
         task_train: 4, task_dev: 2, score_docs: 4}
tokenize: {vocab_size: 400, seq_len: 128}
kernels: {head_dims: [16]}
model: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64,
        attention_window: 16, max_position_embeddings: 514}
pretrain: {steps: 3, batch_size: 2, eval_batches: 1, warmup_steps: 1}
finetune: {epochs: 1, max_len: 512, baseline_max_len: 128, batch_size: 4}
score: {max_len: 512}
"""
PEER = """
import sys
from longdoc.components.core.config import load_params
from longdoc.flows import stages
params = load_params("params.yaml", [a for a in sys.argv[2:]])
if sys.argv[1] == "pipeline":
    stages.pipeline_flow(params)
else:
    stages.STAGE_FLOWS[sys.argv[1]](params)
"""


def _wall(cmd: list[str], cwd: Path, env: dict, ok: bool = True) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if ok and res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return took


def cpu_flags() -> str:
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0]
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
    return " ".join(f for f in wanted if f" {f}" in flags) or "none of avx2/avx512"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pipeline", action="store_true", help="add the all-fresh pipeline row "
                    "(trains a tiny project once first: about a minute)")  # fmt: skip
    args = ap.parse_args()
    longdoc = [sys.executable, "-m", "longdoc"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env.update(
            PREFECT_HOME=str(work / ".prefect"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            # the peer's temporary server on a new database takes over Prefect's default 20 s
            # on a slow 2-core machine (ours waits up to 120 s for its server by default)
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        )
        sets = [s for s in TINY if s != "--set"]
        (work / "params.yaml").write_text("sample:\n  out: data/sample\n")
        # a warm shared server, as after any earlier command
        _wall([*longdoc, "sample", *TINY], work, env)
        cases = {
            "error path": (
                [*longdoc, "ingest", "--input", "missing"],
                [sys.executable, "-c", PEER, "ingest", "ingest.sources=[missing]"],
                False,
            ),
            "stage command": (
                [*longdoc, "sample", *TINY],
                [sys.executable, "-c", PEER, "sample", *sets],
                True,
            ),
        }
        if args.pipeline:  # a tiny project trained once, then every stage is fresh
            (work / "params.yaml").write_text(TINY_PROJECT)
            _wall([*longdoc, "pipeline"], work, env)
            cases["pipeline, all fresh"] = (
                [*longdoc, "pipeline"],
                [sys.executable, "-c", PEER, "pipeline"],
                True,
            )
        rows = []
        for name, (ours_cmd, peer_cmd, ok) in cases.items():
            ours = [_wall(ours_cmd, work, env, ok) for _ in range(args.rounds)]
            peer = [_wall(peer_cmd, work, env, ok) for _ in range(args.rounds)]
            rows.append((name, statistics.median(ours), statistics.median(peer)))
        # a fresh PREFECT_HOME each round, as on a new machine: ours starts the shared server,
        # the peer its temporary one, and both migrate a new database
        (work / "params.yaml").write_text("sample:\n  out: data/sample\n")
        cold_ours, cold_peer = [], []
        for i in range(args.rounds):
            fresh = {**env, "PREFECT_HOME": str(work / f".prefect-ours{i}")}
            cold_ours.append(_wall([*longdoc, "sample", *TINY], work, fresh))
            subprocess.run([*longdoc, "server", "stop"], cwd=work, env=fresh, capture_output=True)
            fresh = {**env, "PREFECT_HOME": str(work / f".prefect-peer{i}")}
            cold_peer.append(_wall([sys.executable, "-c", PEER, "sample", *sets], work, fresh))
        rows.append(("first command", statistics.median(cold_ours), statistics.median(cold_peer)))
        subprocess.run([*longdoc, "server", "stop"], cwd=work, env=env, capture_output=True)
    print(f"\nlongdoc command overhead, median of {args.rounds} ({platform.processor() or '?'}, "
          f"{os.cpu_count()} cores, CPU flags: {cpu_flags()})")  # fmt: skip
    print(f"{'':<22}{'ours s':>9}{'prefect temp-server s':>24}{'peer/ours':>11}")
    for name, ours, peer in rows:
        print(f"{name:<22}{ours:>9.2f}{peer:>24.2f}{peer / ours:>10.1f}x")


if __name__ == "__main__":
    main()
