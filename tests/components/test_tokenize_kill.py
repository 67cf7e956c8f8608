"""Tokenize survives a real `kill -9`: the rerun gives exactly the uninterrupted run's shards.

The stage runs in a separate process and is killed with SIGKILL while the second docs shard is
half written (temp file on disk, the checkpoint naming the first shard and the tokenizer). The
only instrumentation: at that point the child touches a marker file and waits, so the kill
lands exactly there on any machine, however loaded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from longdoc.components.core.config import IngestParams, TokenizeParams
from longdoc.components.core.io import sha256_file
from longdoc.components.data.ingest import ingest
from longdoc.components.data.tokenize import STATE_FILE, tokenize

REPO = Path(__file__).resolve().parents[2]
VOCAB, SEQ_LEN = 320, 64

CHILD = """
import json, sys, time
from pathlib import Path
from longdoc.components.data import tokenize as m
from longdoc.components.core.config import TokenizeParams

out = Path(sys.argv[2])
real_log = m._maybe_log

def log_then_wait(progress, force=False):
    real_log(progress, force)
    try:
        parts = json.loads((out / m.STATE_FILE).read_text()).get("parts", {})
    except (OSError, ValueError):
        parts = {}
    if parts and not force:  # shard 0 is checkpointed, shard 1 half written: wait to be killed
        Path(sys.argv[5]).touch()
        time.sleep(120)

m._maybe_log = log_then_wait
m.tokenize(TokenizeParams(corpus=sys.argv[1], out=out, vocab_size=int(sys.argv[3]),
                          seq_len=int(sys.argv[4])))
"""


def make_corpus(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    rng = random.Random(5)
    words = "river stone house light quick data model long document token caf\u00e9 the of".split()
    for i in range(40):
        paras = [
            " ".join(
                " ".join(rng.choice(words) for _ in range(rng.randint(4, 14))).capitalize() + "."
                for _ in range(rng.randint(1, 6))
            )
            for _ in range(rng.randint(1, 8))
        ]
        (src / f"d{i:02d}.txt").write_text("\n\n".join(paras) + f" Doc {i}.")
    ingest(IngestParams(sources=[src], out=root / "corpus", shard_max_docs=7), workers=0)
    return root / "corpus"


def read_docs(out: Path) -> pa.Table:
    parts = sorted((out / "docs").glob("part-*.arrow"))
    return pa.concat_tables(ipc.open_file(pa.memory_map(str(p), "r")).read_all() for p in parts)


def test_kill_9_mid_run_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    params = {"corpus": corpus, "vocab_size": VOCAB, "seq_len": SEQ_LEN}
    reference = tokenize(TokenizeParams(out=tmp_path / "ref", **params))
    assert len(reference["files"]["docs"]) >= 5

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    marker = tmp_path / "at-kill-point"
    args = [str(corpus), str(out), str(VOCAB), str(SEQ_LEN), str(marker)]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], cwd=REPO, env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    try:
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run never reached its second docs shard"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()

    state = json.loads((out / STATE_FILE).read_text())
    done = state["parts"]
    assert done and list((out / "docs").glob(".part-*.tmp"))  # a torn shard was left behind
    stamps = {name: (out / "docs" / name).stat().st_mtime_ns for name in done}
    tok_json = out / "tokenizer" / "tokenizer.json"
    tok_stamp = tok_json.stat().st_mtime_ns

    resumed = tokenize(TokenizeParams(out=out, **params))

    # The tokenizer and the finished docs shards were reused, not made again.
    assert tok_json.stat().st_mtime_ns == tok_stamp
    for name, sha in done.items():
        assert (out / "docs" / name).stat().st_mtime_ns == stamps[name]
        assert sha256_file(out / "docs" / name) == sha
    # Exactly the uninterrupted run's output.
    assert resumed["tokenizer_sha256"] == reference["tokenizer_sha256"]
    assert resumed["counts"] == reference["counts"]
    assert resumed["length_distribution"] == reference["length_distribution"]
    assert resumed["files"] == reference["files"]  # docs and packed shards, by sha256
    docs, ref_docs = read_docs(out), read_docs(tmp_path / "ref")
    assert docs.equals(ref_docs)
    ids = docs.column("doc_id").to_pylist()
    assert len(ids) == len(set(ids)) == reference["counts"]["documents_total"]
    for split in ("train", "validation"):
        packed = out / "packed" / f"{split}.arrow"
        assert packed.read_bytes() == (tmp_path / "ref" / "packed" / f"{split}.arrow").read_bytes()
    assert not list(out.rglob(".*.tmp")) and not (out / STATE_FILE).exists()
