"""Backend selection of ``ms_deform_attn`` on CPU (argument, environment variable, errors, one log line)."""
import logging
import os
import subprocess
import sys

import pytest
import torch

import vit_adapter_ds.ops as ops
from vit_adapter_ds.ops import msda
from msda_naive import make_inputs
from vit_adapter_ds.ops import ms_deform_attn, ms_deform_attn_reference, resolve_backend

CPU = torch.device("cpu")


@pytest.fixture
def inputs():
    return make_inputs(2, 3, 2, 4, [(3, 5), (2, 2)], 2, dtype=torch.float32)


def test_auto_on_cpu_is_the_reference(inputs, monkeypatch):
    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    assert resolve_backend(CPU) == "pytorch"
    assert torch.equal(ms_deform_attn(*inputs), ms_deform_attn_reference(*inputs))


def test_env_var_and_argument(monkeypatch):
    monkeypatch.setenv(ops.ENV_VAR, "PyTorch")
    assert resolve_backend(CPU) == "pytorch"
    monkeypatch.setenv(ops.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        resolve_backend(CPU)
    assert resolve_backend(CPU, "auto") == "pytorch"  # the argument wins over the environment


def test_unavailable_explicit_backends_raise(monkeypatch):
    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="CUDA tensors"):
        resolve_backend(CPU, "cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        resolve_backend(CPU, "triton")


def test_choice_is_logged_once(inputs, caplog, monkeypatch):
    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    monkeypatch.setattr(msda, "_logged", set())
    with caplog.at_level(logging.INFO, logger="vit_adapter_ds.ops"):
        ms_deform_attn(*inputs)
        ms_deform_attn(*inputs)
    msgs = [r.getMessage() for r in caplog.records if "backend" in r.getMessage()]
    assert msgs == ["ms_deform_attn: using the pytorch backend for cpu tensors"]


def test_bad_shapes_are_reported(inputs):
    value, shapes, starts, loc, attn = inputs
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, shapes, starts, loc, attn[..., :1])
    with pytest.raises(ValueError, match="value"):
        ms_deform_attn(value[:1], shapes, starts, loc, attn)
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value, shapes[:1], starts, loc, attn)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="interpreter set globally")
def test_interpreter_flag_set_after_import_is_reported(monkeypatch):
    pytest.importorskip("triton")
    from vit_adapter_ds.ops import triton_msda  # noqa: F401 - imported without the interpreter

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="before importing"):
        resolve_backend(CPU, "triton")


def test_cpu_half_inputs_are_computed_in_float32():
    """In a subprocess: grid_sample's bf16/fp16 CPU kernel segfaults on the reference's strided views
    (torch 2.14.1, levels >= ~56x56); ms_deform_attn must not, and must match the float64 reference."""
    code = """
import torch
from msda_naive import make_inputs
from vit_adapter_ds.ops import ms_deform_attn, ms_deform_attn_reference
for dtype in (torch.bfloat16, torch.float16):
    value, shapes, starts, loc, attn = make_inputs(1, 40, 16, 32, [(112, 112), (56, 56)], 2, dtype=dtype)
    value.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn, backend="pytorch")
    out.float().sum().backward()
    exact = ms_deform_attn_reference(value.double(), shapes, starts, loc.double(), attn.double())
    err = float((out.double() - exact).abs().max() / exact.abs().max())
    assert out.dtype == dtype and value.grad.dtype == dtype and err < 1e-2, (dtype, err)
print("OK")
"""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "helpers")] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "OK" in proc.stdout, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_reference_path_accepts_mixed_dtypes(inputs):
    value, shapes, starts, loc, attn = inputs
    out = ms_deform_attn(value.double(), shapes, starts, loc, attn, backend="pytorch")  # f64 value, f32 locations
    assert out.dtype == torch.float64
    exact = ms_deform_attn_reference(value.double(), shapes, starts, loc.double(), attn.double())
    torch.testing.assert_close(out, exact, rtol=1e-6, atol=1e-6)
