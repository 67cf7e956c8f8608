"""Small file helpers every stage shares: atomic writes, content hashes, manifests, and the
ownership rule for output directories (`claim_output_dir`, `remove_own_dir`).

Why atomic: a stage killed mid-write must never leave a file that looks complete, so everything is
written to a temporary name in the same directory and renamed into place (rename is atomic on
POSIX within one filesystem).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
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


class NothingProduced(InputError):
    """A stage read its inputs but every one was rejected (the reasons are in its quarantine or
    errors file): the CLI exits with its own code (3) so scripts can tell it apart."""


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


# --- Output directories: longdoc replaces only what it wrote ----------------------------------

#: Written into every directory a longdoc stage creates or takes over (JSON naming the stage).
#: A directory carrying it is longdoc's: a rerun may clean or replace it wholesale.
OUTPUT_MARKER = ".longdoc"
#: Markers of earlier versions, still honoured (`longdoc sample` wrote its own).
LEGACY_MARKERS = (".longdoc-sample",)
#: Written by the pipeline (`longdoc.flows.freshness.mark_done`) into a finished stage's output.
_STAGE_RECORD = ".stage.json"


def _json_field(path: Path, key: str) -> Any:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def is_longdoc_dir(path: Path | str, stage: str, legacy: tuple[str, ...] = ()) -> bool:
    """Whether longdoc wrote the directory `path` (so replacing it destroys nothing of the user's).

    Yes when it carries `OUTPUT_MARKER` (any stage) or a legacy marker. Directories written before
    markers existed are recognised by evidence only longdoc leaves: a `manifest.json` or pipeline
    `.stage.json` whose "stage" is `stage` (the same stage, not merely any longdoc stage), or one
    of the stage's own `legacy` globs (its state file, say) matching inside it.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / OUTPUT_MARKER).is_file() or any((path / m).is_file() for m in LEGACY_MARKERS):
        return True
    for record in ("manifest.json", _STAGE_RECORD):
        if _json_field(path / record, "stage") == stage:
            return True
    return any(next(path.glob(pattern), None) is not None for pattern in legacy)


def foreign_dir_error(path: Path | str, action: str = "replace") -> InputError:
    """The one line a stage stops with when `path` holds data it did not write."""
    how = "use --force" if action == "replace" else "move it away"
    how += " or choose another --out"
    return InputError(f"{path} holds files longdoc did not write; refusing to {action} it ({how})")


def mark_output_dir(path: Path | str, stage: str) -> None:
    """Mark `path` as written by `longdoc <stage>` (retiring any legacy marker)."""
    path = Path(path)
    atomic_write_json(path / OUTPUT_MARKER, {"written_by": "longdoc", "stage": stage})
    for name in LEGACY_MARKERS:
        if (path / name).is_file():
            (path / name).unlink()


def claim_output_dir(
    path: Path | str,
    stage: str,
    *,
    force: bool = False,
    legacy: tuple[str, ...] = (),
    create: bool = True,
) -> Path:
    """Make sure `path` may be (re)written by `stage`; with `create`, make it and mark it ours.

    Why: `--out` pointed at a directory of the user's must never cost them their files. An absent
    or empty directory, or one longdoc wrote (`is_longdoc_dir`), is fine; anything else raises
    InputError naming the directory, unless `force` (the user's explicit `<stage>.force: true` /
    `--force`) says it may be replaced. Without `create` it only checks (for stages that publish
    a finished directory in its place at the end, see `publish_dir`).
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(f"{path} is a broken symbolic link; refusing to write through it")
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file, not a directory; choose another --out")
    if (
        path.is_dir()
        and not force
        and any(path.iterdir())
        and not is_longdoc_dir(path, stage, legacy)
    ):
        raise foreign_dir_error(path)
    if create:
        path.mkdir(parents=True, exist_ok=True)
        mark_output_dir(path, stage)
    return path


def check_own_dir(path: Path | str, stage: str, legacy: tuple[str, ...] = ()) -> None:
    """Raise unless `path` (a staging, backup or checkpoint directory beside an output) is absent,
    empty or longdoc's. `--force` does not extend to these: the user named `--out`, not them."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise foreign_dir_error(path, "delete")
    if any(path.iterdir()) and not is_longdoc_dir(path, stage, legacy):
        raise foreign_dir_error(path, "delete")


def remove_own_dir(path: Path | str, stage: str, legacy: tuple[str, ...] = ()) -> None:
    """Delete the directory `path` if it is absent, empty or longdoc's (`check_own_dir`)."""
    check_own_dir(path, stage, legacy)
    if Path(path).exists():
        shutil.rmtree(path)


def _sibling(dest: Path, suffix: str) -> Path:
    return Path(dest).with_name(Path(dest).name + suffix)


def check_publish_target(dest: Path, stage: str, *, force: bool = False) -> None:
    """Fail now, before hours of work, if publishing to `dest` would destroy data longdoc did not
    write: `dest` must be absent, empty or longdoc's (or `force`), and `<dest>.old` /
    `<dest>.partial`, which publishing deletes, absent, empty or longdoc's whatever `force` says.
    Changes nothing."""
    claim_output_dir(dest, stage, force=force, create=False)
    for suffix in (".old", ".partial"):
        check_own_dir(_sibling(dest, suffix), stage)


def publish_dir(staging: Path, dest: Path, *, stage: str = "", force: bool = False) -> None:
    """Replace `dest` with the fully written `staging` directory.

    Why: a checkpoint directory must never be half written under its final name; readers see
    either the old complete one or the new complete one. And only a directory longdoc wrote is
    replaced (`check_publish_target`; `force` lets a foreign `dest` go): the previous `dest` is
    moved to `<dest>.old` and deleted once the new one is in place, and a `<dest>.old` that is
    not longdoc's is never deleted.
    """
    dest = Path(dest)
    check_publish_target(dest, stage, force=force)
    old = _sibling(dest, ".old")
    remove_own_dir(old, stage)
    moved = False
    if dest.exists() or dest.is_symlink():
        dest.rename(old)
        moved = True
    Path(staging).rename(dest)
    if moved:  # what this run moved aside: checked above (or released by `force`)
        if old.is_symlink():
            old.unlink()  # the link only; whatever it pointed at stays
        else:
            shutil.rmtree(old)


def staging_dir(dest: Path, stage: str = "") -> Path:
    """A fresh, marked `<dest>.partial` to write into before `publish_dir`; a leftover one of a
    killed run is deleted only if longdoc wrote it."""
    staging = _sibling(dest, ".partial")
    remove_own_dir(staging, stage)
    staging.mkdir(parents=True)
    mark_output_dir(staging, stage or "longdoc")
    return staging
