"""Edge-case checks of the ``ms_deform_attn`` contract (ops/README.md), shared by every backend's tests.

Each ``check_*`` takes the implementation under test as a callable and raises ``AssertionError`` on a
violation; the pytorch backend runs them in-process (``test_ops_validation.py``), the Triton kernels under
the interpreter (``msda_triton_interpret.py``), the CUDA kernels in the emulator (``msda_cuda_emu_checks.py``)
and both fused backends on a GPU (``test_ops_gpu.py``). References are float64 ``ms_deform_attn_reference``
(checked against explicit loops in ``test_ops_reference.py``) and hand-built expectations.
"""
import re

import torch

from msda_naive import make_inputs
from vit_adapter_ds.ops import ms_deform_attn_reference

LEVELS = [(3, 4), (2, 2)]  # S = 16


def reference_fwd_bwd(value, shapes, starts, loc, attn, grad_out):
    """float64 reference (out, grad_value, grad_loc, grad_attn)."""
    leaves = [t.detach().double().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn_reference(leaves[0], shapes, starts, leaves[1], leaves[2])
    out.backward(grad_out.double())
    return (out.detach(), *(t.grad for t in leaves))


def autograd_fwd_bwd(op):
    """``fwd_bwd(value, shapes, starts, loc, attn, grad_out) -> (out, grad_value, grad_loc, grad_attn)``
    through ``op`` (the public ``ms_deform_attn`` with a fixed backend) and autograd."""
    def run(value, shapes, starts, loc, attn, grad_out):
        leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
        out = op(leaves[0], shapes, starts, leaves[1], leaves[2])
        out.backward(grad_out)
        return (out.detach(), *(t.grad for t in leaves))
    return run


def _rel_err(got, want):
    scale = float(want.abs().max())
    return float((got.double() - want).abs().max()) / (scale if scale > 0 else 1.0)


def _raises(fn, exc, pattern):
    try:
        fn()
    except exc as err:
        assert re.search(pattern, str(err)), f"{type(err).__name__} {err!s} does not match {pattern!r}"
        return str(err)
    raise AssertionError(f"no {exc.__name__} matching {pattern!r}")


def check_bad_geometry_refused(op):
    """Geometry that does not fit value, bad shapes and devices: one clear error each."""
    value, shapes, starts, loc, attn = make_inputs(1, 2, 1, 2, [(5, 7), (2, 5)], 1, dtype=torch.float32)
    msgs = [_raises(lambda: op(value[:, :20], shapes, starts, loc, attn), ValueError,
                    r"need 45 rows of value .* value\.shape\[1\] is 20")]
    msgs.append(_raises(lambda: op(value, shapes, torch.tensor([0, 50]), loc, attn), ValueError,
                        r"level_start_index \[0, 50\] must be the exclusive cumulative sum .*\[0, 35\]"))
    msgs.append(_raises(lambda: op(value, shapes, torch.tensor([0, 30]), loc, attn), ValueError, r"\[0, 35\]"))
    msgs.append(_raises(lambda: op(value[:, :39], torch.tensor([[5, 7], [-2, -2]]), starts, loc, attn), ValueError,
                        "must be positive"))
    msgs.append(_raises(lambda: op(value, shapes[:1], starts, loc, attn), ValueError,
                        r"spatial_shapes must have shape"))
    msgs.append(_raises(lambda: op(value, shapes, starts[:1], loc, attn), ValueError,
                        r"level_start_index must have shape"))
    msgs.append(_raises(lambda: op(value, shapes, starts, loc.to("meta"), attn), ValueError,
                        "sampling_locations is on meta but value is on cpu"))
    msgs.append(_raises(lambda: op(value, shapes, starts, loc, attn[..., :1, :]), ValueError, "attention_weights"))
    return f"{len(msgs)} errors, e.g. {msgs[0]!r}"


def check_unchecked_level_is_masked(fwd_bwd_kernels):
    """The kernels themselves (no input check in front): a level whose rows do not fit inside value is treated
    as outside the map -- no out-of-bounds access, the other levels are exact."""
    value, shapes, starts, loc, attn = make_inputs(1, 5, 2, 3, LEVELS, 2, dtype=torch.float32, lo=0.05, hi=0.95,
                                                   seed=21)
    grad_out = torch.randn(1, 5, 6, generator=torch.Generator().manual_seed(2))
    only_level0 = attn.clone()
    only_level0[:, :, :, 1] = 0
    want = reference_fwd_bwd(value, shapes, starts, loc, only_level0, grad_out)
    bad = [(shapes, torch.tensor([0, 14])),  # level 1 would need rows 14..17 of 16
           (torch.tensor([[3, 4], [1000, 1000]]), starts),  # a huge level
           (shapes, torch.tensor([0, -4])),  # starts before the first row
           (torch.tensor([[3, 4], [2, -2]]), starts)]  # negative width
    for bad_shapes, bad_starts in bad:
        out, gv, gl, ga = fwd_bwd_kernels(value, bad_shapes, bad_starts, loc, attn, grad_out)
        assert _rel_err(out, want[0]) <= 2e-6, (bad_shapes.tolist(), bad_starts.tolist(), "output")
        assert _rel_err(gv, want[1]) <= 2e-6, (bad_shapes.tolist(), bad_starts.tolist(), "grad_value")
        assert _rel_err(gl[:, :, :, 0], want[2][:, :, :, 0]) <= 2e-6
        assert _rel_err(ga[:, :, :, 0], want[3][:, :, :, 0]) <= 2e-6
        assert gl[:, :, :, 1].abs().max() == 0 and ga[:, :, :, 1].abs().max() == 0
    return f"{len(bad)} corrupted geometries masked"


def check_input_types(op):
    """Integer / bool value refused, float spatial_shapes refused, Python sequences accepted."""
    value, shapes, starts, loc, attn = make_inputs(1, 3, 1, 2, LEVELS, 2, dtype=torch.float32, seed=5)
    _raises(lambda: op(value.long(), shapes, starts, loc, attn), TypeError, r"value must be float.*got torch\.int64")
    _raises(lambda: op(value.bool(), shapes, starts, loc, attn), TypeError, "value must be float")
    _raises(lambda: op(value, shapes, starts, loc.long(), attn), TypeError, "sampling_locations must be float")
    _raises(lambda: op(value, shapes.float(), starts, loc, attn), TypeError, "spatial_shapes must hold integers")
    _raises(lambda: op(value, "3x4", starts, loc, attn), TypeError, "spatial_shapes")
    want = op(value, shapes, starts, loc, attn)
    for as_list in ((LEVELS, [0, 12]), ([list(s) for s in LEVELS], (0, 12)), (shapes.int(), starts.int()),
                    (shapes.numpy(), starts.numpy())):
        got = op(value, *as_list, loc, attn)
        assert torch.equal(got, want), as_list
    return "refused int/bool value, int locations, float shapes; accepted lists, tuples, int32, NumPy"


def check_double_backward_refused(op):
    """The fused kernels are once differentiable: differentiating the gradients raises a clear error."""
    value, shapes, starts, loc, attn = make_inputs(1, 2, 1, 2, LEVELS, 1, dtype=torch.float32, seed=6)
    value.requires_grad_()
    (grad,) = torch.autograd.grad(op(value, shapes, starts, loc, attn).square().sum(), value, create_graph=True)
    return _raises(lambda: grad.sum().backward(), RuntimeError, "once_differentiable")


def check_non_finite_locations(fwd_bwd, fused=True):
    """A sample with a NaN / +inf / -inf coordinate is NaN: its output row (n, q, m, :) and its attention-weight
    gradient are NaN, its location gradient has a NaN (both coordinates on the fused backends), nothing is
    added to the value gradient; everything else equals the float64 reference."""
    value, shapes, starts, loc, attn = make_inputs(1, 4, 2, 3, LEVELS, 2, dtype=torch.float32, seed=8)
    bad = [(0, 0, 0, 0, 0), (0, 1, 1, 1, 0), (0, 2, 0, 0, 1)]  # (n, q, m, l, p)
    for (n, q, m, lvl, p), coord, x in zip(bad, (0, 1, 0), (float("nan"), float("inf"), -float("inf"))):
        loc[n, q, m, lvl, p, coord] = x
    grad_out = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(4))
    out, gv, gl, ga = fwd_bwd(value, shapes, starts, loc, attn, grad_out)
    ref_out, ref_gv, ref_gl, ref_ga = reference_fwd_bwd(value, shapes, starts, loc, attn, grad_out)
    bad_rows = torch.zeros(1, 4, 2, dtype=torch.bool)
    bad_samples = torch.zeros(attn.shape, dtype=torch.bool)
    for n, q, m, lvl, p in bad:
        bad_rows[n, q, m] = True
        bad_samples[n, q, m, lvl, p] = True
    out_nan = out.view(1, 4, 2, 3).isnan()
    assert torch.equal(out_nan, bad_rows[..., None].expand(1, 4, 2, 3)), "NaN output rows"
    assert torch.equal(ref_out.view(1, 4, 2, 3).isnan(), out_nan), "the reference agrees on the NaN rows"
    assert _rel_err(out.view(1, 4, 2, 3)[~out_nan], ref_out.view(1, 4, 2, 3)[~out_nan]) <= 2e-6
    assert torch.equal(ga.isnan(), bad_samples) and _rel_err(ga[~bad_samples], ref_ga[~bad_samples]) <= 2e-6
    loc_nan = gl.isnan()
    assert torch.equal(loc_nan.any(-1), bad_samples), "NaN location gradients only at the non-finite samples"
    if fused:
        assert torch.equal(loc_nan.all(-1), bad_samples), "fused backends: both coordinates NaN"
    assert _rel_err(gl[~bad_samples], ref_gl[~bad_samples]) <= 2e-6
    assert torch.isfinite(gv).all() and _rel_err(gv, ref_gv) <= 2e-6, "value gradient untouched by NaN samples"
    return f"{len(bad)} non-finite samples -> NaN rows, exact elsewhere"


