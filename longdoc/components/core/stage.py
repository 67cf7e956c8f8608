"""The resumable-stage core: what ingest, tokenize and score share when they write parts.

A stage that writes its output in parts (corpus shards, docs shards, prediction parts) plugs a
small per-item or per-chunk function into `Stage`, which owns everything about surviving a crash:

- the fingerprint (`fingerprint`): inputs' content hashes, the parameters that shape the output
  and the code versions that matter; a state whose fingerprint differs is never resumed;
- the state file (`Stage.load_state` / `Stage.checkpoint`), written atomically, and the rule "a
  part exists before the state names it": `Stage.part` renames a finished part into place, and
  only then may `Stage.checkpoint` record it;
- indexed side logs (`SideLog`: quarantine, duplicates, errors): every record carries the stream
  index `_i` of its item, so a resumed run truncates them back to the state's checkpoint;
- progress (`Progress`): one log line with counts, rate and ETA every few seconds;
- the manifest, written last (`Stage.finish`), after its counts are checked to reconcile;
- a lock on the output directory (`output_lock`): a second run into the same directory while one
  is alive stops at once, naming the holder's PID and host; a lock left by a dead process is taken
  over with a log line (the lock is an `flock`, which the kernel drops when its holder dies);
- a full disk (`ENOSPC`) or a read-only output stops the stage with one clear `InputError`; the
  state on disk is the last checkpoint, so the rerun resumes from it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from longdoc.components.core.io import (
    InputError,
    atomic_path,
    atomic_write_json,
    sha256_bytes,
    write_manifest,
)

__all__ = [
    "LOCK_FILE",
    "OutputLocked",
    "Progress",
    "SideLog",
    "Stage",
    "disk_errors",
    "fingerprint",
    "output_lock",
    "reconcile",
]

log = logging.getLogger(__name__)

#: The lock file a running stage holds in its output directory (removed when it ends).
LOCK_FILE = ".longdoc.lock"


class OutputLocked(InputError):
    """Another live run is writing into the same output directory."""


def fingerprint(**parts: Any) -> str:
    """sha256 of `parts` as canonical JSON (inputs' hashes, parameters, code versions...)."""
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())


