"""CPU memory of this process for the benchmarks: the current RSS, and a peak RSS that can be reset, so a figure is
the measured steps' own. (``ru_maxrss`` cannot serve: it never goes down, and a child process starts with its
parent's, so a benchmark launched from a large process would read no extra memory at all.)"""
from __future__ import annotations

import resource


def _status_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (``/proc/self/status``); None without /proc."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    """Set this process's peak RSS (VmHWM) to its current RSS (Linux: '5' to /proc/self/clear_refs), so the peak
    read after the steps is theirs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """The peak RSS since the last reset (VmHWM), in MiB; ru_maxrss without /proc."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    return _status_mb("VmRSS") or peak_rss_mb()
