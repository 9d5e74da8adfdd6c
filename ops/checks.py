"""Validation of ``ms_deform_attn``'s inputs, shared by every backend (see ``ops/README.md``, "Contract").

Two kinds of checks:

* **per call, from metadata only** (types, dtypes, ranks, shapes, devices; no host-device sync);
* **the geometry**: the contents of ``spatial_shapes`` / ``level_start_index`` must fit ``value``
  (``sum(H * W) == value.shape[1]``, ``level_start_index`` is the exclusive cumulative sum of ``H * W``, every
  ``H, W >= 1``). Python sequences and CPU tensors are checked on every call (no sync needed). Tensors on an
  accelerator are read back (one small device-to-host copy) once per geometry: the result is cached by the
  tensors' ``(device, data_ptr, version counter, shape)`` and ``value.shape[1]``, so a model that builds
  the same shapes every step pays the copy once. ``VIT_ADAPTER_MSDA_CHECK=always`` re-reads them on every
  call (debugging). The fused kernels also mask every corner whose row falls outside ``[0, S)``, so even
  a stale cache entry cannot make them read or write out of bounds.
"""
from __future__ import annotations

if __package__ != "vit_adapter_ds.ops":
    raise ImportError(f"{__name__}: import the kernels as vit_adapter_ds.ops, not from the ops/ folder "
                      "(see vit_adapter_ds/ops/__init__.py)")

import os  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import torch  # noqa: E402

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CHECK_ENV_VAR = "VIT_ADAPTER_MSDA_CHECK"
CHECK_MODES = ("cached", "always")
_CACHE_SIZE = 1024
_validated: dict[tuple, bool] = {}


def _check_float_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"ms_deform_attn: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
                        + (" (integer inputs would be truncated)" if not t.is_floating_point() else ""))


def _index_tensor(name: str, x, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``x`` as an integer tensor of ``shape`` on ``device`` or the CPU (a Python sequence or a NumPy array is
    converted)."""
    if not isinstance(x, torch.Tensor):
        if isinstance(x, (str, bytes)) or not (isinstance(x, Sequence) or hasattr(x, "__array__")):
            raise TypeError(f"ms_deform_attn: {name} must be an int64 tensor, a sequence of ints or an array, "
                            f"got {type(x).__name__}")
        try:
            x = torch.as_tensor(x, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"ms_deform_attn: {name} {x!r} is not a sequence of ints ({err})") from None
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"ms_deform_attn: {name} must hold integers (int64), got {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"ms_deform_attn: {name} must have shape {shape} (L = sampling_locations.shape[3]), "
                         f"got {tuple(x.shape)}")
    if x.device != device and x.device.type != "cpu":
        raise ValueError(f"ms_deform_attn: {name} is on {x.device} but value is on {device} "
                         "(it may also be on the CPU)")
    return x


def check_geometry_values(shapes: list[list[int]], starts: list[int], rows: int) -> None:
    """Raise ``ValueError`` unless the levels ``shapes`` [(H, W), ...] with ``starts`` tile ``rows`` rows."""
    if any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"ms_deform_attn: spatial_shapes {shapes} must be positive (H, W) per level")
    areas = [h * w for h, w in shapes]
    if sum(areas) != rows:
        raise ValueError(f"ms_deform_attn: spatial_shapes {shapes} need {sum(areas)} rows of value (sum of H*W "
                         f"per level) but value.shape[1] is {rows}")
    expected = [sum(areas[:i]) for i in range(len(areas))]
    if starts != expected:
        raise ValueError(f"ms_deform_attn: level_start_index {starts} must be the exclusive cumulative sum of "
                         f"H*W per level, {expected} for spatial_shapes {shapes}")


def _check_mode() -> str:
    mode = (os.environ.get(CHECK_ENV_VAR) or "cached").lower()
    if mode not in CHECK_MODES:
        raise ValueError(f"ms_deform_attn: ${CHECK_ENV_VAR}={mode!r} not in {CHECK_MODES}")
    return mode


def _check_geometry(shapes: torch.Tensor, starts: torch.Tensor, rows: int) -> None:
    on_cpu = shapes.device.type == "cpu" and starts.device.type == "cpu"
    key = None
    if not on_cpu:
        if torch.compiler.is_compiling():  # no data pointers while tracing; the kernels mask out-of-range rows
            return
        if _check_mode() == "cached":
            key = (rows, shapes.device, shapes.data_ptr(), shapes._version, tuple(shapes.shape), shapes.dtype,
                   starts.device, starts.data_ptr(), starts._version, tuple(starts.shape), starts.dtype)
            if key in _validated:
                return
    check_geometry_values(shapes.tolist(), starts.tolist(), rows)
    if key is not None:
        if len(_validated) >= _CACHE_SIZE:
            _validated.clear()
        _validated[key] = True


def check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Validate ``ms_deform_attn``'s arguments; returns ``(spatial_shapes, level_start_index)`` as int64
    tensors on ``value``'s device. Raises ``TypeError`` (wrong type / dtype) or ``ValueError`` (shapes,
    devices, geometry) with a message naming the argument and the mismatch."""
    _check_float_tensor("value", value)
    _check_float_tensor("sampling_locations", sampling_locations)
    _check_float_tensor("attention_weights", attention_weights)
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be (N, S, M, D), got {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError("ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), "
                         f"got {tuple(sampling_locations.shape)}")
    n, lq, m, n_levels, n_points, _ = sampling_locations.shape
    if tuple(attention_weights.shape) != (n, lq, m, n_levels, n_points):
        raise ValueError(f"ms_deform_attn: attention_weights {tuple(attention_weights.shape)} must be "
                         f"(N, Lq, M, L, P) = {(n, lq, m, n_levels, n_points)}")
    if value.shape[0] != n or value.shape[2] != m:
        raise ValueError(f"ms_deform_attn: value {tuple(value.shape)} does not match batch/heads of "
                         f"sampling_locations {tuple(sampling_locations.shape)}")
    for name, t in (("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if t.device != value.device:
            raise ValueError(f"ms_deform_attn: {name} is on {t.device} but value is on {value.device}")
    shapes = _index_tensor("spatial_shapes", spatial_shapes, (n_levels, 2), value.device)
    starts = _index_tensor("level_start_index", level_start_index, (n_levels,), value.device)
    _check_geometry(shapes, starts, value.shape[1])
    to = dict(device=value.device, dtype=torch.long)
    return shapes.to(**to).contiguous(), starts.to(**to).contiguous()
