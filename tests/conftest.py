"""Suite-wide fixtures."""

import os

import pytest


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
