"""The official configurations checked for fidelity (docs/official-architecture.md §3), with the small inputs used for the goldens.

``official`` names the official class (segmentation / detection copy); ``kwargs`` are the official
``backbone=dict(...)`` arguments, accepted unchanged by our ``ViTAdapter`` / ``BEiTAdapter`` / ``UniPerceiverAdapter``
(plus ``task``) and the baselines.
Drop-path is 0 so that train-mode checks are deterministic.
"""
from __future__ import annotations

I12 = [[0, 2], [3, 5], [6, 8], [9, 11]]
I24 = [[0, 5], [6, 11], [12, 17], [18, 23]]
_COMMON = dict(patch_size=16, mlp_ratio=4, conv_inplane=64, n_points=4, cffn_ratio=0.25, drop_path_rate=0.0)
_BEIT_L = dict(embed_dim=1024, depth=24, num_heads=16, qkv_bias=True, use_abs_pos_emb=False, use_rel_pos_bias=True,
               init_values=1e-6, deform_num_heads=16, deform_ratio=0.5, interaction_indexes=I24)

VARIANTS: dict[str, dict] = {
    "vit_adapter_tiny": dict(
        official="seg_vit", task="segmentation", input=(2, 3, 64, 96), slow=False,
        kwargs=dict(_COMMON, embed_dim=192, depth=12, num_heads=3, deform_num_heads=6, deform_ratio=1.0,
                    interaction_indexes=I12)),
    "vit_adapter_small": dict(
        official="seg_vit", task="segmentation", input=(2, 3, 64, 96), slow=False,
        kwargs=dict(_COMMON, embed_dim=384, depth=12, num_heads=6, deform_num_heads=6, deform_ratio=1.0,
                    interaction_indexes=I12)),
    "vit_adapter_base": dict(
        official="seg_vit", task="segmentation", input=(2, 3, 64, 96), slow=False,
        kwargs=dict(_COMMON, embed_dim=768, depth=12, num_heads=12, deform_num_heads=12, deform_ratio=0.5,
                    interaction_indexes=I12)),
    "vit_adapter_large": dict(  # AugReg-L: pos_embed grid 24x24 resized on every forward
        official="seg_vit", task="segmentation", input=(1, 3, 64, 96), slow=True,
        kwargs=dict(_COMMON, img_size=384, pretrain_size=384, embed_dim=1024, depth=24, num_heads=16,
                    deform_num_heads=16, deform_ratio=0.5, interaction_indexes=I24)),
    "beit_adapter_large": dict(  # segmentation BEiT: input must be exactly img_size
        official="seg_beit", task="segmentation", input=(1, 3, 64, 64), slow=True,
        kwargs=dict(_COMMON, img_size=64, **_BEIT_L)),
    "vit_adapter_small_det": dict(  # 16x20 token grid: 14-windows pad to 28x28
        official="det_vit", task="detection", input=(2, 3, 256, 320), slow=False,
        kwargs=dict(_COMMON, embed_dim=384, depth=12, num_heads=6, deform_num_heads=6, deform_ratio=1.0,
                    interaction_indexes=I12, window_attn=[True, True, False] * 4, window_size=[14] * 12)),
    "beit_adapter_large_det": dict(  # 16x20 grid: 14-windows pad to 28x28, 56-windows to 56x56
        official="det_beit", task="detection", input=(1, 3, 256, 320), slow=True,
        kwargs=dict(_COMMON, img_size=224, window_attn=[True] * 24, window_size=[14, 14, 14, 14, 14, 56] * 4,
                    **_BEIT_L)),
    "beit_large_baseline": dict(  # the plain BEiT-L of upernet_beit_large_512_160k_ade20k (no adapter, fpn1-4)
        official="seg_beit_baseline", task="segmentation", input=(1, 3, 64, 64), slow=True,
        kwargs=dict(img_size=64, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4, qkv_bias=True,
                    use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-6, drop_path_rate=0.0,
                    out_indices=[7, 11, 15, 23])),
    "vit_baseline_small_det": dict(  # the plain DeiT-S of mask_rcnn_deit_small_fpn_3x_coco; 12x18 grid, 14-windows
        official="det_vit_baseline", task="detection", input=(2, 3, 192, 288), slow=False,  # padded to 14x28
        kwargs=dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, drop_path_rate=0.0,
                    out_indices=[2, 5, 8, 11], window_attn=[True, True, False] * 4,
                    window_size=[14, 14, None] * 4)),
}
# The light adapter of upernet_deit_adapter_light_base_512_160k_ade20k: one interaction over the 12 blocks, no
# ConvFFN, no extra extractors, no ViT features added to the pyramid.
VARIANTS["vit_adapter_light_base"] = dict(
    official="seg_vit", task="segmentation", input=(2, 3, 64, 96), slow=False,
    kwargs=dict(_COMMON, embed_dim=768, depth=12, num_heads=12, deform_num_heads=12, deform_ratio=0.5,
                interaction_indexes=[[0, 11]], with_cffn=False, use_extra_extractor=False, add_vit_feature=False,
                window_attn=[False] * 12, window_size=[None] * 12))
