"""CUDA extension and Triton kernels on a GPU against the float64 reference (skipped without CUDA)."""
import pytest
import torch

from msda_edge_cases import (autograd_fwd_bwd, check_double_backward_refused, check_fixed_point_range,
                             check_non_finite_locations, check_unchecked_level_is_masked)
from msda_naive import make_inputs
from vit_adapter_ds.ops import ms_deform_attn, ms_deform_attn_reference

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# max |error| / max |reference| allowed per dtype (documented in ops/README.md)
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
LEVELS = [(13, 21), (7, 11), (4, 6), (1, 3)]


def _rel_err(got, want):
    return float((got.double() - want).abs().max()) / max(float(want.abs().max()), 1e-3)


def _run(backend, inputs, grad_out):
    leaves = [t.detach().clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = ms_deform_attn(*leaves, backend=backend)
    out.backward(grad_out)
    return out.detach(), [leaves[i].grad for i in (0, 3, 4)]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n,lq,m,d", [(3, 37, 4, 32), (2, 50, 3, 20), (80, 3, 1, 5)])
def test_matches_reference(backend, dtype, n, lq, m, d):
    inputs = [t.cuda() for t in make_inputs(n, lq, m, d, LEVELS, 4, dtype=dtype, seed=lq)]
    grad_out = torch.randn(n, lq, m * d, device="cuda", dtype=torch.float64).to(dtype)
    out, grads = _run(backend, inputs, grad_out)
    leaves = [t.double().requires_grad_() if t.is_floating_point() else t for t in inputs]
    ref = ms_deform_attn_reference(*leaves)
    ref.backward(grad_out.double())
    assert out.dtype == dtype
    assert _rel_err(out, ref) <= RTOL[dtype]
    for got, leaf in zip(grads, (leaves[0], leaves[3], leaves[4])):
        assert got.dtype == dtype
        assert _rel_err(got, leaf.grad) <= RTOL[dtype]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_bf16_value_fp32_locations(backend):
    value, shapes, starts, loc, attn = [t.cuda() for t in make_inputs(2, 40, 4, 32, LEVELS, 4, seed=1)]
    out = ms_deform_attn(value.bfloat16(), shapes, starts, loc.float(), attn.float(), backend=backend)
    ref = ms_deform_attn_reference(value.bfloat16().double(), shapes, starts, loc, attn)
    assert out.dtype == torch.bfloat16 and _rel_err(out, ref) <= RTOL[torch.bfloat16]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_deterministic_mode_is_bitwise_reproducible(backend):
    from vit_adapter_ds.ops import resolve_backend

    assert resolve_backend(torch.device("cuda")) == "cuda"
    inputs = [t.cuda() for t in make_inputs(2, 300, 8, 32, LEVELS, 4, dtype=torch.float32, lo=0.3, hi=0.7)]
    grad_out = torch.randn(2, 300, 8 * 32, device="cuda")
    try:
        torch.use_deterministic_algorithms(True)
        runs = [_run(backend, inputs, grad_out)[1] for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(False)
    for grads in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[0]))
    leaves = [t.double().requires_grad_() if t.is_floating_point() else t for t in inputs]
    ms_deform_attn_reference(*leaves).backward(grad_out.double())
    assert _rel_err(runs[0][0], leaves[0].grad) <= RTOL[torch.float32]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_int64_offsets(backend):
    """value with more than 2**31 elements: samples near the end must address the right memory."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs >= 24 GiB of GPU memory")
    n, m, d = 1, 1, 8
    h, w = 2**15, 2**13 + 1  # S * M * D = 2**31 + 2**18 elements (bf16: 4 GiB)
    value = torch.zeros(n, h * w, m, d, device="cuda", dtype=torch.bfloat16)
    value[0, -1] = 1.0  # last pixel (h - 1, w - 1)
    shapes = torch.tensor([[h, w]], device="cuda")
    starts = torch.zeros(1, dtype=torch.long, device="cuda")
    loc = torch.tensor([(w - 0.5) / w, (h - 0.5) / h], device="cuda", dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    attn = torch.ones(1, 1, 1, 1, 1, device="cuda")
    out = ms_deform_attn(value, shapes, starts, loc.float(), attn, backend=backend)
    torch.testing.assert_close(out.float(), torch.ones(1, 1, d, device="cuda"), rtol=0, atol=1e-2)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_injector_size(backend, dtype):
    """ViT-Adapter-L injector geometry (3136 queries, 112^2/56^2/28^2, 16 heads x 32, 4 points)."""
    levels = [(112, 112), (56, 56), (28, 28)]
    inputs = [t.cuda() for t in make_inputs(1, 3136, 16, 32, levels, 4, dtype=dtype, lo=-0.05, hi=1.05, seed=3)]
    grad_out = torch.randn(1, 3136, 16 * 32, device="cuda", dtype=torch.float64).to(dtype)
    out, grads = _run(backend, inputs, grad_out)
    leaves = [t.double().requires_grad_() if t.is_floating_point() else t for t in inputs]
    ref = ms_deform_attn_reference(*leaves)
    ref.backward(grad_out.double())
    assert _rel_err(out, ref) <= RTOL[dtype]
    for got, leaf in zip(grads, (leaves[0], leaves[3], leaves[4])):
        assert _rel_err(got, leaf.grad) <= RTOL[dtype]


# --- the input contract (ops/README.md) on the GPU: the same edge cases as the CPU backends ---

def _op(backend):
    return lambda *args: ms_deform_attn(*[t.cuda() if isinstance(t, torch.Tensor) else t for t in args],
                                        backend=backend)


def _cpu_fwd_bwd(backend):
    """fwd_bwd on CUDA tensors, results back on the CPU (for msda_edge_cases' CPU references)."""
    run = autograd_fwd_bwd(lambda *args: ms_deform_attn(*args, backend=backend))

    def fwd_bwd(*args):
        return tuple(t.cpu() for t in run(*[t.cuda() for t in args]))
    return fwd_bwd


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_bad_geometry_and_types_are_refused(backend):
    value, shapes, starts, loc, attn = make_inputs(1, 2, 1, 2, [(5, 7), (2, 5)], 1, dtype=torch.float32)
    op = _op(backend)
    with pytest.raises(ValueError, match=r"need 45 rows of value .* value\.shape\[1\] is 20"):
        op(value[:, :20], shapes, starts, loc, attn)  # shapes on the GPU: read back once, then cached
    with pytest.raises(ValueError, match="level_start_index"):
        op(value, shapes, torch.tensor([0, 50]), loc, attn)
    with pytest.raises(ValueError, match="sampling_locations is on cpu but value is on cuda"):
        ms_deform_attn(value.cuda(), shapes, starts, loc, attn.cuda(), backend=backend)
    with pytest.raises(TypeError, match="value must be float"):
        op(value.long(), shapes, starts, loc, attn)
    assert torch.equal(op(value, [(5, 7), (2, 5)], [0, 35], loc, attn), op(value, shapes, starts, loc, attn))


def test_cuda_launcher_checks_the_geometry_itself():
    from vit_adapter_ds.ops import cuda_ext

    ext = cuda_ext.build()
    value, shapes, starts, loc, attn = [t.cuda() for t in make_inputs(1, 2, 1, 2, [(5, 7), (2, 5)], 1,
                                                                       dtype=torch.float32)]
    with pytest.raises(RuntimeError, match=r"need 45 rows of value .* value\.shape\[1\] is 20"):
        ext.forward(value[:, :20].contiguous(), shapes, starts, loc, attn)
    with pytest.raises(RuntimeError, match="level_start_index"):
        ext.forward(value, shapes, torch.tensor([0, 50], device="cuda"), loc, attn)
    with pytest.raises(RuntimeError, match="value must be float"):
        ext.forward(value.long(), shapes, starts, loc, attn)
    with pytest.raises(RuntimeError, match="int64"):
        ext.forward(value, shapes.int(), starts, loc, attn)


def test_geometry_of_gpu_tensors_is_read_once_per_geometry(monkeypatch):
    from vit_adapter_ds.ops import checks

    value, shapes, starts, loc, attn = [t.cuda() for t in make_inputs(1, 2, 1, 2, [(3, 4), (2, 2)], 1)]
    calls = []
    real = checks.check_geometry_values
    monkeypatch.setattr(checks, "check_geometry_values", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(checks, "_validated", {})
    for _ in range(3):
        ms_deform_attn(value, shapes, starts, loc, attn, backend="pytorch")
    assert len(calls) == 1
    starts[1] = 5  # in place: the version counter changes, so the geometry is checked again (and refused)
    with pytest.raises(ValueError, match="level_start_index"):
        ms_deform_attn(value, shapes, starts, loc, attn, backend="pytorch")
    monkeypatch.setenv(checks.CHECK_ENV_VAR, "always")
    starts[1] = 12
    for _ in range(2):
        ms_deform_attn(value, shapes, starts, loc, attn, backend="pytorch")
    assert len(calls) == 4


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_unchecked_bad_level_is_masked(backend):
    from vit_adapter_ds.ops import cuda_ext, triton_msda

    def kernels(value, shapes, starts, loc, attn, grad_out):
        args = [t.cuda().contiguous() for t in (value, shapes, starts, loc, attn)]
        if backend == "cuda":
            ext = cuda_ext.build()
            out = ext.forward(*args, check_geometry=False)
            grads = ext.backward(*args, grad_out.cuda(), False, check_geometry=False)
        else:
            out = triton_msda.msda_forward(*args)
            grads = triton_msda.msda_backward(*args, grad_out.cuda())
        torch.cuda.synchronize()
        return (out.cpu(), *(g.cpu() for g in grads))

    check_unchecked_level_is_masked(kernels)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_double_backward_is_refused(backend):
    check_double_backward_refused(_op(backend))


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_non_finite_locations_are_nan(backend):
    check_non_finite_locations(_cpu_fwd_bwd(backend))


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_deterministic_range_tiny_and_huge_gradients(backend):
    run = _cpu_fwd_bwd(backend)
    try:
        torch.use_deterministic_algorithms(True)
        check_fixed_point_range(lambda *args: run(*args)[1:])
    finally:
        torch.use_deterministic_algorithms(False)
