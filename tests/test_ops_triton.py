"""Triton MSDA kernels on CPU under the Triton interpreter (real kernel code in CPU-only CI).

The checks live in ``msda_triton_interpret.py`` and run once in a subprocess with ``TRITON_INTERPRET=1``
(set before triton is imported there; this pytest process is never affected). Each check is one test here.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).with_name("msda_triton_interpret.py")
CHECKS = [
    "fp64_batch3_levels3", "fp64_batch80", "fp32_query_blocks_and_far_points", "gradcheck_fp64", "bf16", "fp16",
    "bf16_value_fp32_locations", "non_contiguous_inputs", "env_var_backend_and_checkpoint", "grad_fn_is_triton",
    "deterministic_mode_is_bitwise_reproducible", "auto_on_cpu_is_reference",
]


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("VIT_ADAPTER_MSDA_BACKEND", None)
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MSDA_RESULTS ")]
    assert proc.returncode == 0 and lines, f"script failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("MSDA_RESULTS "):])


@pytest.mark.parametrize("name", CHECKS)
def test_triton_interpreter(results, name):
    assert name in results, f"check {name} did not run; ran {sorted(results)}"
    assert results[name]["ok"], results[name]["detail"]


def test_all_script_checks_are_listed(results):
    assert sorted(results) == sorted(CHECKS)
