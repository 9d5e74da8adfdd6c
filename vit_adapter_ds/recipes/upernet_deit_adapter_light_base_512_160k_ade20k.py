# Official: segmentation/configs/ade20k/upernet_deit_adapter_light_base_512_160k_ade20k.py (fd64a51); the official
# READMEs list no result or parameter count for it. The ViT-Adapter-B UperNet recipe (DeiT-B, ADE20K 512x512, 160k
# iters, batch 16 = 8 GPUs x 2, layer decay 0.95) with the official light adapter: one interaction over all 12 blocks
# (interaction_indexes=[[0, 11]]), no ConvFFN in the injector / extractor (with_cffn=False), no extra extractors and
# no ViT features added to the pyramid (add_vit_feature=False); global attention in every block as written there.
_base_ = ['./upernet_deit_adapter_base_512_160k_ade20k.py']
model = dict(
    backbone=dict(
        interaction_indexes=[[0, 11]],
        with_cffn=False,
        use_extra_extractor=False,
        add_vit_feature=False,
        window_attn=[False] * 12,
        window_size=[None] * 12))
