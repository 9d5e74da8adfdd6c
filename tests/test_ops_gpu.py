"""CUDA extension and Triton kernels on a GPU against the float64 reference (skipped without CUDA)."""
import pytest
import torch

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
