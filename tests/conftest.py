"""Suite-wide fixtures."""

import os

import pytest

# Threads per pytest-xdist worker. `make test` runs 2 workers side by side on 2 cores; if each
# one's torch, and every command or rank it starts, also took a thread per core, N workers
# would run N times too many threads, and OpenMP's spinning waits made that several times
# slower (tests/components/test_model.py: 35 s with 2 x 2 threads on 2 cores, 3 s with 2 x 1).
# Set here, in each worker before it imports torch (xdist names the worker count before it loads
# this file; the controlling process, whose environment the workers inherit, sets nothing), and
# inherited by subprocesses. Tests of threading set their thread counts themselves; a value the
# user set wins, and a run without workers keeps torch's default.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _workers)))


def pytest_collection_modifyitems(items):
    """The tests marked `slow` (30 s or more on 2 cores) first, each group in its usual order.
    `make test` hands its workers one test at a time in this order (`--dist load
    --maxschedchunk 1`), so the long tests start early, side by side, and the short ones fill in
    around them, instead of a long one running alone at the end while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _stop_local_prefect_servers(tmp_path):
    """A `longdoc` command run by a test starts the shared local Prefect server under the
    test's own PREFECT_HOME (somewhere in tmp_path); stop it when the test ends instead of
    leaving it to its idle timeout."""
    yield
    from longdoc.flows import server

    for state in tmp_path.rglob(server.STATE_NAME):
        before = os.environ.get("PREFECT_HOME")
        os.environ["PREFECT_HOME"] = str(state.parent)
        try:
            server.stop()
        finally:
            if before is None:
                os.environ.pop("PREFECT_HOME", None)
            else:
                os.environ["PREFECT_HOME"] = before


@pytest.fixture
def fused_mask_builds(monkeypatch) -> list:
    """The pattern of every `kernels.dense.fused_mask` build during the test (each mask is still
    built): how often the fused SDPA call's mask is made, not reused."""
    from longdoc.kernels import dense

    built = []
    build = dense.fused_mask

    def counting(*args, **kw):
        built.append(args[0])
        return build(*args, **kw)

    monkeypatch.setattr(dense, "fused_mask", counting)
    return built
