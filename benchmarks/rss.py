"""Peak memory as the benchmarks measure it. `peak_extra_mb`: of one call in this process (RSS
sees torch's and TVM's allocations alike; run with MALLOC_MMAP_THRESHOLD_ low so freed tensors
leave RSS). `command_peak` / `python benchmarks/rss.py CMD ...`: of a whole command, the CLI
process and everything it starts, as a user sees it."""

from __future__ import annotations

import gc


def status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mb(fn) -> float:
    """Peak RSS growth while ``fn`` runs, in MiB."""
    gc.collect()
    base = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    return max(0, status_kb("VmHWM") - base) / 1024


def command_peak(cmd: list[str], *, env: dict | None = None, interval_s: float = 0.05):
    """Run `cmd` to its end and measure memory as its user sees it: the peak of the summed RSS
    of the process and every descendant (sampled every `interval_s`), and the largest single
    process's own high-water mark (exact, from the kernel: catches spikes between samples).

    Returns (exit code, {"tree_peak_mib", "largest_process_peak_mib", "server_mib", "wall_s"}).
    The shared local Prefect server (`longdoc.flows.server`), which the first command in a fresh
    PREFECT_HOME starts as its child and which then outlives it for later commands, is counted
    in `tree_peak_mib` when this command started it; `server_mib` says how much of it that was.
    """
    import os
    import subprocess
    import threading
    import time

    import psutil

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env)
    root = psutil.Process(proc.pid)
    peak = {"tree": 0, "hwm": 0, "server": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            total = server = 0
            try:
                members = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                members = []
            for p in members:
                try:
                    rss = p.memory_info().rss
                    total += rss
                    if "longdoc.flows.server" in " ".join(p.cmdline()):
                        server += rss
                    with open(f"/proc/{p.pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                peak["hwm"] = max(peak["hwm"], int(line.split()[1]) * 1024)
                except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                    continue
            peak["tree"] = max(peak["tree"], total)
            peak["server"] = max(peak["server"], server)
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    # ru_maxrss of the waited child: its own exact peak (KiB on Linux)
    peak["hwm"] = max(peak["hwm"], usage.ru_maxrss * 1024)
    mib = 1024 * 1024
    return proc.returncode, {
        "tree_peak_mib": round(max(peak["tree"], peak["hwm"]) / mib, 1),
        "largest_process_peak_mib": round(peak["hwm"] / mib, 1),
        "server_mib": round(peak["server"] / mib, 1),
        "wall_s": round(time.monotonic() - t0, 2),
    }


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python benchmarks/rss.py COMMAND [ARGS...]: peak RSS of the whole command")
        sys.exit(2)
    rc, figures = command_peak(sys.argv[1:])
    print(f"rss: {figures} (exit {rc})", file=sys.stderr)
    sys.exit(rc)