# Uni-Perceiver-Adapter at base size (the large recipes differ only in sizes): the backbone of
# upernet_uniperceiver_adapter_large_512_160k_ade20k (global attention; the 14x14 position table resized to 4x6) and
# of mask_rcnn_uniperceiver_adapter_base_fpn_3x_coco (12x18 token grid: 14-windows pad it to 14x28 before in_proj).
VARIANTS["uniperceiver_adapter_base"] = dict(
    official="seg_uniperceiver", task="segmentation", input=(2, 3, 64, 96), slow=False,
    kwargs=dict(_COMMON, embed_dim=768, depth=12, num_heads=12, deform_num_heads=12, deform_ratio=0.5,
                interaction_indexes=I12, window_attn=[False] * 12, window_size=[None] * 12))
VARIANTS["uniperceiver_adapter_base_det"] = dict(
    official="det_uniperceiver", task="detection", input=(1, 3, 192, 288), slow=False,
    kwargs=dict(_COMMON, embed_dim=768, depth=12, num_heads=12, deform_num_heads=12, deform_ratio=0.5,
                interaction_indexes=I12, window_attn=[True, True, False] * 4, window_size=[14, 14, None] * 4))

# The MAE adapter of upgraded_mask_rcnn/mask_rcnn_mae_adapter_base_lsj_fpn_25ep_coco: ViT-B without layer scale
# (no gamma1 / gamma2), no extra extractors, 14-windows in 8 of the 12 blocks (12x18 token grid padded to 14x28).
VARIANTS["mae_adapter_base_det"] = dict(
    official="det_vit", task="detection", input=(1, 3, 192, 288), slow=False,
    kwargs=dict(_COMMON, embed_dim=768, depth=12, num_heads=12, deform_num_heads=12, deform_ratio=0.5,
                use_extra_extractor=False, layer_scale=False, interaction_indexes=I12,
                window_attn=[True, True, False] * 4, window_size=[14, 14, None] * 4))
# The DINOv2 adapter of mask_rcnn/dinov2/mask_rcnn_dinov2_adapter_small_fpn_3x_coco: ViT-S with pretrain_size =
# img_size = 592, a 37x37 position grid (the 14->16 converted DINOv2 table) resized bicubically to the 12x18 input grid.
VARIANTS["dinov2_adapter_small_det"] = dict(
    official="det_vit", task="detection", input=(1, 3, 192, 288), slow=False,
    kwargs=dict(_COMMON, pretrain_size=592, img_size=592, embed_dim=384, depth=12, num_heads=6, deform_num_heads=6,
                deform_ratio=1.0, interaction_indexes=I12, window_attn=[True, True, False] * 4,
                window_size=[14, 14, None] * 4))

# Batch 1 (the per-GPU batch of the detection / Mask2Former recipes): a cheap case for batch-1 layout effects.
VARIANTS["vit_adapter_tiny_b1"] = dict(VARIANTS["vit_adapter_tiny"], input=(1, 3, 64, 96))

# Batch 1, non-square, windows padded in both directions: a 12x18 token grid, 14-windows pad it to 14x28.
VARIANTS["vit_adapter_small_det_b1"] = dict(VARIANTS["vit_adapter_small_det"], input=(1, 3, 192, 288))

# Train-mode variants (BatchNorm with batch statistics; dropout and drop-path are 0). With batch 1 the input gradient
# through the BatchNorm statistics is ill-conditioned (float32 vs float64: ~2e-5), so it checks the float32 rounding
# of every op, not only the formulas.
TRAIN_VARIANTS = {"vit_adapter_tiny_train": "vit_adapter_tiny",
                  "vit_adapter_small_det_b1_train": "vit_adapter_small_det_b1"}


