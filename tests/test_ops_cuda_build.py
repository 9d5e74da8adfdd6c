"""The CUDA sources must compile (no GPU needed): a broken kernel cannot land.

* ``test_kernels_compile``: nvcc -c of every kernel instantiation (all dtypes, both value-gradient modes) in ``ms_deform_attn_kernels.cuh``
  for sm_90, with only the CUDA headers (~3 s on 2 cores); ptxas must report no register spills.
* ``test_extension_builds`` (slow, ~1.5 min cold, seconds when cached): the real JIT build path
  (``cuda_ext.build`` -> ``torch.utils.cpp_extension.load``) for one architecture, in a subprocess, into
  ``$TORCH_EXTENSIONS_DIR/msda_ci_sm90`` (``.cache/msda_ext_ci`` when unset; reused while the sources are
  unchanged).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vit_adapter_ds.ops import cuda_ext

REPO = Path(__file__).resolve().parents[1]


def _nvcc():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for cand in (Path(home) / "bin" / "nvcc", Path("/usr/local/cuda/bin/nvcc")):
        if cand.exists():
            return str(cand)
    found = shutil.which("nvcc")
    if found is None:
        pytest.skip("nvcc not found (set CUDA_HOME)")
    return found


INSTANTIATIONS = """
#include "ms_deform_attn_kernels.cuh"
#define INST(T, LT)                                                                                         \\
  template __global__ void msda::msda_forward_kernel<T, LT>(const T*, const int64_t*, const int64_t*,       \\
      const LT*, const LT*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int, int);                     \\
  template __global__ void msda::msda_backward_kernel<T, LT, msda::AccType<T>::type>(const T*,             \\
      const int64_t*, const int64_t*, const LT*, const LT*, const T*, msda::AccType<T>::type*,              \\
      msda::AccType<T>::type*, msda::AccType<T>::type*, int64_t, int64_t, int64_t, int64_t, int64_t, int,    \\
      int, double);                                                                                         \\
  template __global__ void msda::msda_backward_kernel<T, LT, unsigned long long>(const T*, const int64_t*,  \\
      const int64_t*, const LT*, const LT*, const T*, unsigned long long*, msda::AccType<T>::type*,         \\
      msda::AccType<T>::type*, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, double);
INST(float, float)
INST(double, double)
INST(double, float)
INST(__half, __half)
INST(__half, float)
INST(__nv_bfloat16, __nv_bfloat16)
INST(__nv_bfloat16, float)
"""


def test_kernels_compile(tmp_path):
    src = tmp_path / "instantiate.cu"
    src.write_text(INSTANTIATIONS)
    cmd = [_nvcc(), "-std=c++20", "-O3", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v",
           f"-I{cuda_ext.CSRC}", "-c", str(src), "-o", str(tmp_path / "instantiate.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout + proc.stderr
    assert log.count("Compiling entry function") == 21, log  # 7 type pairs x (forward, 2 backward)
    spills = [ln for ln in log.splitlines() if "spill" in ln and " 0 bytes spill stores, 0 bytes spill loads" not in ln]
    assert not spills, "\n".join(spills)
    assert (tmp_path / "instantiate.o").stat().st_size > 0


@pytest.mark.slow
def test_extension_builds():
    _nvcc()
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    cache = Path(root) / "msda_ci_sm90" if root else REPO / ".cache" / "msda_ext_ci"
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(cache), TORCH_CUDA_ARCH_LIST="9.0", MAX_JOBS="2")
    code = ("from vit_adapter_ds.ops import cuda_ext; m = cuda_ext.build(); "
            "assert hasattr(m, 'forward') and hasattr(m, 'backward'); print(m.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert Path(proc.stdout.strip().splitlines()[-1]).exists()
