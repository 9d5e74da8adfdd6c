"""Triton MSDA kernels on CPU under the Triton interpreter (real kernel code in CPU-only CI).

The checks live in ``msda_triton_interpret.py`` and run in child processes with ``TRITON_INTERPRET=1`` (set
before triton is imported there; this pytest process is never affected) through
``msda_subprocess.run_checks``: a crash of a kernel (e.g. an out-of-bounds access) fails the check that was
running, by name, and the other checks still run. No wall-clock limit is imposed on the child (the cases are
tiny, ~30 s in all on one core; a hang is left to pytest-timeout). Each check is one test here.
"""
import os
from pathlib import Path

import pytest

from msda_subprocess import check_names, run_checks

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "helpers" / "msda_triton_interpret.py"
CHECKS = check_names(SCRIPT)


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("VIT_ADAPTER_MSDA_BACKEND", None)
    return run_checks(SCRIPT, CHECKS, env)


@pytest.mark.parametrize("name", CHECKS)
def test_triton_interpreter(results, name):
    assert name in results, f"check {name} did not run; ran {sorted(results)}"
    assert results[name]["ok"], results[name]["detail"]


def test_the_checks_are_found():
    assert len(CHECKS) >= 18 and len(set(CHECKS)) == len(CHECKS), CHECKS
