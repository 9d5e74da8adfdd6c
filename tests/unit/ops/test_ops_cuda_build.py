"""The CUDA sources must compile (no GPU needed): a broken kernel cannot land.

* ``test_kernels_compile``: nvcc -c of every kernel instantiation that the Python side can reach (the value dtypes
  of ``ops/checks.py``, locations in value's dtype or float32 as ``ops/msda.py`` passes them, both value-gradient
  modes) in ``ms_deform_attn_kernels.cuh`` for sm_90, with only the CUDA headers (~3 s on 2 cores); each of them
  must be an entry function that ptxas compiled (by name, demangled: no count that depends on the nvcc version),
  the launcher ``ms_deform_attn_cuda.cu`` must dispatch every one of those dtypes, and ptxas must report no
  register spills.
* ``test_extension_builds`` (slow, ~1.5 min cold, seconds when cached): the real JIT build path
  (``cuda_ext.build`` -> ``torch.utils.cpp_extension.load``) for one architecture, in a subprocess, into
  ``$TORCH_EXTENSIONS_DIR/msda_ci_sm90`` (``.cache/msda_ext_ci`` when unset; reused while the sources are
  unchanged).
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vit_adapter_ds.ops import checks, cuda_ext

REPO = Path(__file__).resolve().parents[3]


def _nvcc():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for cand in (Path(home) / "bin" / "nvcc", Path("/usr/local/cuda/bin/nvcc")):
        if cand.exists():
            return str(cand)
    found = shutil.which("nvcc")
    if found is None:
        pytest.skip("nvcc not found (set CUDA_HOME)")
    return found


# torch dtype -> the CUDA type the launcher hands to the kernels (CudaType<> in ms_deform_attn_cuda.cu) and the
# ATen dispatch name; the accumulation type is msda::AccType<T> (double for double, float otherwise)
CUDA_TYPES = {torch.float64: ("double", "kDouble"), torch.float32: ("float", "kFloat"),
              torch.float16: ("__half", "kHalf"), torch.bfloat16: ("__nv_bfloat16", "kBFloat16")}


def called_kernels():
    """The kernel instantiations the Python side can launch, derived from it: ``checks.FLOAT_DTYPES`` are the value
    dtypes ms_deform_attn accepts; ``msda._prepare`` passes locations / weights in value's dtype or float32;
    backward runs with float atomics or (deterministic) the unsigned long long fixed-point value gradient.
    -> {(kernel name, template arguments)}."""
    out = set()
    for dt in checks.FLOAT_DTYPES:
        assert dt in CUDA_TYPES, f"ops/checks.py accepts {dt}: add its CUDA type to CUDA_TYPES"
        t = CUDA_TYPES[dt][0]
        acc = "double" if t == "double" else "float"
        for loc in dict.fromkeys((t, "float")):
            out.add(("msda_forward_kernel", (t, loc)))
            for gv in (acc, "unsigned long long"):
                out.add(("msda_backward_kernel", (t, loc, gv)))
    return out


def test_launcher_dispatches_every_called_dtype():
    """ms_deform_attn_cuda.cu launches exactly the instantiations above: its AT_DISPATCH covers every value dtype
    the Python side accepts, locations in value's dtype or float32, both value-gradient types."""
    src = (Path(cuda_ext.CSRC) / "ms_deform_attn_cuda.cu").read_text()
    for what in ("forward", "backward"):
        m = re.search(r"AT_DISPATCH_FLOATING_TYPES(?:_AND\d*)?\(([^;]*?)value\.scalar_type\(\),\s*"
                      rf'"ms_deform_attn_{what}_cuda"', src)
        assert m, f"ms_deform_attn_cuda.cu: no AT_DISPATCH_FLOATING_TYPES* over value's dtype in {what}"
        dispatched = {"kDouble", "kFloat"} | set(re.findall(r"at::(k\w+)", m[1]))
        missing = [str(dt) for dt in checks.FLOAT_DTYPES if CUDA_TYPES[dt][1] not in dispatched]
        assert not missing, f"{what}: the Python side accepts {missing}, the CUDA launcher does not dispatch them"
    assert "fn(static_cast<typename CudaType<scalar_t>::type*>(nullptr))" in src  # locations in value's dtype
    assert "fn(static_cast<float*>(nullptr))" in src  # or float32
    assert "launch(reinterpret_cast<unsigned long long*>(" in src and "launch(grad_value.data_ptr<acc_t>())" in src


FORWARD = ("template __global__ void msda::msda_forward_kernel<{0}, {1}>(const {0}*, const int64_t*, const int64_t*, "
           "const {1}*, const {1}*, {0}*, int64_t, int64_t, int64_t, int64_t, int64_t, int, int);")
BACKWARD = ("template __global__ void msda::msda_backward_kernel<{0}, {1}, {2}>(const {0}*, const int64_t*, "
            "const int64_t*, const {1}*, const {1}*, const {0}*, {2}*, {3}*, {3}*, int64_t, int64_t, int64_t, "
            "int64_t, int64_t, int, int, double);")


def instantiations(kernels):
    lines = ['#include "ms_deform_attn_kernels.cuh"']
    for name, args in sorted(kernels):
        if name == "msda_forward_kernel":
            lines.append(FORWARD.format(*args))
        else:
            lines.append(BACKWARD.format(*args, "double" if args[0] == "double" else "float"))
    return "\n".join(lines) + "\n"


def compiled_entries(log):
    """(kernel name, template arguments) of every entry function named in ptxas -v's log, demangled with c++filt."""
    mangled = sorted(set(re.findall(r"entry function '([^']+)'", log)))
    if not mangled:
        return set()
    cxxfilt = shutil.which("c++filt") or shutil.which("cu++filt")
    assert cxxfilt, "c++filt (binutils) is needed to read the kernel names"
    names = subprocess.run([cxxfilt], input="\n".join(mangled), capture_output=True, text=True, check=True).stdout
    out = set()
    for line in names.splitlines():
        m = re.search(r"msda::(msda_\w+_kernel)<(.*)>\(", line)
        if m:
            out.add((m[1], tuple(a.strip() for a in m[2].split(","))))
    return out


def test_kernels_compile(tmp_path):
    want = called_kernels()  # 21 today: 4 value dtypes, 3 also with float32 locations; forward + 2 backward
    assert ("msda_forward_kernel", ("float", "float")) in want
    src = tmp_path / "instantiate.cu"
    src.write_text(instantiations(want))
    cmd = [_nvcc(), "-std=c++20", "-O3", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v",
           f"-I{cuda_ext.CSRC}", "-c", str(src), "-o", str(tmp_path / "instantiate.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout + proc.stderr
    got = compiled_entries(log)
    missing = sorted(want - got)
    assert not missing, f"kernels the Python side launches that ptxas did not compile: {missing}\n{log[-4000:]}"
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
