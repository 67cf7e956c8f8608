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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["INLINE", "Submit", "UnitRunner", "inline", "run_units"]

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
