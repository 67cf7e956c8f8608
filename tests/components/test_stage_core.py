"""The resumable-stage core (`components.core.stage`): the output lock, a full disk, side-log
truncation and the progress line, exercised through ingest (the fastest stage) and directly."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from longdoc.components.core import stage as stage_mod
from longdoc.components.core.config import IngestParams
from longdoc.components.core.io import InputError, mark_output_dir
from longdoc.components.core.stage import (
    LOCK_FILE,
    OutputLocked,
    Progress,
    SideLog,
    disk_errors,
    output_lock,
)
from longdoc.components.data.ingest import STATE_FILE, ingest


def make_source(src: Path, n: int = 9) -> Path:
    src.mkdir()
    for i in range(n):
        text = f"Document number {i} is here. It has two sentences about topic {i}."
        (src / f"d{i:02d}.txt").write_text("" if i == 4 else text)  # one quarantined
    (src / "dup.txt").write_text((src / "d01.txt").read_text())  # one duplicate
    return src


def run(src: Path, out: Path) -> dict:
    return ingest(IngestParams(sources=[src], out=out, shard_max_docs=2), workers=0)


def files(out: Path) -> dict[str, bytes]:
    skip = {"manifest.json"}
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name not in skip}


def test_second_run_while_one_is_alive_stops_at_once(tmp_path: Path) -> None:
    src, out = make_source(tmp_path / "src"), tmp_path / "corpus"
    mark_output_dir(out, "ingest")  # as the first run left it
    with output_lock(out, "ingest"):  # a live holder (this process, another open file)
        with pytest.raises(OutputLocked) as err:
            run(src, out)
        assert (out / LOCK_FILE).exists()
    message = str(err.value)
    assert f"PID {os.getpid()}" in message and socket.gethostname() in message
    assert str(out) in message and "\n" not in message
    assert not list(out.glob("part-*")) and not (out / STATE_FILE).exists()
    assert not (out / LOCK_FILE).exists()  # released


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path, caplog) -> None:
    src, out = make_source(tmp_path / "src"), tmp_path / "corpus"
    mark_output_dir(out, "ingest")  # as the first run left it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"stage": "ingest", "pid": dead.pid, "host": socket.gethostname()}
    (out / LOCK_FILE).write_text(json.dumps(holder))
    with caplog.at_level(logging.WARNING, logger=stage_mod.__name__):
        manifest = run(src, out)
    assert manifest["counts"]["written"] == 8
    assert any(f"PID {dead.pid}" in r.getMessage() for r in caplog.records)
    assert not (out / LOCK_FILE).exists()


@contextmanager
def _disk_full_on(part: str):
    real = stage_mod.atomic_path

    @contextmanager
    def faulty(dest, suffix=""):
        with real(dest, suffix) as tmp:
            yield tmp
            if Path(dest).name == part:  # the part is written, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    stage_mod.atomic_path = faulty
    try:
        yield
    finally:
        stage_mod.atomic_path = real


def test_disk_full_stops_with_one_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    reference = run(src, tmp_path / "ref")
    out = tmp_path / "corpus"
    with _disk_full_on("part-00002.parquet"), pytest.raises(InputError) as err:
        run(src, out)
    message = str(err.value)
    assert "no space left on device" in message and str(out) in message and "\n" not in message
    state = json.loads((out / STATE_FILE).read_text())  # the last checkpoint stands
    assert [s["name"] for s in state["shards"]] == ["part-00000.parquet", "part-00001.parquet"]
    assert not (out / "part-00002.parquet").exists() and not list(out.glob(".*.tmp"))
    assert not (out / "manifest.json").exists() and not (out / LOCK_FILE).exists()

    resumed = run(src, out)
    assert resumed["timings"]["resumed_after_inputs"] == state["consumed"] > 0
    assert resumed["counts"] == reference["counts"] and resumed["shards"] == reference["shards"]
    assert files(out) == files(tmp_path / "ref")


def test_read_only_output_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="read-only file system"):
        with disk_errors("score", tmp_path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "x"))
    with pytest.raises(InputError, match="permission denied"):
        with disk_errors("score", tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))
    with pytest.raises(PermissionError):  # not our output: not ours to explain
        with disk_errors("score", tmp_path / "out"):
            raise PermissionError(errno.EACCES, "Permission denied", "/etc/elsewhere")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory(tmp_path: Path) -> None:
    src, out = make_source(tmp_path / "src"), tmp_path / "corpus"
    run(src, out)
    out.chmod(0o555)
    try:
        with pytest.raises(InputError, match=r"cannot write .*corpus"):
            ingest(IngestParams(sources=[src], out=out, shard_max_docs=3), workers=0)
    finally:
        out.chmod(0o755)


def test_side_log_is_truncated_back_to_the_checkpoint(tmp_path: Path) -> None:
    log_ = SideLog(tmp_path / "errors.partial.jsonl").open()
    for i in range(6):
        log_.write(i, source="s", member=f"m{i}", reason="bad")
    log_.close()
    with open(log_.path, "a") as fh:
        fh.write('{"_i": 6, "source": "s", "mem')  # a torn last line from a kill
    assert log_.truncate(4) == 4
    assert [r["_i"] for r in log_.records()] == [0, 1, 2, 3]
    assert log_.finalize(tmp_path / "errors.jsonl") == 4
    first = json.loads((tmp_path / "errors.jsonl").read_text().splitlines()[0])
    assert first == {"source": "s", "member": "m0", "reason": "bad"}
    log_.discard()
    assert not log_.path.exists()


def test_ingest_resume_truncates_side_logs(tmp_path: Path) -> None:
    """Records past the checkpoint (written before a kill) are dropped on resume."""
    src, out = make_source(tmp_path / "src"), tmp_path / "corpus"
    reference = run(src, tmp_path / "ref")
    with _disk_full_on("part-00001.parquet"), pytest.raises(InputError):
        run(src, out)
    consumed = json.loads((out / STATE_FILE).read_text())["consumed"]
    with open(out / "quarantine.partial.jsonl", "a") as fh:  # a record past the checkpoint
        fh.write(json.dumps({"_i": consumed + 50, "source": "x", "member": "y", "reason": "z"}))
        fh.write("\n")
    resumed = run(src, out)
    assert resumed["counts"] == reference["counts"]
    assert (out / "quarantine.jsonl").read_text() == (tmp_path / "ref/quarantine.jsonl").read_text()


def test_progress_line_has_rate_and_eta() -> None:
    p = Progress("tokenize", "docs", total=100, rated=("tokens",))
    p.skip(10)  # done by an earlier run: counts toward the ETA, not the rate
    p.add(40, tokens=4000)
    line = p.line(p.t0 + 10.0)
    assert line == "tokenize: 50/100 docs; 4.0 docs/s, 400 tokens/s, ETA 0m12s"
    stream = Progress("score", "items")
    stream.add(3, errors=1)
    assert re.fullmatch(
        r"score: 3 items, 1 errors; 1\.5 items/s, ETA \?", stream.line(stream.t0 + 2)
    )


def test_stream_eta_follows_the_input_bytes_read(tmp_path: Path) -> None:
    from longdoc.components.data.readers import ReadPosition, input_bytes, iter_documents

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):  # four files of 1,000 bytes: after the second, half the input is read
        (src / f"d{i}.txt").write_text(f"document {i} " + "x" * (1000 - 11))
    assert input_bytes([src]) == 4000
    position = ReadPosition(input_bytes([src]))
    stream = Progress("ingest", "inputs")
    stream.input = position
    docs = iter_documents(src, position=position)
    next(docs), next(docs)  # each file is read whole before its document comes out
    stream.add(2)
    assert position.bytes_read == 2000
    line = stream.line(stream.t0 + 10.0)  # half the bytes in 10 s: 10 s to go
    assert line == "ingest: 2 inputs; 0.2 inputs/s, ETA 0m10s (50% of input read)"
    list(docs)
    assert position.bytes_read == 4000
    assert Progress("score", "items").line().endswith("ETA ?")  # no input size: unknown
