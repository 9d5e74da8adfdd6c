"""Builder functions for the official backbone configurations (spec §3), timm style.

    from vit_adapter_ds.models import create_backbone
    model = create_backbone("vit_adapter_large", pretrained="pretrained/L_16-i21k-...-res_384.pth")

Each preset is exactly the official ``backbone=dict(...)`` of the named config (drop-path of the UperNet recipes);
keyword overrides win.
"""
from __future__ import annotations

from .backbones import BEiTAdapter, ViTAdapter

_I12 = [[0, 2], [3, 5], [6, 8], [9, 11]]
_I24 = [[0, 5], [6, 11], [12, 17], [18, 23]]
_BEIT_L = dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4, qkv_bias=True, use_abs_pos_emb=False,
               use_rel_pos_bias=True, init_values=1e-6, conv_inplane=64, n_points=4, deform_num_heads=16,
               cffn_ratio=0.25, deform_ratio=0.5, interaction_indexes=_I24)

PRESETS: dict[str, tuple[type, dict]] = {
    # UperNet ADE20K 512 (DeiT-T/S/B, AugReg-L)
    "vit_adapter_tiny": (ViTAdapter, dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4,
                                          drop_path_rate=0.1, conv_inplane=64, n_points=4, deform_num_heads=6,
                                          cffn_ratio=0.25, deform_ratio=1.0, interaction_indexes=_I12)),
    "vit_adapter_small": (ViTAdapter, dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                                           drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=6,
                                           cffn_ratio=0.25, deform_ratio=1.0, interaction_indexes=_I12)),
    "vit_adapter_base": (ViTAdapter, dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                          drop_path_rate=0.3, conv_inplane=64, n_points=4, deform_num_heads=12,
                                          cffn_ratio=0.25, deform_ratio=0.5, interaction_indexes=_I12)),
    "vit_adapter_large": (ViTAdapter, dict(img_size=384, pretrain_size=384, patch_size=16, embed_dim=1024, depth=24,
                                           num_heads=16, mlp_ratio=4, drop_path_rate=0.4, conv_inplane=64, n_points=4,
                                           deform_num_heads=16, cffn_ratio=0.25, deform_ratio=0.5, with_cp=True,
                                           interaction_indexes=_I24)),
    # UperNet ADE20K 640 and Mask2Former 896 (segmentation BEiT: img_size = crop size)
    "beit_adapter_large_640": (BEiTAdapter, dict(img_size=640, drop_path_rate=0.3, with_cp=True, **_BEIT_L)),
    "beit_adapter_large_896": (BEiTAdapter, dict(img_size=896, drop_path_rate=0.3, with_cp=True, **_BEIT_L)),
    # Mask R-CNN 3x (detection ViT-Adapter) and HTC++ (detection BEiT-Adapter)
    "vit_adapter_small_det": (ViTAdapter, dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                                               drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=6,
                                               cffn_ratio=0.25, deform_ratio=1.0, interaction_indexes=_I12,
                                               window_attn=[True, True, False] * 4, window_size=[14] * 12,
                                               task="detection")),
    "beit_adapter_large_det": (BEiTAdapter, dict(img_size=224, drop_path_rate=0.4, window_attn=[True] * 24,
                                                 window_size=[14, 14, 14, 14, 14, 56] * 4, task="detection",
                                                 **_BEIT_L)),
}


def create_backbone(name: str, **overrides):
    """Build an official backbone preset by name; ``overrides`` replace preset arguments."""
    if name not in PRESETS:
        raise ValueError(f"unknown backbone preset {name!r}; choose one of {sorted(PRESETS)}")
    cls, cfg = PRESETS[name]
    return cls(**{**cfg, **overrides})
