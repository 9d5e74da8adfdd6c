"""Stand-in for the compiled Deformable-DETR extension ``MultiScaleDeformableAttention`` (CPU, any dtype).

The forward is the official pure-PyTorch ``ms_deform_attn_core_pytorch`` (``ops/functions/ms_deform_attn_func.py``,
which imports this module); the backward is autograd through the same function. The CUDA kernel computes the same
bilinear sampling, so this is the official op up to floating-point summation order.
"""
import torch


def _core():
    from ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch
    return ms_deform_attn_core_pytorch


def ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                           im2col_step):
    return _core()(value, spatial_shapes, sampling_locations, attention_weights)


def ms_deform_attn_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                            grad_output, im2col_step):
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(True) for t in (value, sampling_locations, attention_weights)]
        out = _core()(inputs[0], spatial_shapes, inputs[1], inputs[2])
        return torch.autograd.grad(out, inputs, grad_output)