def check_fixed_point_range(deterministic_grads, with_reference_gap=True):
    """The deterministic (fixed-point) value gradient keeps float32 accuracy for tiny (1e-36, 1e-38:
    subnormal contributions) and huge (1e35) grad_output, and is all NaN for a NaN grad_output.
    ``deterministic_grads(value, shapes, starts, loc, attn, grad_out) -> (grad_value, grad_loc, grad_attn)``."""
    value, shapes, starts, loc, attn = make_inputs(1, 6, 2, 4, LEVELS, 2, dtype=torch.float32, lo=0.1, hi=0.9,
                                                   seed=9)
    base = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    errs = []
    for scale in (1e-36, 1e-38, 1.0, 1e35):
        grad_out = (base * scale).float()
        gv = deterministic_grads(value, shapes, starts, loc, attn, grad_out)[0]
        want = reference_fwd_bwd(value, shapes, starts, loc, attn, grad_out)[1]
        err = _rel_err(gv, want)
        assert gv.dtype == torch.float32 and torch.isfinite(gv).all() and err <= 2e-6, (scale, err)
        errs.append(err)
    grad_out = base.float()
    grad_out[0, 0, 0] = float("nan")
    gv = deterministic_grads(value, shapes, starts, loc, attn, grad_out)[0]
    assert gv.isnan().all(), "a NaN grad_output must not be hidden by the fixed-point path"
    return "rel errs at 1e-36, 1e-38, 1, 1e35: " + ", ".join(f"{e:.1e}" for e in errs)