# --------------------------------------------------------------------------------------------
# The output lock
# --------------------------------------------------------------------------------------------


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _open_locked(path: Path, stage: str) -> int:
    """An fd of `path` holding its exclusive flock, or OutputLocked naming the live holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
            raise OutputLocked(
                f"{path.parent} is being written by another {holder.get('stage', stage)} run "
                f"({who}); wait for it to end or stop it, or choose another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we opened it: lock the new one


@contextmanager
def output_lock(out: Path | str, stage: str) -> Iterator[None]:
    """Hold `out/LOCK_FILE` for the duration; see the module docstring."""
    path = Path(out) / LOCK_FILE
    fd = _open_locked(path, stage)
    try:
        old = _read_holder(fd)
        if old:
            log.warning(
                "%s: taking over the lock left by %s run PID %s on host %s (no longer running)",
                path.parent,
                old.get("stage", "a"),
                old.get("pid", "?"),
                old.get("host", "?"),
            )
        me = {"stage": stage, "pid": os.getpid(), "host": socket.gethostname()}
        me["since"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # a read-only output: the kernel drops the flock with the fd anyway
            pass
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Disk errors
# --------------------------------------------------------------------------------------------

_DISK_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}
_DISK_TEXT = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
}


def _disk_reason(exc: OSError, out: Path) -> str | None:
    """Why writing `out` failed, when it is the disk's fault (not a bug, not the input's)."""
    code = exc.errno
    if code is None:  # pyarrow's IO errors carry the reason in the text only
        code = next((c for text, c in _DISK_TEXT.items() if text in str(exc)), None)
    if code in _DISK_ERRORS:
        return _DISK_ERRORS[code]
    if code in (errno.EACCES, errno.EPERM) and exc.filename:
        target = Path(os.fsdecode(exc.filename)).resolve()
        if target.is_relative_to(out.resolve()):
            return "permission denied (read-only output?)"
    return None


@contextmanager
def disk_errors(stage: str, out: Path | str) -> Iterator[None]:
    """Turn a full disk or a read-only output under `out` into one clear InputError."""
    try:
        yield
    except OSError as exc:
        reason = _disk_reason(exc, Path(out))
        if reason is None:
            raise
        raise InputError(
            f"{stage}: cannot write {out}: {reason}; free space or make it writable and rerun "
            "the same command: it resumes from the last finished part"
        ) from exc


# --------------------------------------------------------------------------------------------
# Side logs
# --------------------------------------------------------------------------------------------


class SideLog:
    """An append-only JSONL log of per-item records (`<name>.partial.jsonl` while running),
    each carrying the stream index `_i` of its item, so a resumed run keeps exactly the records
    of the items its checkpoint covers (`truncate`). `finalize` writes the published file
    without the indexes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def records(self, before: int | None = None) -> Iterator[dict[str, Any]]:
        """The records (with `_i`) of items before `before`; stops at a torn last line."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    return  # a torn last line from a kill
                if before is None or rec["_i"] < before:
                    yield rec

    def truncate(self, consumed: int) -> int:
        """Keep the records of items before `consumed` (a kill can leave later ones, or a torn
        last line); returns how many were kept."""
        n = 0
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as dst:
            for rec in self.records(consumed):
                dst.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        return n

    def open(self) -> SideLog:
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        return self

    def write(self, index: int, **fields: Any) -> None:
        self._fh.write(json.dumps({"_i": index, **fields}, ensure_ascii=False) + "\n")

    def sync(self) -> None:
        """Make the records durable (before a checkpoint names the items they belong to)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finalize(self, dest: Path) -> int:
        """Write `dest` (the records without `_i`, streamed); the partial log stays until the
        stage has finished (`Stage.finish`), so a kill before then loses no record."""
        self.close()
        n = 0
        with atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8") as dst:
            for rec in self.records():
                rec.pop("_i")
                dst.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        return n

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Counts of a running stage, logged every `every_s` seconds as one line with the rate and
    the ETA. With no total count (a stream of archives: documents are counted as they come),
    the ETA follows the share of the input bytes read, when `input` says how many
    (`input.bytes_read` of `input.total`, e.g. a readers.ReadPosition); else it is `?`."""

    def __init__(
        self,
        stage: str,
        unit: str,
        total: int | None = None,
        every_s: float = 5.0,
        rated: tuple[str, ...] = (),
    ) -> None:
        self.stage, self.unit, self.total, self.every_s = stage, unit, total, every_s
        self.rated = rated  # extra counters shown with their own rate (tokens/s, chars/s)
        self.done = 0  # units done before this run (resumed) count toward the ETA, not the rate
        self.base = 0
        self.extra: dict[str, int] = {}
        self.t0 = self.t_log = time.monotonic()
        self.input: Any = None  # bytes_read / total of the inputs, when the count is unknown

    def add(self, n: int = 1, **extra: int) -> None:
        self.done += n
        for k, v in extra.items():
            self.extra[k] = self.extra.get(k, 0) + v

    def skip(self, n: int) -> None:
        """`n` units done by an earlier run (resume)."""
        self.done += n
        self.base += n

    def line(self, now: float | None = None) -> str:
        dt = max((now or time.monotonic()) - self.t0, 1e-9)
        rate = (self.done - self.base) / dt
        of = f"/{self.total}" if self.total is not None else ""
        eta, read_share = None, ""
        if self.total is not None:
            eta = (self.total - self.done) / rate if rate > 0 else None
        elif self.input is not None and self.input.total > 0:
            read = self.input.bytes_read  # every run reads its input from the start
            eta = dt * (self.input.total - read) / read if read > 0 else None
            read_share = f" ({100 * read / self.input.total:.0f}% of input read)"
        counts = ", ".join(
            [f"{self.done}{of} {self.unit}"]
            + [f"{v} {k}" for k, v in self.extra.items() if k not in self.rated]
        )
        rates = [f"{rate:.1f} {self.unit}/s"]
        rates += [f"{self.extra.get(k, 0) / dt:.0f} {k}/s" for k in self.rated]
        eta_s = _duration(eta) if eta is not None else "?"
        return f"{self.stage}: {counts}; {', '.join(rates)}, ETA {eta_s}{read_share}"

    def maybe_log(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self.t_log < self.every_s:
            return False
        self.t_log = now
        log.info("%s", self.line(now))
        return True


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def reconcile(stage: str, counts: dict[str, int], total: str, *parts: str) -> None:
    """Check `counts[total] == sum(counts[p] for p in parts)` (a failure is a bug, not input)."""
    if counts[total] != sum(counts[p] for p in parts):
        raise RuntimeError(f"{stage} counts do not reconcile: {counts}")


class Stage:
    """One run of a resumable stage into `out`; use as a context manager (lock + disk errors).

    The stage's own state (parts done, items consumed, counters) is a JSON dict the stage keeps;
    `Stage` stamps it with the fingerprint, writes it atomically after syncing the side logs, and
    on the next run hands it back only when the fingerprint matches and `valid(state)` agrees.
    """

    def __init__(self, name: str, out: Path, state_file: str, fp: str = "") -> None:
        self.name, self.out, self.fingerprint = name, Path(out), fp
        self.state_path = self.out / state_file
        self.side_logs: list[SideLog] = []
        self._ctx: list[Any] = []

    def __enter__(self) -> Stage:
        errors, lock = disk_errors(self.name, self.out), output_lock(self.out, self.name)
        errors.__enter__()
        try:
            lock.__enter__()
        except BaseException as exc:
            if not errors.__exit__(type(exc), exc, exc.__traceback__):
                raise
        self._ctx = [lock, errors]
        return self

    def __exit__(self, *exc: Any) -> bool:
        for log_ in self.side_logs:
            log_.close()
        lock, errors = self._ctx
        lock.__exit__(*exc)
        return bool(errors.__exit__(*exc))

    def side_log(self, filename: str) -> SideLog:
        sl = SideLog(self.out / filename)
        self.side_logs.append(sl)
        return sl

    def load_state(self, valid: Any = None) -> dict[str, Any] | None:
        """The checkpoint of an interrupted run with the same fingerprint, if intact."""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return None
        return state if valid is None or valid(state) else None

    def new_state(self, **fields: Any) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, **fields}

    @contextmanager
    def part(self, dest: Path) -> Iterator[Path]:
        """A temp path renamed to `dest` when the body succeeds: the part exists, complete,
        before any checkpoint may name it."""
        with atomic_path(dest) as tmp:
            yield tmp

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Sync the side logs, then record `state` (atomically)."""
        for sl in self.side_logs:
            sl.sync()
        atomic_write_json(self.state_path, state)

    def clear_state(self) -> None:
        self.state_path.unlink(missing_ok=True)

    def abandon(self) -> None:
        """Nothing to resume (the run produced nothing): drop the state and partial logs."""
        self.clear_state()
        for sl in self.side_logs:
            sl.discard()

    def finish(
        self, manifest: dict[str, Any], *, final_state: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write the manifest last; then the state goes (or becomes `final_state`, a finished
        marker a rerun can recognise), and only then the partial side logs."""
        write_manifest(self.out, **manifest)
        if final_state is None:
            self.clear_state()
        else:
            atomic_write_json(self.state_path, final_state)
        for sl in self.side_logs:
            sl.discard()
        return json.loads((self.out / "manifest.json").read_text())
