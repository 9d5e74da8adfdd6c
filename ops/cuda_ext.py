"""Build / load the multi-scale deformable attention CUDA extension (JIT via ``torch.utils.cpp_extension``).

Nothing is compiled at ``pip install`` time. The extension is built with ninja the first time a CUDA tensor
takes the ``cuda`` backend (or explicitly with ``python -m vit_adapter_ds.ops.build``) and cached in
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); later processes only load the ``.so``.

Architectures: ``TORCH_CUDA_ARCH_LIST`` if set (torch's own syntax, e.g. ``"8.0;9.0+PTX"``), otherwise sm_80 and
sm_90 plus compute_90 PTX (for newer GPUs) plus the architecture of the visible GPU if it is not covered.
"""
from __future__ import annotations

if __package__ != "vit_adapter_ds.ops":
    raise ImportError(f"{__name__}: import the kernels as vit_adapter_ds.ops, not from the ops/ folder "
                      "(see vit_adapter_ds/ops/__init__.py)")

import logging
import os
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / "ms_deform_attn.cpp", CSRC / "ms_deform_attn_cuda.cu"]
KERNEL_HEADER = CSRC / "ms_deform_attn_kernels.cuh"
EXT_NAME = "vit_adapter_ds_msda"
DEFAULT_ARCHS = ("80", "90")
NVCC_FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]

logger = logging.getLogger(__name__)
_module = None
_load_error: Exception | None = None


def _ensure_cuda_home() -> str:
    """Point ``CUDA_HOME`` at a toolkit that really has ``bin/nvcc`` (``/usr/local/cuda`` by default)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home or not (Path(home) / "bin" / "nvcc").exists():
        if (Path("/usr/local/cuda") / "bin" / "nvcc").exists():
            home = "/usr/local/cuda"
            os.environ["CUDA_HOME"] = home
    import torch.utils.cpp_extension as cpp_ext

    # cpp_extension resolves CUDA_HOME when it is first imported; correct it if it guessed a wrong prefix.
    if home and (cpp_ext.CUDA_HOME is None or not (Path(cpp_ext.CUDA_HOME) / "bin" / "nvcc").exists()):
        cpp_ext.CUDA_HOME = home
    if not home:
        raise RuntimeError("ms_deform_attn: no CUDA toolkit found; set CUDA_HOME to a directory with bin/nvcc")
    return home


def arch_flags() -> list[str]:
    """``-gencode`` flags (empty when ``TORCH_CUDA_ARCH_LIST`` is set: torch then adds its own)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []
    archs = list(DEFAULT_ARCHS)
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        cap = f"{major}{minor}"
        if cap not in archs and int(cap) < 90:  # >= 9.0 runs the compute_90 PTX if not listed
            archs.append(cap)
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append("-gencode=arch=compute_90,code=compute_90")
    return flags


def build(verbose: bool = False):
    """Compile (if the cache is stale) and import the extension; returns the Python module."""
    global _module
    if _module is not None:
        return _module
    _ensure_cuda_home()
    from torch.utils.cpp_extension import load

    logger.info("ms_deform_attn: loading the CUDA extension (compiled with ninja on first use, ~1-2 min; "
                "cached in TORCH_EXTENSIONS_DIR)")

    _module = load(name=EXT_NAME, sources=[str(s) for s in SOURCES], extra_include_paths=[str(CSRC)],
                   extra_cflags=["-O3", "-std=c++20"], extra_cuda_cflags=NVCC_FLAGS + arch_flags(),
                   verbose=verbose)
    return _module


def load_or_none():
    """The extension module, or ``None`` (once, with a logged warning) when it cannot be built or loaded."""
    global _load_error
    if _module is not None:
        return _module
    if _load_error is not None:
        return None
    try:
        return build()
    except Exception as err:  # noqa: BLE001 - any build failure means "fall back", reported once
        _load_error = err
        logger.warning("ms_deform_attn: CUDA extension unavailable (%s: %s); falling back", type(err).__name__, err)
        return None
