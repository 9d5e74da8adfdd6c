"""``vit_adapter_ds.ops.ms_deform_attn``: the public multi-scale deformable attention op and its dispatch.

``ms_deform_attn`` is the one entry point (re-exported by ``vit_adapter_ds.ops``). It dispatches to

* ``"cuda"``: the CUDA C++ extension in ``csrc/`` (built with ninja on first use, see ``ops/README.md``),
* ``"triton"``: the Triton kernels in ``triton_msda.py`` (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``),
* ``"pytorch"``: :func:`ms_deform_attn_reference` (``grid_sample``; the only CPU path by default; on CPU,
  float16/bfloat16 inputs are computed in float32 and the output cast back, see ``ops/README.md``).

``backend=None`` reads ``VIT_ADAPTER_MSDA_BACKEND`` (``auto`` / ``cuda`` / ``triton`` / ``pytorch``, default
``auto``). ``auto`` picks cuda -> triton -> pytorch for CUDA tensors and pytorch for CPU tensors. The choice
is logged once per (backend, device type) on the ``vit_adapter_ds.ops`` logger.
"""
from __future__ import annotations

import logging
import os

import torch

if __package__ != "vit_adapter_ds.ops":
    raise ImportError(f"{__name__}: import the kernels as vit_adapter_ds.ops, not from the ops/ folder "
                      "(see vit_adapter_ds/ops/__init__.py)")

from torch.autograd.function import once_differentiable  # noqa: E402

from .checks import check_inputs  # noqa: E402
from .reference import ms_deform_attn_reference  # noqa: E402

BACKENDS = ("auto", "cuda", "triton", "pytorch")
ENV_VAR = "VIT_ADAPTER_MSDA_BACKEND"

logger = logging.getLogger("vit_adapter_ds.ops")
_logged: set[tuple[str, str]] = set()
_triton_module = None
_triton_error: Exception | None = None


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _load_triton():
    """``triton_msda`` module or ``None`` when triton is not importable (reported once)."""
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            from . import triton_msda

            _triton_module = triton_msda
        except Exception as err:  # noqa: BLE001 - any import problem means "fall back"
            _triton_error = err
            logger.warning("ms_deform_attn: triton unavailable (%s: %s)", type(err).__name__, err)
    return _triton_module


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """The concrete backend (``cuda`` / ``triton`` / ``pytorch``) for tensors on ``device``."""
    requested = (backend or os.environ.get(ENV_VAR) or "auto").lower()
    if requested not in BACKENDS:
        raise ValueError(f"ms_deform_attn: backend {requested!r} (argument or ${ENV_VAR}) not in {BACKENDS}")
    on_cuda = device.type == "cuda"
    if requested == "cuda":
        if not on_cuda:
            raise ValueError(f"ms_deform_attn: backend 'cuda' needs CUDA tensors, got {device}")
        from . import cuda_ext

        cuda_ext.build()  # raises with the compiler error if it cannot be built
        return "cuda"
    if requested == "triton":
        if not on_cuda and not _triton_interpret():
            raise ValueError("ms_deform_attn: backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 "
                             "(set before triton is imported)")
        module = _load_triton()
        if module is None:
            raise RuntimeError(f"ms_deform_attn: backend 'triton' requested but triton failed: {_triton_error}")
        if not on_cuda and type(module._msda_fwd_kernel).__name__ != "InterpretedFunction":
            raise ValueError("ms_deform_attn: the Triton kernels were compiled for the GPU because "
                             "TRITON_INTERPRET was set after they were imported; set it before importing")
        return "triton"
    if requested == "pytorch" or not on_cuda:
        return "pytorch"
    from . import cuda_ext

    if cuda_ext.load_or_none() is not None:
        return "cuda"
    if _load_triton() is not None:
        return "triton"
    return "pytorch"


