"""Triton kernels for multi-scale deformable attention (forward and backward).

Tiling: one program (1-D grid) handles ``BLOCK_Q`` queries of one (batch, head) pair and the whole head dimension
(``BLOCK_D`` = next power of two of ``D``, masked). It loops over levels and points; for every sample it
gathers the four bilinear corners as ``(BLOCK_Q, BLOCK_D)`` tiles (zeros outside the map) and accumulates
in float32 (float64 for float64 inputs).

Backward recomputes the corners, writes the location and attention-weight gradients directly (each
``(n, q, m, l, p)`` belongs to exactly one program) and scatters the value gradient with ``tl.atomic_add``:
into a float32 buffer (fast, not bitwise reproducible) or, with ``deterministic=True`` (what
``ms_deform_attn`` uses under ``torch.use_deterministic_algorithms(True)``), into an int64 fixed-point buffer,
whose integer additions give the same bits in any order.

Semantics at the edges (the contract in ``ops/README.md``): a sample whose location has a NaN / infinite
coordinate is NaN (output row, its attention-weight and location gradients; nothing is scattered to the
value gradient); a level whose rows ``[start, start + H*W)`` do not lie inside ``[0, S)`` is treated as
outside the map, so the kernels never read or write out of bounds even on unchecked inputs.

The kernels also run under ``TRITON_INTERPRET=1`` on CPU tensors (that is how CI tests them); the
environment variable must be set before this module is imported.
"""
from __future__ import annotations

if __package__ != "vit_adapter_ds.ops":
    raise ImportError(f"{__name__}: import the kernels as vit_adapter_ds.ops, not from the ops/ folder "
                      "(see vit_adapter_ds/ops/__init__.py)")

import torch
import triton
import triton.language as tl

from .fixed_point import fixed_point_exponent


@triton.jit
def _corner(value_ptr, row_base, h, w, H, W, start, M, m, d, q_mask, d_mask, D: tl.constexpr):
    """Pointer offsets, validity and float tile of one bilinear corner ``(h, w)`` (int32 vectors)."""
    valid = q_mask & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    idx = (start + h.to(tl.int64) * W + w.to(tl.int64))  # position inside S
    offs = ((row_base + idx) * M + m) * D  # int64
    ptrs = offs[:, None] + d[None, :]
    mask = valid[:, None] & d_mask[None, :]
    v = tl.load(value_ptr + ptrs, mask=mask, other=0.0)
    return ptrs, mask, v


