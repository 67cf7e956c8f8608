"""Coarse work units and who runs them: the seam between a data stage and its task runner.

A data stage (ingest, tokenize, score) keeps everything order-dependent in the calling process:
reading the input stream, admitting or rejecting items, deduplication, counters, side logs,
checkpoints and the manifest. What is heavy and order-free (scoring a chunk of documents,
sentence-splitting a group of archive members, encoding a corpus part) is cut into coarse units
and handed to a `UnitRunner`, whose `submit(fn, *args)` returns a `concurrent.futures.Future`.

- `INLINE` (the default) runs the unit at once in this process: a stage called as a plain
  Python function behaves exactly as it did before units existed.
- The flows layer builds runners backed by a Prefect task on a task runner (`runner.kind: dask`
  sends each unit to a Dask worker: `longdoc.flows.runner`); this package never imports Prefect
  or Dask.

`run_units` drives a stream of units through a runner with a bounded number in flight and hands
each result back twice: `finished(unit, result)` as soon as that unit is done (any order: a stage
may write the unit's part at once, so a killed run keeps every finished unit), and
`commit(unit)` strictly in unit order (where counters, side logs and checkpoints advance), so the
output is the same whatever the runner and however the units interleave.

`FinishedUnits` keeps what finished units computed on disk until the stage's checkpoint covers
them, for a stage whose parts span many units (an ingest shard): a rerun after `kill -9`
takes their results from there instead of computing them again.
"""

from __future__ import annotations

import re
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from longdoc.components.core.io import atomic_path

__all__ = ["INLINE", "FinishedUnits", "Submit", "UnitRunner", "inline", "run_units"]

U = TypeVar("U")

#: `submit(fn, *args)`: run `fn(*args)` somewhere; the future holds its result or exception.
Submit = Callable[..., Future]


def inline(fn: Callable[..., Any], *args: Any) -> Future:
    """Run `fn(*args)` now, in this process (exceptions propagate at once, as a plain call)."""
    done: Future = Future()
    done.set_result(fn(*args))
    return done


@dataclass(frozen=True)
class UnitRunner:
    """Where units run. `in_flight` bounds the units submitted and not yet committed (memory:
    each holds its inputs or results); runners with parallel slots set it to about twice the
    slots so a worker never waits for the calling process to hand it the next unit."""

    submit: Submit = inline
    in_flight: int = 1
    name: str = "local"
    #: units run in other processes that load what they need themselves (a Dask worker): the
    #: stage's process then need not load it too (score: the model)
    remote: bool = False


INLINE = UnitRunner()


_END = object()  # the reader's "no more units"


def run_units(
    runner: UnitRunner,
    units: Iterable[U],
    work: Callable[[U], tuple[Callable[..., Any], tuple] | None],
    finished: Callable[[U, Any], None],
    commit: Callable[[U], None],
) -> None:
    """Run `work(unit)` (a `(fn, args)` call, or None when the unit needs no compute) for every
    unit on `runner`; see the module docstring for `finished` and `commit`.

    With one unit in flight, each unit is read, run and committed before the next is read (the
    plain sequential stage). With more, `units` is read in a helper thread, one unit ahead and
    only while fewer than `runner.in_flight` units are uncommitted, so a slow read (a large
    archive member) never holds back the hand-over of units that finished meanwhile.
    Everything else (`work`, `finished`, `commit`) runs in the calling thread. A unit's
    exception is raised here, after every unit before it was committed."""
    queue: deque[list[Any]] = deque()  # [unit, future or None, finished?] in unit order
    if runner.in_flight <= 1:
        for unit in units:
            queue.append(_start(runner, work, unit))
            _drain(queue, finished, commit)
        return
    source = iter(units)
    with ThreadPoolExecutor(1, thread_name_prefix="unit-reader") as reader:
        ahead = reader.submit(next, source, _END)
        while True:
            room = len(queue) < runner.in_flight
            pending = [e[1] for e in queue if not e[2]]
            wait(pending + [ahead] if room else pending, return_when=FIRST_COMPLETED)
            _settle(queue, finished, commit)
            if not (room and ahead.done()):
                continue
            unit = ahead.result()  # a read error surfaces here
            if unit is _END:
                break
            ahead = reader.submit(next, source, _END)
            queue.append(_start(runner, work, unit))
        _drain(queue, finished, commit)


def _start(runner: UnitRunner, work: Callable[[Any], Any], unit: Any) -> list[Any]:
    call = work(unit)
    future = runner.submit(call[0], *call[1]) if call is not None else None
    return [unit, future, future is None]


def _drain(queue: deque[list[Any]], finished: Callable, commit: Callable) -> None:
    while queue:
        wait([e[1] for e in queue if not e[2]], return_when=FIRST_COMPLETED)
        _settle(queue, finished, commit)


def _settle(
    queue: deque[list[Any]], finished: Callable[[Any, Any], None], commit: Callable[[Any], None]
) -> None:
    """Hand over every done unit, then commit the done prefix. A failed unit is raised once
    every unit before it is committed."""
    for k, entry in enumerate(queue):
        unit, future, done = entry
        if done or not future.done():
            continue
        if future.exception() is not None:
            _drain(deque(list(queue)[:k]), finished, commit)
            raise future.exception()
        entry[2] = True
        finished(unit, future.result())
    while queue and queue[0][2]:
        commit(queue.popleft()[0])


class FinishedUnits:
    """Results of finished units, one Arrow file per unit in `directory`, named by the range of
    stream items `[first, last]` the unit covers, written atomically (a file there is whole).

    For a stage whose checkpoint moves by parts that span many units (ingest closes a corpus
    shard every few thousand documents): `save` a unit's results as soon as it finishes,
    `prune` what the checkpoint now covers, and after a kill `load` what lies past the
    checkpoint, so a rerun computes none of it again. The caller keys the rows by stream item
    (ingest: the reader item, with the document's `doc_id` to check it is the same document),
    so a rerun that cuts its units elsewhere still finds them."""

    _NAME = re.compile(r"unit-(\d+)-(\d+)\.arrow")

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _files(self) -> Iterator[tuple[int, Path]]:
        """(last item, path) of every unit file; removes the temp files of torn writes."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.iterdir()):
            found = self._NAME.fullmatch(path.name)
            if found:
                yield int(found.group(2)), path
            elif path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)

    def save(self, first: int, last: int, table: pa.Table) -> None:
        dest = self.directory / f"unit-{first:012d}-{last:012d}.arrow"
        with atomic_path(dest) as tmp, pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)

    def load(self, start: int) -> Iterator[pa.Table]:
        """The tables of units reaching item `start` or beyond (the others are removed)."""
        self.prune(start)
        for _, path in self._files():
            with pa.OSFile(str(path)) as source:  # read whole: the file may go meanwhile
                yield pa.ipc.open_file(source).read_all()

    def prune(self, before: int) -> None:
        """Remove the units that end before item `before` (the checkpoint covers them)."""
        for last, path in list(self._files()):
            if last < before:
                path.unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
