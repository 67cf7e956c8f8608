"""What a benchmark ran on, for its table's header: the CPU's vector/matrix extensions (the
kernels' speed depends on them) and the load average (the machine is shared)."""

from __future__ import annotations

import os
from pathlib import Path

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> str:
    """Those of ``FLAGS`` the CPU has, from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return " ".join(f for f in FLAGS if f in have) or "none of " + " ".join(FLAGS)


def load_average() -> str:
    """The 1/5/15-minute load averages as ``a/b/c`` (above ~0.5 other jobs share the cores)."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())