@triton.jit
def _level(shapes_ptr, starts_ptr, lvl, S):
    """(H, W, start, fits) of one level; ``fits``: rows [start, start + H*W) lie inside [0, S)."""
    H = tl.load(shapes_ptr + 2 * lvl)
    W = tl.load(shapes_ptr + 2 * lvl + 1)
    start = tl.load(starts_ptr + lvl)
    fits = (H > 0) & (W > 0) & (H <= 2**31 - 2) & (W <= 2**31 - 2) & (start >= 0) & (start <= S)
    fits = fits & (H <= (S - start) // tl.maximum(W, 1))  # H * W <= S - start without overflow
    return H.to(tl.int32), W.to(tl.int32), start, fits


@triton.jit
def _sample_coords(loc_ptr, loc_off, H, W, q_mask, ACC_DTYPE: tl.constexpr):
    """Integer top-left corner, fractional parts of the samples (``x*W-0.5``, ``y*H-0.5``) and whether both
    coordinates are finite (a non-finite sample is moved outside the map; the callers make it NaN)."""
    x = tl.load(loc_ptr + 2 * loc_off, mask=q_mask, other=0.0).to(ACC_DTYPE)
    y = tl.load(loc_ptr + 2 * loc_off + 1, mask=q_mask, other=0.0).to(ACC_DTYPE)
    finite = (tl.abs(x) < float("inf")) & (tl.abs(y) < float("inf"))  # False for NaN and +-inf
    hf = tl.where(finite, y * H.to(ACC_DTYPE) - 0.5, -2.0)
    wf = tl.where(finite, x * W.to(ACC_DTYPE) - 0.5, -2.0)
    # Clamp far-away points (keeps the int cast defined); they stay outside, so they contribute nothing.
    hf = tl.minimum(tl.maximum(hf, -2.0), H.to(ACC_DTYPE) + 1.0)
    wf = tl.minimum(tl.maximum(wf, -2.0), W.to(ACC_DTYPE) + 1.0)
    h0f = tl.floor(hf)
    w0f = tl.floor(wf)
    return h0f.to(tl.int32), w0f.to(tl.int32), hf - h0f, wf - w0f, finite


@triton.jit
def _msda_fwd_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
                     S, Lq, M,
                     D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
                     BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr):
    # 1-D grid (no 65535 limit on a second axis): consecutive programs walk the query blocks of one (n, m)
    pid = tl.program_id(0).to(tl.int64)
    n_q_blocks = tl.cdiv(Lq, BLOCK_Q)
    pid_q = pid % n_q_blocks
    pid_nm = pid // n_q_blocks
    n = pid_nm // M
    m = pid_nm % M
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q).to(tl.int64)
    q_mask = q < Lq
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    row_base = n * S
    qm = (n * Lq + q) * M + m  # (BLOCK_Q,) flat (n, q, m)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=ACC_DTYPE)
    for lvl in range(L):
        H, W, start, fits = _level(shapes_ptr, starts_ptr, lvl, S)
        in_level = q_mask & fits
        for p in range(P):
            loc_off = qm * (L * P) + lvl * P + p
            a = tl.load(attn_ptr + loc_off, mask=q_mask, other=0.0).to(ACC_DTYPE)
            h0, w0, lh, lw, finite = _sample_coords(loc_ptr, loc_off, H, W, q_mask, ACC_DTYPE)
            hh = 1.0 - lh
            hw = 1.0 - lw
            _, _, v1 = _corner(value_ptr, row_base, h0, w0, H, W, start, M, m, d, in_level, d_mask, D)
            _, _, v2 = _corner(value_ptr, row_base, h0, w0 + 1, H, W, start, M, m, d, in_level, d_mask, D)
            _, _, v3 = _corner(value_ptr, row_base, h0 + 1, w0, H, W, start, M, m, d, in_level, d_mask, D)
            _, _, v4 = _corner(value_ptr, row_base, h0 + 1, w0 + 1, H, W, start, M, m, d, in_level, d_mask, D)
            s = ((hh * hw)[:, None] * v1.to(ACC_DTYPE) + (hh * lw)[:, None] * v2.to(ACC_DTYPE)
                 + (lh * hw)[:, None] * v3.to(ACC_DTYPE) + (lh * lw)[:, None] * v4.to(ACC_DTYPE))
            acc += tl.where(finite, a, float("nan"))[:, None] * s
    out_offs = qm[:, None] * D + d[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def _scatter(ptrs, aw, go, mask, fixed_scale, FIXED_POINT: tl.constexpr):
    """Value-gradient scatter of ``aw * go`` (``aw``: attention x bilinear weight per query): float atomics,
    or (deterministic) int64 fixed point ``round(aw * go * scale)`` with the product in float64 (exact for
    float32 factors, subnormal ``go`` included) and ``scale`` a float64 power of two."""
    if FIXED_POINT:
        q = tl.floor(aw.to(tl.float64)[:, None] * go.to(tl.float64) * fixed_scale + 0.5).to(tl.int64)
        tl.atomic_add(ptrs, q, mask=mask, sem="relaxed")
    else:
        tl.atomic_add(ptrs, aw[:, None] * go, mask=mask, sem="relaxed")


@triton.jit(do_not_specialize=["fixed_exp"])
def _msda_bwd_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr,
                     grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
                     S, Lq, M, fixed_exp,
                     D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
                     BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
                     FIXED_POINT: tl.constexpr):
    # 1-D grid (no 65535 limit on a second axis): consecutive programs walk the query blocks of one (n, m)
    pid = tl.program_id(0).to(tl.int64)
    n_q_blocks = tl.cdiv(Lq, BLOCK_Q)
    pid_q = pid % n_q_blocks
    pid_nm = pid // n_q_blocks
    n = pid_nm // M
    m = pid_nm % M
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q).to(tl.int64)
    q_mask = q < Lq
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    row_base = n * S
    qm = (n * Lq + q) * M + m
    # 2**fixed_exp as a float64 built from its bits (exact; |fixed_exp| <= 960 < 1023)
    fixed_scale = ((fixed_exp + 1023).to(tl.int64) << 52).to(tl.float64, bitcast=True)
    go = tl.load(grad_out_ptr + qm[:, None] * D + d[None, :], mask=q_mask[:, None] & d_mask[None, :],
                 other=0.0).to(ACC_DTYPE)
    for lvl in range(L):
        H, W, start, fits = _level(shapes_ptr, starts_ptr, lvl, S)
        in_level = q_mask & fits
        for p in range(P):
            loc_off = qm * (L * P) + lvl * P + p
            a = tl.load(attn_ptr + loc_off, mask=q_mask, other=0.0).to(ACC_DTYPE)
            h0, w0, lh, lw, finite = _sample_coords(loc_ptr, loc_off, H, W, q_mask, ACC_DTYPE)
            hh = 1.0 - lh
            hw = 1.0 - lw
            p1, k1, v1 = _corner(value_ptr, row_base, h0, w0, H, W, start, M, m, d, in_level, d_mask, D)
            p2, k2, v2 = _corner(value_ptr, row_base, h0, w0 + 1, H, W, start, M, m, d, in_level, d_mask, D)
            p3, k3, v3 = _corner(value_ptr, row_base, h0 + 1, w0, H, W, start, M, m, d, in_level, d_mask, D)
            p4, k4, v4 = _corner(value_ptr, row_base, h0 + 1, w0 + 1, H, W, start, M, m, d, in_level, d_mask, D)
            g1 = tl.sum(go * v1.to(ACC_DTYPE), axis=1)
            g2 = tl.sum(go * v2.to(ACC_DTYPE), axis=1)
            g3 = tl.sum(go * v3.to(ACC_DTYPE), axis=1)
            g4 = tl.sum(go * v4.to(ACC_DTYPE), axis=1)
            grad_a = hh * hw * g1 + hh * lw * g2 + lh * hw * g3 + lh * lw * g4
            grad_lw = hh * (g2 - g1) + lh * (g4 - g3)
            grad_lh = hw * (g3 - g1) + lw * (g4 - g2)
            nan = float("nan")
            tl.store(grad_attn_ptr + loc_off, tl.where(finite, grad_a, nan), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * loc_off, tl.where(finite, a * grad_lw * W.to(ACC_DTYPE), nan), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * loc_off + 1, tl.where(finite, a * grad_lh * H.to(ACC_DTYPE), nan),
                     mask=q_mask)
            # non-finite samples sit outside the map (k1..k4 are False): nothing is scattered
            _scatter(grad_value_ptr + p1, a * hh * hw, go, k1, fixed_scale, FIXED_POINT)
            _scatter(grad_value_ptr + p2, a * hh * lw, go, k2, fixed_scale, FIXED_POINT)
            _scatter(grad_value_ptr + p3, a * lh * hw, go, k3, fixed_scale, FIXED_POINT)
            _scatter(grad_value_ptr + p4, a * lh * lw, go, k4, fixed_scale, FIXED_POINT)


