"""Ingest survives a real `kill -9`: the rerun gives exactly the uninterrupted run's corpus.

The run is a separate process, killed with SIGKILL while its second shard is half written (its
temp file on disk, the checkpoint naming the first shard). The only test instrumentation: at
that point the child touches a marker file and waits, so the kill lands exactly there on any
machine, however loaded, instead of racing the run to its end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from longdoc.components.core.config import IngestParams
from longdoc.components.core.io import sha256_file
from longdoc.components.data.ingest import STATE_FILE, ingest, read_corpus

REPO = Path(__file__).resolve().parents[2]
SHARD_DOCS = 8

CHILD = """
import sys, time
from pathlib import Path
from longdoc.components.data import ingest as m
from longdoc.components.core.config import IngestParams

real_close = m._ShardWriter._close_shard

def close_after_kill_point(self, last_index):
    if self.index == 1:  # shard 0 is checkpointed, shard 1 half written: wait to be killed
        Path(sys.argv[4]).touch()
        time.sleep(120)
    real_close(self, last_index)

m._ShardWriter._close_shard = close_after_kill_point
m.ingest(IngestParams(sources=[sys.argv[1]], out=sys.argv[2], shard_max_docs=int(sys.argv[3])),
         workers=0)
"""


def make_source(src: Path) -> None:
    """~60 documents with exact duplicates and empty files spread over the whole run, so the
    partial quarantine/duplicate records on both sides of the checkpoint are exercised."""
    src.mkdir()
    words = "alpha beta gamma delta river stone light data model token".split()
    prev = ""
    for i in range(64):
        if i % 9 == 4:
            text = "   \n"  # quarantined: empty
        elif i % 11 == 7:
            text = prev  # exact duplicate of the previous document
        else:
            sents = [
                " ".join(words[(i * 7 + k * j) % len(words)] for j in range(12)).capitalize()
                + f" number {i}-{k}."
                for k in range(40)
            ]
            text = prev = " ".join(sents[:20]) + "\n\n" + " ".join(sents[20:])
        (src / f"doc-{i:03d}.txt").write_text(text)


def corpus_rows(out: Path) -> list[dict]:
    return list(read_corpus(out))


def test_kill_9_mid_run_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_source(src)
    reference = ingest(
        IngestParams(sources=[src], out=tmp_path / "ref", shard_max_docs=SHARD_DOCS), workers=0
    )
    assert len(reference["shards"]) >= 5

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    marker = tmp_path / "at-kill-point"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(src), str(out), str(SHARD_DOCS), str(marker)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run never reached its second shard"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()  # the dir does not look finished

    state = json.loads((out / STATE_FILE).read_text())  # the checkpoint at the kill
    done = {s["name"]: s["sha256"] for s in state["shards"]}
    assert done and list(out.glob(".part-*.tmp"))  # a torn shard was left behind
    stamps = {name: (out / name).stat().st_mtime_ns for name in done}

    resumed = ingest(IngestParams(sources=[src], out=out, shard_max_docs=SHARD_DOCS), workers=0)

    # Completed shards were kept as they were, not written again.
    for name, sha in done.items():
        assert (out / name).stat().st_mtime_ns == stamps[name]
        assert sha256_file(out / name) == sha
    assert resumed["timings"]["resumed_after_inputs"] == state["consumed"] > 0
    # The same corpus as the uninterrupted run: same documents, order, text, sentences.
    assert resumed["counts"] == reference["counts"]
    assert resumed["per_source"] == reference["per_source"]
    assert [s["rows"] for s in resumed["shards"]] == [s["rows"] for s in reference["shards"]]
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in reference["shards"]]
    rows, ref_rows = corpus_rows(out), corpus_rows(tmp_path / "ref")
    assert rows == ref_rows
    ids = [r["doc_id"] for r in rows]
    assert len(ids) == len(set(ids))  # no duplicates
    for name in ("quarantine.jsonl", "duplicates.jsonl"):
        assert (out / name).read_text() == (tmp_path / "ref" / name).read_text()
    assert reference["counts"]["quarantined"] > 0 and reference["counts"]["duplicates"] > 0
    # Nothing left over from the killed run.
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.partial.jsonl"))
    assert not (out / STATE_FILE).exists()
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [
        s["name"] for s in resumed["shards"]
    ]
    assert (
        sum(pq.ParquetFile(out / s["name"]).metadata.num_rows for s in resumed["shards"])
        == (resumed["counts"]["written"])
    )