def grad_keys(name: str) -> list[str]:
    """Representative parameters whose gradients are compared."""
    cfg = VARIANTS[name]
    kw = cfg["kwargs"]
    depth = kw["depth"]
    if cfg["official"] == "seg_beit_baseline":
        return ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", f"blocks.{depth - 1}.mlp.fc2.weight",
                "blocks.1.gamma_1", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias",
                "blocks.0.attn.relative_position_bias_table", "cls_token", "fpn1.0.weight", "fpn1.1.weight",
                "fpn1.3.weight", "fpn2.0.weight"]
    if cfg["official"] == "det_vit_baseline":
        return ["patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.2.attn.qkv.weight",
                f"blocks.{depth - 1}.mlp.fc2.weight", "blocks.1.gamma1", "norm1.weight", "norm4.bias",
                "up1.0.weight", "up1.1.weight", "up1.3.weight", "up2.weight"]
    adapter = ["interactions.0.injector.gamma", "interactions.0.injector.attn.sampling_offsets.weight",
               "interactions.0.injector.attn.value_proj.weight"]
    if cfg["official"].endswith("uniperceiver"):
        return ["visual_embed.patch_embed.proj.weight", "visual_embed.patch_embed.spatial_pos_embed.weight",
                "visual_embed.patch_embed.temporal_pos_embed.weight", "visual_embed.embeddings_norm.weight",
                "layers.0.self_attn.in_proj.weight", "layers.0.self_attn.in_proj.bias", "layers.2.norm1.weight",
                f"layers.{depth - 1}.linear2.weight", "layers.1.gamma_1", "layers.1.gamma_2", *adapter,
                "interactions.1.extractor.attn.attention_weights.weight",
                "interactions.3.extractor.ffn.dwconv.dwconv.weight", "interactions.3.extra_extractors.1.ffn.fc2.weight",
                "interactions.3.extra_extractors.0.query_norm.weight", "spm.stem.0.weight", "spm.stem.1.weight",
                "spm.fc4.weight", "level_embed", "up.weight", "norm1.weight"]
    if len(kw["interaction_indexes"]) == 1:  # the light adapter: one interaction, no ConvFFN, no extra extractors
        return ["patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight",
                f"blocks.{depth - 1}.mlp.fc2.weight", "blocks.1.gamma1", *adapter,
                "interactions.0.extractor.attn.attention_weights.weight",
                "interactions.0.extractor.attn.output_proj.weight", "interactions.0.extractor.query_norm.weight",
                "spm.stem.0.weight", "spm.stem.1.weight", "spm.fc4.weight", "level_embed", "up.weight",
                "norm1.weight", "norm4.bias"]
    beit = cfg["official"].endswith("beit")
    keys = ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", f"blocks.{depth - 1}.mlp.fc2.weight",
            "blocks.1.gamma_1" if beit else "blocks.1.gamma1",
            "interactions.0.injector.gamma", "interactions.0.injector.attn.sampling_offsets.weight",
            "interactions.0.injector.attn.value_proj.weight", "interactions.1.extractor.attn.attention_weights.weight",
            "interactions.3.extractor.ffn.dwconv.dwconv.weight", "interactions.3.extra_extractors.1.ffn.fc2.weight",
            "spm.stem.0.weight", "spm.stem.1.weight", "spm.fc4.weight", "level_embed", "up.weight", "norm1.weight"]
    if not kw.get("use_extra_extractor", True):  # the MAE adapter: no extra extractors
        keys.remove("interactions.3.extra_extractors.1.ffn.fc2.weight")
        keys += ["interactions.3.extractor.ffn.fc2.weight", "interactions.3.extractor.query_norm.weight"]
    if not kw.get("layer_scale", True):  # no gamma1 / gamma2: the blocks' own norm instead
        keys[keys.index("blocks.1.gamma1")] = "blocks.1.norm1.weight"
    if beit:
        keys += ["blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "blocks.0.attn.relative_position_bias_table"]
        if cfg["official"] == "det_beit":
            keys += ["blocks.5.attn.relative_position_bias_table"]  # a 56-window layer
        else:
            keys += ["cls_token"]
    else:
        keys += ["pos_embed"]
    return keys
