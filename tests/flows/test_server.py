"""The shared local Prefect server's start (`flows.server.start_api`) with a stand-in daemon: a
tiny HTTP server that answers `/api/health` after a delay, or one that dies, instead of
Prefect's API, which takes seconds to boot."""

import fcntl
import json
import subprocess
import sys
import time

import pytest

from longdoc.flows import server

STAND_IN = """
import http.server, sys, time
time.sleep(float(sys.argv[2]))
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    started = []
    yield tmp_path, started
    for proc in started:
        proc.kill()
        proc.wait()


def _stand_in(monkeypatch, started: list, code: str, boot_s: float) -> None:
    def launch():
        port = server._free_port()
        log = server.prefect_home() / "longdoc-server.log"
        proc = subprocess.Popen([sys.executable, "-c", code, str(port), str(boot_s)])
        started.append(proc)
        return proc, f"http://127.0.0.1:{port}/api", log

    monkeypatch.setattr(server, "_launch", launch)


def _lock_is_free(home) -> bool:
    with open(home / "longdoc-server.lock", "w") as other:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(other, fcntl.LOCK_UN)
        return True


def test_the_caller_goes_on_while_the_server_boots_and_ready_waits_for_it(home, monkeypatch):
    tmp_path, started = home
    _stand_in(monkeypatch, started, STAND_IN, boot_s=1.5)
    t0 = time.monotonic()
    ready = server.start_api()
    assert time.monotonic() - t0 < 1.0  # returned before the server answers
    url = server.os.environ["PREFECT_API_URL"]  # set at once: Prefect may be imported now
    assert not server._healthy(url)
    assert not (tmp_path / server.STATE_NAME).exists()  # recorded only once it answers
    assert not _lock_is_free(tmp_path)  # a command started meanwhile waits for this server

    assert ready() == url
    assert server._healthy(url)
    state = json.loads((tmp_path / server.STATE_NAME).read_text())
    assert state["url"] == url and state["pid"] == started[0].pid
    assert _lock_is_free(tmp_path)
    assert ready() == url  # once only

    # the next command finds it: no second daemon, and nothing to wait for
    monkeypatch.delenv("PREFECT_API_URL")
    assert server.start_api()() == url
    assert len(started) == 1


def test_a_server_that_dies_while_booting_is_one_error_and_frees_the_lock(home, monkeypatch):
    tmp_path, started = home
    _stand_in(monkeypatch, started, "import sys; sys.exit(7)", boot_s=0)
    ready = server.start_api()
    with pytest.raises(server.ServerError, match=r"exited \(7\); see .*longdoc-server.log"):
        ready()
    assert _lock_is_free(tmp_path)
    assert not (tmp_path / server.STATE_NAME).exists()


def test_a_named_api_is_used_as_it_is(home, monkeypatch):
    tmp_path, started = home
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    assert server.start_api()() == "http://prefect.example:4200/api"
    assert not started and not (tmp_path / "longdoc-server.lock").exists()
