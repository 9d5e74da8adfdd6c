"""Multi-scale deformable attention ops, installed as ``vit_adapter_ds.ops``.

``ms_deform_attn`` is the one entry point; today it runs the pure-PyTorch reference. Fused kernels
(CUDA extension, Triton) plug in behind the same function.
"""
from .reference import ms_deform_attn_reference


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Multi-scale deformable attention; see :func:`ms_deform_attn_reference` for shapes and semantics."""
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


__all__ = ["ms_deform_attn", "ms_deform_attn_reference"]