def _prepare(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Contiguous tensors in the dtypes the kernels read (locations/weights share a dtype; the int64 shapes
    come from :func:`check_inputs`)."""
    same = sampling_locations.dtype == value.dtype and attention_weights.dtype == value.dtype
    loc_dtype = value.dtype if same else torch.float32
    return (value.contiguous(), spatial_shapes, level_start_index,
            sampling_locations.to(loc_dtype).contiguous(), attention_weights.to(loc_dtype).contiguous())


class _MSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper of the fused kernels (works under activation checkpointing: backward recomputes).

    Once differentiable: the kernels have no double backward, so differentiating the gradients raises
    ``RuntimeError: trying to differentiate twice a function that was marked with @once_differentiable``
    (use ``backend="pytorch"`` for higher-order gradients)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend):
        args = _prepare(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        if backend == "cuda":
            from . import cuda_ext

            out = cuda_ext.build().forward(*args, check_geometry=False)  # check_inputs did it
        else:
            out = _load_triton().msda_forward(*args)
        ctx.backend = backend
        ctx.dtypes = (sampling_locations.dtype, attention_weights.dtype)
        ctx.save_for_backward(*args)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        # Under torch.use_deterministic_algorithms(True) the value gradient is accumulated in int64 fixed point
        # (bitwise reproducible) instead of with float atomics.
        deterministic = torch.are_deterministic_algorithms_enabled()
        if ctx.backend == "cuda":
            from . import cuda_ext

            grads = cuda_ext.build().backward(value, shapes, starts, loc, attn, grad_output.contiguous(),
                                              deterministic, check_geometry=False)
        else:
            grads = _load_triton().msda_backward(value, shapes, starts, loc, attn,
                                                 grad_output.to(value.dtype).contiguous(),
                                                 deterministic=deterministic)
        grad_value, grad_loc, grad_attn = grads
        return (grad_value.to(value.dtype), None, None, grad_loc.to(ctx.dtypes[0]), grad_attn.to(ctx.dtypes[1]), None)


def _reference_promoted(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The reference in the promoted dtype of its inputs (``grid_sample`` needs one dtype), output in value's.

    On CPU, float16/bfloat16 are computed in float32: in torch 2.14.1 ``grid_sample``'s reduced-precision CPU
    kernel reads out of bounds on channel-strided inputs such as the reference's per-level views (wrong values
    or a segfault for levels of ~56x56 and larger), and it is slower than float32 anyway.
    """
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    if value.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    if value.dtype == sampling_locations.dtype == attention_weights.dtype == dtype:
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights)
    out = ms_deform_attn_reference(value.to(dtype), spatial_shapes, level_start_index, sampling_locations.to(dtype),
                                   attention_weights.to(dtype))
    return out.to(value.dtype)


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                   backend: str | None = None):
    """Multi-scale deformable attention; the contract is in ``ops/README.md`` ("Contract").

    Args:
        value: (N, S, M, D) float32 / float16 / bfloat16 / float64 (integer values are refused).
        spatial_shapes: (L, 2) integer (H, W) per level, on value's device or the CPU, or a sequence of
            (H, W) pairs; ``sum(H * W)`` must be ``S``.
        level_start_index: (L,) the exclusive cumulative sum of ``H * W`` (tensor or sequence, like above).
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y); attention_weights: (N, Lq, M, L, P); on
            value's device, in value's dtype or float32 (the fused kernels read float32 locations for half values).
            A sample with a NaN or infinite coordinate is NaN (its output row and its gradients) on every backend.
        backend: ``None`` (use ``$VIT_ADAPTER_MSDA_BACKEND``, default ``auto``), ``auto``, ``cuda``,
            ``triton`` or ``pytorch``.

    Returns:
        (N, Lq, M * D) in value's dtype; the fused kernels accumulate in float32.

    Raises:
        TypeError / ValueError naming the argument and the mismatch (see :mod:`.checks`; the geometry of
        accelerator tensors is checked once per geometry, ``$VIT_ADAPTER_MSDA_CHECK=always`` on every call).
    """
    spatial_shapes, level_start_index = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                                     attention_weights)
    chosen = resolve_backend(value.device, backend)
    key = (chosen, value.device.type)
    if key not in _logged:
        _logged.add(key)
        logger.info("ms_deform_attn: using the %s backend for %s tensors", chosen, value.device.type)
    if chosen == "pytorch":
        return _reference_promoted(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return _MSDeformAttnFunction.apply(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights, chosen)


__all__ = ["BACKENDS", "ENV_VAR", "ms_deform_attn", "ms_deform_attn_reference", "resolve_backend"]
