"""One local Prefect API server shared by successive `longdoc` commands.

Why: without `PREFECT_API_URL`, every Prefect flow call starts a temporary server of its own
(database migrations, the whole API imported: seconds on 2 cores, see benchmarks/RESULTS.md,
"`longdoc` command overhead") and stops it at exit, so each `longdoc` command paid that before its
first unit of work, and a `kill -9` left the temporary server running with nobody to stop it.
Instead the first command starts one server as a detached daemon (`python -m
longdoc.flows.server`), records it in `$PREFECT_HOME/longdoc-server.json`, and later commands
find it there. The daemon stops itself after `IDLE_EXIT_S` without requests
(a running command pings it, so a long training run keeps it up), and `longdoc server stop`
stops it at once. Nothing here runs when `PREFECT_API_URL` names a server: that server is used.

This module must stay cheap to import: the CLI calls `start_api` before Prefect is imported, and
the server boots while the command imports the rest.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

IDLE_EXIT_S = 20 * 60  # the daemon exits after this long without a request
PING_EVERY_S = 60  # a running command pings its server this often
STATE_NAME = "longdoc-server.json"


class ServerError(RuntimeError):
    """The local server could not be started (the message says where its log is)."""


def prefect_home() -> Path:
    """Prefect's own home (its database lives there), resolved as Prefect resolves it."""
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()


def _state_path() -> Path:
    return prefect_home() / STATE_NAME


def _healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_server() -> dict | None:
    """The recorded server if it is alive and answers, else None."""
    try:
        info = json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return None
    if _alive(int(info.get("pid", 0))) and _healthy(info["url"]):
        return info
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch() -> tuple[subprocess.Popen, str, Path]:
    """Start the daemon on a free port; it answers once Prefect's API is imported and its
    database migrated (seconds: see `start_api`)."""
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = home / "longdoc-server.log"
    with open(log, "ab") as out:  # the daemon keeps its own descriptor
        proc = subprocess.Popen(
            # -P: the working directory is not put on sys.path, so a `longdoc/` folder there (an
            # older checkout, say) cannot stand in for the installed package.
            [sys.executable, "-P", "-m", "longdoc.flows.server", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # not in the command's process group: Ctrl-C stops the command
            env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
        )
    return proc, f"http://127.0.0.1:{port}/api", log


def _await(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    """Wait until the daemon answers, then record it for the commands that come after."""
    deadline = time.monotonic() + timeout
    while not _healthy(url):
        if proc.poll() is not None:
            raise ServerError(f"the local Prefect server exited ({proc.returncode}); see {log}")
        if time.monotonic() > deadline:
            proc.kill()
            raise ServerError(f"the local Prefect server did not start in {timeout:.0f} s")
        time.sleep(0.1)
    info = {"pid": proc.pid, "url": url, "started_at": time.time()}
    tmp = _state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, _state_path())


def start_api() -> Callable[[], str]:
    """Point this process at a Prefect API: `PREFECT_API_URL` if set, else the shared local
    server, started now if none answers. Returns `ready`, which waits until the API answers and
    returns its URL.

    A server started here boots (imports Prefect's API, migrates its database: about 20 s on a
    slow 2-core machine) while the caller goes on importing Prefect and its stage, which takes
    seconds of its own; `PREFECT_API_URL` is set at once, since the port is chosen before the
    daemon starts. Until `ready` returns, this process holds the lock that makes a command started
    meanwhile wait for this server instead of starting a second one on the same database."""
    if os.environ.get("PREFECT_API_URL"):
        url = os.environ["PREFECT_API_URL"]
        return lambda: url
    import fcntl

    info = running_server()
    if info is None:
        prefect_home().mkdir(parents=True, exist_ok=True)
        lock = open(prefect_home() / "longdoc-server.lock", "w")  # noqa: SIM115 (held by ready)
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = running_server()
        if info is None:
            proc, url, log = _launch()
            os.environ["PREFECT_API_URL"] = url
            timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120))

            @functools.cache
            def ready() -> str:
                try:
                    _await(proc, url, log, timeout)
                finally:
                    lock.close()
                _keep_alive(url)
                return url

            return ready
        lock.close()
    os.environ["PREFECT_API_URL"] = info["url"]
    _keep_alive(info["url"])
    return lambda: info["url"]


def ensure_api() -> str:
    """`start_api`, waiting for the API: its URL."""
    return start_api()()


def _keep_alive(url: str) -> None:
    """Ping the server while this command runs so its idle timer never fires mid-run."""

    def ping() -> None:
        while True:
            time.sleep(PING_EVERY_S)
            _healthy(url, timeout=5)

    threading.Thread(target=ping, name="longdoc-server-ping", daemon=True).start()


def stop() -> str:
    """Stop the shared server, if one runs; say what happened."""
    try:
        info = json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return "no local Prefect server recorded"
    pid = int(info.get("pid", 0))
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
        message = f"stopped the local Prefect server (pid {pid}, {info['url']})"
    else:
        message = "the recorded local Prefect server was not running"
    _state_path().unlink(missing_ok=True)
    return message


def status() -> str:
    info = running_server()
    if info is None:
        return "no local Prefect server running (the next longdoc command starts one)"
    idle = f"it stops after {IDLE_EXIT_S // 60} min without requests"
    return f"local Prefect server at {info['url']} (pid {info['pid']}); {idle}"


def _serve(port: int) -> None:
    """The daemon: Prefect's API app under uvicorn, stopped after IDLE_EXIT_S idle."""
    import uvicorn
    from prefect.server.api.server import create_app

    app = create_app(ephemeral=True, final=True)
    last = [time.monotonic()]

    async def touch(scope, receive, send):
        last[0] = time.monotonic()
        await app(scope, receive, send)

    server = uvicorn.Server(
        uvicorn.Config(touch, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    )

    def watch() -> None:
        while not server.should_exit:
            time.sleep(5)
            if time.monotonic() - last[0] > IDLE_EXIT_S:
                server.should_exit = True

    threading.Thread(target=watch, daemon=True).start()
    try:
        server.run()
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(_state_path().read_text()).get("pid") == os.getpid():
                _state_path().unlink()


if __name__ == "__main__":
    _serve(int(sys.argv[sys.argv.index("--port") + 1]))
