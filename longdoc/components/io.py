"""Small file helpers every stage shares: atomic writes, content hashes, manifests.

Why atomic: a stage killed mid-write must never leave a file that looks complete, so everything is
written to a temporary name in the same directory and renamed into place (rename is atomic on
POSIX within one filesystem).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


class InputError(ValueError):
    """Bad user input (missing path, empty corpus...): shown to the user as one line."""


@contextmanager
def atomic_path(dest: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed over `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f"{suffix}.tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600; give the file the usual 0644 & ~umask
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(dest: Path | str, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: Path | str, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: Path | str, obj: Any) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: Path | str) -> str:
    """Hash of a file, or of every file under a directory (relative names + contents)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of `packages` (plus Python), for manifests."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_manifest(out_dir: Path | str, **fields: Any) -> Path:
    """Write `out_dir/manifest.json` atomically, stamped with the time it was written."""
    dest = Path(out_dir) / "manifest.json"
    atomic_write_json(dest, {"written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields})
    return dest


def require_path(path: Path | str, what: str) -> Path:
    """Fail with one clear line when an input path is missing."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    return path
