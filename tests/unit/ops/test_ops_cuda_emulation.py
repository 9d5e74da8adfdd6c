"""The CUDA kernels (ops/csrc/ms_deform_attn_kernels.cuh) executed on the CPU against the float64 reference.

``cuda_emu/msda_emu.cpp`` compiles the unmodified kernel templates with the host compiler and runs each warp
as 32 cooperative lane contexts (ucontext; ``__shfl_xor_sync`` waits for all 32 lanes, a divergent shuffle fails
the launch with rc 2), so CPU-only CI exercises the kernels' index math, grid-stride loop, warp reductions and
gradient scatter. The checks (``msda_cuda_emu_checks.py``) run in child processes through
``msda_subprocess.run_checks``: an out-of-bounds access that crashes fails its check by name, not pytest.
The ATen launch glue (ms_deform_attn_cuda.cu, ms_deform_attn.cpp) is covered by the nvcc build test and the
GPU tests.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from msda_subprocess import check_names, run_checks
from vit_adapter_ds.ops import cuda_ext

HERE = Path(__file__).resolve().parents[2] / "helpers"
SCRIPT = HERE / "msda_cuda_emu_checks.py"
CHECKS = check_names(SCRIPT)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    cuda_include = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
    if cxx is None or not (cuda_include / "cuda_bf16.h").exists():
        pytest.skip("needs g++ and the CUDA headers (CUDA_HOME)")
    so = tmp_path_factory.mktemp("msda_emu") / "msda_emu.so"
    cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", f"-I{cuda_include}", f"-I{cuda_ext.CSRC}",
           str(HERE / "cuda_emu" / "msda_emu.cpp"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return run_checks(SCRIPT, CHECKS, dict(os.environ, MSDA_EMU_SO=str(so), OMP_NUM_THREADS="1"))


@pytest.mark.parametrize("name", CHECKS)
def test_emulated_cuda_kernels(results, name):
    assert name in results, f"check {name} did not run; ran {sorted(results)}"
    assert results[name]["ok"], results[name]["detail"]


def test_the_checks_are_found():
    assert len(CHECKS) >= 12 and len(set(CHECKS)) == len(CHECKS), CHECKS
