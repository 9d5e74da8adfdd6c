# Paper recipe, NOT an official file: Semantic FPN + ViT-Adapter-B, ADE20K 512x512, 80k iterations (arXiv 2205.08534
# Table 3: #Param 104.6M, mIoU 47.9, +MS 48.9). Everything but the backbone is fpn_deit_adapter_tiny_512_80k_ade20k.py,
# whose header says where each value comes from (the paper, PVT's paper and Semantic FPN config, defaults); the
# backbone is the one of upernet_deit_adapter_base_512_160k_ade20k.py (project choice: the paper states none).
_base_ = ['./fpn_deit_adapter_tiny_512_80k_ade20k.py']
pretrained = 'pretrained/deit_base_patch16_224-b5f2ef4d.pth'

model = dict(
    pretrained=pretrained,
    backbone=dict(
        _delete_=True,
        type='ViTAdapter',
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        drop_path_rate=0.3,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=12,
        cffn_ratio=0.25,
        deform_ratio=0.5,
        interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
        window_attn=[False] * 12,
        window_size=[None] * 12),
    neck=dict(in_channels=[768, 768, 768, 768]))
