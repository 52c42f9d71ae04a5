"""Peak memory of one case in a fresh interpreter, shared by the benchmarks (Linux /proc).

A case runs in ``python BENCH.py --_child '<json>'``: the parent reads the child's last JSON line.
In the child, :func:`reset_peak` sets the kernel's high-water mark (VmHWM) back to the current
RSS once the model and inputs exist, so what it measures afterwards is the step alone::

    base = reset_peak(); step(); above = status_bytes("VmHWM") - base
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Dict

__all__ = ["available_bytes", "reset_peak", "run_child", "status_bytes"]


def status_bytes(key: str) -> int:
    """``/proc/self/status`` field ``key`` (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (``5`` to /proc/self/clear_refs); returns that RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_bytes("VmRSS")


def available_bytes() -> int:
    """MemAvailable of the machine, in bytes."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def run_child(script: str, case: Dict, timeout: float) -> Dict:
    """``script --_child json(case)`` in a fresh interpreter -> its last JSON line, or ``{"error": why}``."""
    proc = subprocess.run([sys.executable, script, "--_child", json.dumps(case)],
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else proc.stderr.strip()[-300:]
        return {"error": f"child rc={proc.returncode}: {why}"}
    return json.loads(lines[-1])