def _acc_dtype(dtype: torch.dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _launch_config(lq: int, d: int, block_q: int | None):
    block_d = triton.next_power_of_2(max(int(d), 1))
    if block_q is None:
        block_q = max(1, min(64, 4096 // block_d))  # keep a (BLOCK_Q, BLOCK_D) tile ~4k elements
        block_q = min(block_q, triton.next_power_of_2(max(int(lq), 1)))
    return block_q, block_d


def _require_contiguous(**tensors):
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"triton_msda: {name} must be contiguous (ms_deform_attn makes its inputs contiguous)")


def msda_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                 block_q: int | None = None):
    """Forward on contiguous inputs (see ``vit_adapter_ds.ops.ms_deform_attn``, which validates them);
    returns (N, Lq, M*D)."""
    _require_contiguous(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                        sampling_locations=sampling_locations, attention_weights=attention_weights)
    n, s, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    out = value.new_empty((n, lq, m, d))
    if out.numel() == 0:
        return out.view(n, lq, m * d)
    block_q, block_d = _launch_config(lq, d, block_q)
    _, acc = _acc_dtype(value.dtype)
    grid = (triton.cdiv(lq, block_q) * n * m,)
    _msda_fwd_kernel[grid](value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out,
                           s, lq, m, D=d, L=n_levels, P=n_points, BLOCK_Q=block_q, BLOCK_D=block_d,
                           ACC_DTYPE=acc)
    return out.view(n, lq, m * d)


def msda_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output,
                  block_q: int | None = None, deterministic: bool = False):
    """Gradients (value, sampling_locations, attention_weights) in float32 (float64 for float64 value).

    ``deterministic``: accumulate the value gradient in int64 fixed point (bitwise reproducible; resolution
    ``2**-e`` with ``e`` from :func:`.fixed_point.fixed_point_exponent`, about 2**-62 of
    sum|attn| * max|grad_out|, at any magnitude) instead of float atomics. Non-finite weights or grad_output
    make the deterministic value gradient all NaN."""
    _require_contiguous(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                        sampling_locations=sampling_locations, attention_weights=attention_weights,
                        grad_output=grad_output)
    n, s, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    acc_t, acc = _acc_dtype(value.dtype)
    exponent = fixed_point_exponent(attention_weights, grad_output) if deterministic else 0
    grad_value = torch.zeros(value.shape, dtype=torch.int64 if deterministic else acc_t, device=value.device)
    grad_loc = torch.zeros(sampling_locations.shape, dtype=acc_t, device=value.device)
    grad_attn = torch.zeros(attention_weights.shape, dtype=acc_t, device=value.device)
    if n * lq * m * d > 0:
        block_q, block_d = _launch_config(lq, d, block_q)
        grid = (triton.cdiv(lq, block_q) * n * m,)
        _msda_bwd_kernel[grid](value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                               grad_output, grad_value, grad_loc, grad_attn,
                               s, lq, m, exponent or 0, D=d, L=n_levels, P=n_points, BLOCK_Q=block_q, BLOCK_D=block_d,
                               ACC_DTYPE=acc, FIXED_POINT=deterministic)
    if deterministic:
        grad_value = (grad_value.double() * 2.0 ** -(exponent or 0)).to(acc_t)
        if exponent is None:
            grad_value.fill_(float("nan"))
    return grad_value, grad_loc, grad_attn
