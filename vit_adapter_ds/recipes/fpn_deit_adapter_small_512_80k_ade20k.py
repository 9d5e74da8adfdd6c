# Paper recipe, NOT an official file: Semantic FPN + ViT-Adapter-S, ADE20K 512x512, 80k iterations (arXiv 2205.08534
# Table 3: #Param 31.9M, mIoU 46.1, +MS 46.6). Everything but the backbone is fpn_deit_adapter_tiny_512_80k_ade20k.py,
# whose header says where each value comes from (the paper, PVT's paper and Semantic FPN config, defaults); the
# backbone is the one of upernet_deit_adapter_small_512_160k_ade20k.py (project choice: the paper states none).
_base_ = ['./fpn_deit_adapter_tiny_512_80k_ade20k.py']
pretrained = 'pretrained/deit_small_patch16_224-cd65a155.pth'

model = dict(
    pretrained=pretrained,
    backbone=dict(
        _delete_=True,
        type='ViTAdapter',
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4,
        drop_path_rate=0.2,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=6,
        cffn_ratio=0.25,
        deform_ratio=1.0,
        interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
        window_attn=[False] * 12,
        window_size=[None] * 12),
    neck=dict(in_channels=[384, 384, 384, 384]))
