"""Peak memory of one call, as the benchmarks measure it: RSS sees torch's and TVM's allocations
alike (run the process with MALLOC_MMAP_THRESHOLD_ low so freed tensors leave RSS)."""

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
