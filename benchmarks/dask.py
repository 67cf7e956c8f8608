"""The data stages on Dask (issue 17): 1 vs 2 Dask workers against the local runner, side by
side in one run, on the same inputs and with the same outputs.

- `score`: `components.inference.score.score` on a tar.gz of long documents (1k-4k tokens,
  the classifier of benchmarks/score.py: hidden 256, 4 layers) registered in a throwaway MLflow
  store, one unit per `--chunk-docs` documents;
- `ingest`: `components.data.ingest.ingest` on a directory of generated documents (parsing,
  cleaning and sentence splitting are the units' work; deduplication stays in the stage).

Contenders: `local` (the stage's own process, torch with every core: what `longdoc score`
does by default), `dask x1` and `dask x2` (a `distributed.LocalCluster` of 1 or 2 single-thread
worker processes, through the same `longdoc.flows.runner.unit_runner` the flows use, as Prefect
task runs on a local Prefect server). Every cluster is started once, before the timed runs, and
the contenders alternate for `--reps` rounds (the machine is shared with other jobs); a row
reports its best round and its first (after an untimed warm-up that has each worker import
torch and load the model), the
throughput ratio to `dask x1` and to `local`, and the peak RSS of each process that did the
work (the stage process; each worker). Outputs are checked equal across contenders.

    .venv/bin/python benchmarks/dask.py                 # score and ingest
    .venv/bin/python benchmarks/dask.py --stages score --docs 16 --reps 1 --no-append

The load average is printed with the table: on a shared 2-core machine other jobs take cores
from the workers, and a ratio then says as much about them as about the runner.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# This file is benchmarks/dask.py: with its folder on sys.path (as for any script), `import
# dask` would find this file instead of the library. Take the folder off; load the sibling
# helpers by path instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

import numpy as np  # noqa: E402


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


machine = _sibling("machine")  # cpu_flags, load_average: as every benchmark prints them
cpu_flags, load_average = machine.cpu_flags, machine.load_average

CONTENDERS = ("local", "dask x1", "dask x2")


def _vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _worker_pids() -> set[int]:
    """This process's worker children (LocalCluster workers are multiprocessing spawns)."""
    import psutil

    return {
        c.pid
        for c in psutil.Process().children()
        if "spawn_main" in " ".join(c.cmdline()) and "resource_tracker" not in c.cmdline()[-1]
    }


def _clear_peak(pids: set[int]) -> None:
    """Reset each process's VmHWM to its current RSS (Linux), so a peak is that of one round."""
    for pid in pids | {os.getpid()}:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def start_runners(stack: ExitStack, unit_name: str) -> dict[str, tuple]:
    """Each contender's UnitRunner, with its worker processes (none for local)."""
    from longdoc.components.core.config import RunnerParams
    from longdoc.flows.runner import unit_runner

    runners = {"local": (stack.enter_context(unit_runner(RunnerParams(), unit_name)), set())}
    for n in (1, 2):
        before = _worker_pids()
        runner = stack.enter_context(unit_runner(RunnerParams(kind="dask", n_workers=n), unit_name))
        runners[f"dask x{n}"] = (runner, _worker_pids() - before)
    return runners


def _cpu_s(pids: set[int]) -> float:
    """User + system CPU seconds these processes have used (this one: all its threads)."""
    import psutil

    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def _server_pids() -> set[int]:
    """The local Prefect server's process (it records task runs' states: CPU on the same
    cores), if this machine runs it; empty when PREFECT_API_URL names a server elsewhere."""
    from longdoc.flows import server

    info = server.running_server()
    return {int(info["pid"])} if info else set()


def race(
    runners: dict[str, tuple], run: Callable, reps: int, warm_up: Callable
) -> tuple[dict[str, list[float]], dict[str, dict], dict[str, dict]]:
    """Alternate the contenders `reps` rounds; (seconds per round, peaks and CPU seconds,
    outputs) by name. First `warm_up(runner)` each, untimed: a Dask worker imports torch and the
    stage's modules when its first unit arrives (seconds, once per worker process, not per unit).

    CPU seconds (the stage's process, its workers, the local Prefect server that records the
    task runs) depend much less on what else the machine runs than wall seconds do: what is not
    in the workers' column runs on the same cores and caps what a second worker can add."""
    for runner, _workers in runners.values():
        warm_up(runner)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    peaks: dict[str, dict] = {}
    outputs: dict[str, dict] = {}
    me, api = {os.getpid()}, _server_pids()
    for rep in range(reps):
        for name, (runner, workers) in runners.items():
            _clear_peak(workers)
            cpu0 = _cpu_s(me), _cpu_s(workers), _cpu_s(api)
            t0 = time.perf_counter()
            outputs[name] = run(runner, f"{name.replace(' ', '')}-{rep}")
            seconds[name].append(time.perf_counter() - t0)
            cpu = _cpu_s(me) - cpu0[0], _cpu_s(workers) - cpu0[1], _cpu_s(api) - cpu0[2]
            stage = _vm_hwm_mib(os.getpid())
            worker = [_vm_hwm_mib(pid) for pid in sorted(workers)]
            before = peaks.get(name, {"stage": 0, "cpu": (float("inf"), 0.0, 0.0)})
            best_cpu = min(before["cpu"], cpu, key=sum)
            peaks[name] = {"stage": max(stage, before["stage"]), "w": worker, "cpu": best_cpu}
            print(
                f"[round {rep + 1}] {name}: {seconds[name][-1]:.1f} s, CPU s: stage process "
                f"{cpu[0]:.1f}, workers {cpu[1]:.1f}, Prefect server {cpu[2]:.1f}",
                flush=True,
            )
    return seconds, peaks, outputs


