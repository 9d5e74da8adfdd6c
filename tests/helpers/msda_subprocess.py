"""Run kernel checks in child processes, so that a crash is one failing check, not a crash of pytest.

A check script (``msda_triton_interpret.py``, ``msda_cuda_emu_checks.py``) registers its checks with
:func:`check` and ends with ``main()``. Run with check names as arguments it prints, flushed, one
``MSDA_START <name>`` line before and one ``MSDA_RESULT <json>`` line after each check. :func:`run_checks`
starts the script, and when it dies (segfault, abort, out-of-memory kill) reports the check that was running
as failed with its exit status and the end of its stderr, then starts a fresh process for the checks that
had not run yet. There is no wall-clock limit here (a slow machine must not fail correct kernels); a hang is
caught by pytest-timeout.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

START, RESULT = "MSDA_START ", "MSDA_RESULT "
CHECKS: dict = {}


def check(name):
    """Register ``fn`` as the check ``name`` (in a check script); it passes unless it raises."""
    def wrap(fn):
        CHECKS[name] = fn
        return fn
    return wrap


def main(argv=None):
    """Run the checks named in ``argv`` (default: all), printing the protocol lines."""
    names = (sys.argv[1:] if argv is None else argv) or list(CHECKS)
    for name in names:
        print(START + name, flush=True)
        start = time.time()
        try:
            detail = CHECKS[name]() or ""
            result = {"name": name, "ok": True, "detail": f"{detail} ({time.time() - start:.1f}s)"}
        except Exception:  # noqa: BLE001 - reported to the pytest side
            result = {"name": name, "ok": False, "detail": traceback.format_exc()}
        print(RESULT + json.dumps(result), flush=True)


def check_names(script: Path) -> list[str]:
    """The names registered in ``script`` (read from its source: no import, usable at collection time)."""
    return re.findall(r'^@check\("([^"]+)"\)', Path(script).read_text(), flags=re.M)


def _exit_status(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def run_checks(script: Path, names: list[str], env: dict | None = None) -> dict[str, dict]:
    """``{name: {"ok": bool, "detail": str}}`` for every name, running ``script`` in as many processes as
    crashes require."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(script).resolve().parent)]
                                        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    results: dict[str, dict] = {}
    remaining = list(names)
    while remaining:
        proc = subprocess.run([sys.executable, str(script), *remaining], env=env, capture_output=True, text=True)
        running = None
        for line in proc.stdout.splitlines():
            if line.startswith(START):
                running = line[len(START):]
            elif line.startswith(RESULT):
                result = json.loads(line[len(RESULT):])
                results[result.pop("name")] = result
                running = None
        remaining = [n for n in remaining if n not in results]
        if not remaining:
            break
        tail = (proc.stderr or "")[-4000:]
        if running is None:  # died before (or between) checks: nothing more can run
            for name in remaining:
                results[name] = {"ok": False, "detail": f"the check process ended ({_exit_status(proc.returncode)}) "
                                                        f"before running {name}:\n{tail}"}
            break
        results[running] = {"ok": False, "detail": f"the process crashed ({_exit_status(proc.returncode)}) "
                                                   f"while running {running}:\n{tail}"}
        remaining.remove(running)
    return results