def table(what: str, n: int, seconds: dict[str, list[float]], peaks: dict[str, dict]) -> str:
    lines = [
        f"| {what}: runner | best s | first s | {what.split()[-1]}/s | vs dask x1 | vs local "
        "| CPU s: stage process / workers / Prefect server "
        "| peak RSS MiB: stage process / each worker |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    best = {name: min(s) for name, s in seconds.items()}
    for name in seconds:
        workers = ", ".join(f"{m:,.0f}" for m in peaks[name]["w"]) or "-"
        cpu = peaks[name]["cpu"]  # the round with the least CPU in all
        lines.append(
            f"| {name} | {best[name]:.1f} | {seconds[name][0]:.1f} | {n / best[name]:.2f} | "
            f"{best['dask x1'] / best[name]:.2f}x | {best['local'] / best[name]:.2f}x | "
            f"{cpu[0]:.1f} / {cpu[1]:.1f} / {cpu[2]:.1f} | "
            f"{peaks[name]['stage']:,.0f} / {workers} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------


def _prediction_gap(outputs: dict[str, dict]) -> str:
    """How far the runners' predictions are from the local run's when not bit-identical: the
    labels that differ and the largest probability difference."""
    base = outputs["local"]["rows"]
    labels, gap = 0, 0.0
    for out in outputs.values():
        for a, b in zip(out["rows"], base, strict=True):
            labels += a["label"] != b["label"]
            for p, q in zip(a["probabilities"], b["probabilities"], strict=True):
                gap = max(gap, abs(p - q))
    return f"False (labels that differ: {labels}; max abs probability difference {gap:.1e})"


def bench_score(args: argparse.Namespace, tmp: Path) -> tuple[str, str]:
    import mlflow
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from longdoc.components.core import tracking
    from longdoc.components.core.config import ScoreParams, TrackingParams
    from longdoc.components.inference.score import score
    from longdoc.components.inference.serving import log_longdoc_model

    make_checkpoint, make_texts, trim = (
        getattr(_sibling("score"), f) for f in ("make_checkpoint", "make_texts", "trim")
    )
    rng = np.random.default_rng(0)
    texts = make_texts(rng, args.docs, int(args.min_tokens / 1.2), int(args.max_tokens / 1.2))
    ckpt = tmp / "ckpt"
    make_checkpoint(ckpt, texts, args.max_tokens)
    texts = trim(texts, AutoTokenizer.from_pretrained(ckpt), args.max_tokens)
    archive = tmp / "docs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i, t in enumerate(texts):
            info = tarfile.TarInfo(f"doc{i:03d}.txt")
            info.size = len(t.encode())
            tar.addfile(info, io.BytesIO(t.encode()))
    store = TrackingParams(uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="bench")
    os.environ["MLFLOW_TRACKING_URI"] = store.uri
    tracking.setup(store)
    with mlflow.start_run():
        version = log_longdoc_model(ckpt, "longdoc-bench").registered_model_version

    def run(runner, tag: str) -> dict:
        out = tmp / f"pred-{tag}"
        params = ScoreParams(
            inputs=[archive],
            model_uri=f"models:/longdoc-bench/{version}",
            out=out,
            max_len=args.max_tokens,
            chunk_docs=args.chunk_docs,
            device="cpu",
        )
        manifest = score(params, store, runner=runner)
        rows = pq.read_table(out / "predictions.parquet").drop(["scored_at"]).to_pylist()
        return {"rows": rows, "tokens": manifest["tokens"]}

    few = tmp / "warm-up.tar.gz"  # one short document a unit, so every worker gets some
    with tarfile.open(few, "w:gz") as tar:
        for i in range(4):
            info = tarfile.TarInfo(f"warm{i}.txt")
            info.size = len(texts[i][:2000].encode())
            tar.addfile(info, io.BytesIO(texts[i][:2000].encode()))
    warm = [0]

    def warm_up(runner) -> None:
        warm[0] += 1
        uri = f"models:/longdoc-bench/{version}"
        out = tmp / f"warm-{warm[0]}"
        # the timed runs' engine settings: the model each worker caches is the one they use
        settings = {"max_len": args.max_tokens, "device": "cpu", "chunk_docs": 1}
        params = ScoreParams(inputs=[few], model_uri=uri, out=out, **settings)
        score(params, store, runner=runner)

    with ExitStack() as stack:
        runners = start_runners(stack, "score-chunk")
        seconds, peaks, outputs = race(runners, run, args.reps, warm_up)
    same = all(outputs[name]["rows"] == outputs["local"]["rows"] for name in outputs)
    if not same:  # one-thread workers vs the two-thread local run: float summation order
        same = _prediction_gap(outputs)
    tokens = outputs["local"]["tokens"]
    note = (
        f"score: {len(texts)} documents, {tokens:,} tokens, {args.chunk_docs} a unit "
        f"({-(-len(texts) // args.chunk_docs)} units); predictions identical across runners: "
        f"{same}"
    )
    return table("score docs", len(texts), seconds, peaks), note


# --------------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------------


def bench_ingest(args: argparse.Namespace, tmp: Path) -> tuple[str, str]:
    import json

    from longdoc.components.core.config import IngestParams
    from longdoc.components.data.ingest import ingest

    data = _sibling("data")  # benchmarks/data.py's corpus: gzipped JSONL + tar.gz of .txt
    src = tmp / "ingest-src"
    info = data.generate(src, args.ingest_mb)

    def run(runner, tag: str) -> dict:
        out = tmp / f"corpus-{tag}"
        manifest = ingest(IngestParams(sources=[src], out=out, workers=0), runner=runner)
        logs = {n: (out / n).read_text() for n in ("quarantine.jsonl", "duplicates.jsonl")}
        return {"shards": manifest["shards"], "counts": manifest["counts"], "logs": logs}

    def warm_up(runner) -> None:  # every worker imports spaCy and loads its pipeline
        few = tmp / "warm-docs"
        few.mkdir(exist_ok=True)
        for i in range(16):
            (few / f"{i}.txt").write_text(f"Warm up {i}. A sentence or two.")
        ingest(IngestParams(sources=[few], out=tmp / f"warm-{id(runner)}"), runner=runner)

    import longdoc.components.data.ingest as ingest_mod

    ingest_mod._SENT_BATCH_DOCS = 1  # warm-up: a unit per document, so every worker gets some
    with ExitStack() as stack:
        runners = start_runners(stack, "ingest-split")
        for runner, _workers in runners.values():
            warm_up(runner)
        ingest_mod._SENT_BATCH_DOCS = 32  # the stage's own unit size again
        seconds, peaks, outputs = race(runners, run, args.reps, lambda runner: None)
    same = all(outputs[n] == outputs["local"] for n in outputs)
    counts = outputs["local"]["counts"]
    note = (
        f"ingest: {info['docs']} documents, {info['text_bytes'] / 1e6:.0f} MB of text "
        f"({counts['written']} written, {counts['duplicates']} duplicates); shards, quarantine "
        f"and duplicate records identical across runners: {same} ({json.dumps(counts)})"
    )
    return table("ingest docs", info["docs"], seconds, peaks), note


# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", nargs="+", default=["score", "ingest"], choices=["score", "ingest"])
    ap.add_argument("--ingest-mb", type=float, default=20, help="ingest: MB of generated text")
    ap.add_argument("--docs", type=int, default=32, help="score: documents")
    ap.add_argument("--min-tokens", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--chunk-docs", type=int, default=4, help="score: documents per unit")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-append", action="store_true", help="don't append to RESULTS.md")
    args = ap.parse_args()

    load_start = load_average()
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores; load average {load_start}")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        os.environ.setdefault("PREFECT_HOME", str(tmp / ".prefect"))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every inference path
        from longdoc.flows import server

        started_server = "PREFECT_API_URL" not in os.environ
        server.ensure_api()  # before Prefect is imported, as the CLI does
        from prefect import flow

        results = []
        try:
            for stage in args.stages:
                bench = {"score": bench_score, "ingest": bench_ingest}[stage]

                def run_stage(bench=bench):
                    return bench(args, tmp)

                results.append(flow(name=f"bench-{stage}")(run_stage)())
                print("\n".join(results[-1]), flush=True)  # kept even if a later stage fails
        finally:
            if started_server:
                from prefect.logging.handlers import APILogHandler

                APILogHandler().flush()  # the run's last log lines while the server answers
                server.stop()
    load_end = load_average()
    header = (
        f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores, shared with other jobs; "
        f"load average (1/5/15 min) {load_start} at the start, {load_end} at the end"
    )
    print()
    for tbl, note in results:
        print(tbl)
        print(note)
        print()
    print(header)
    if not args.no_append:
        cmd = "python benchmarks/dask.py " + " ".join(sys.argv[1:])
        body = "\n\n".join(f"{tbl}\n\n{note}" for tbl, note in results)
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(
                f"\n## Data stages on Dask: 1 vs 2 workers vs the local runner (issue 17), "
                f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\nCommand: `{cmd.strip()}`\n"
                f"Machine: {platform.machine()}, {header}.\n\n{body}\n"
            )
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
