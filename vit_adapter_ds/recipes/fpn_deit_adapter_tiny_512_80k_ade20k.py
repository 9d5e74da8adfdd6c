# Paper recipe, NOT an official file (the official ViT-Adapter repository has no Semantic FPN config): Semantic FPN +
# ViT-Adapter-T, ADE20K 512x512, 80k iterations, as "Vision Transformer Adapter for Dense Predictions" (Chen et al.,
# ICLR 2023, arXiv 2205.08534) reports it in Table 3 (ViT-Adapter-T: #Param 12.2M, mIoU 41.7, +MS 42.1; -S 31.9M,
# 46.1 / 46.6; -B 104.6M, 47.9 / 48.9). fpn_deit_adapter_{small,base}_512_80k_ade20k.py change only the backbone.
# Where each value comes from:
# * [paper] §4.2 Settings: ADE20K with MMSegmentation; "For Semantic FPN, we apply the settings of PVT (Wang et al.,
#   2021) and train the models for 80k iterations"; §4.2 / Table 3: DeiT ImageNet-1K weights for ViT-T/S/B, crop
#   512x512. Nothing else (lr, weight decay, batch, schedule, drop path) is stated for Semantic FPN; Appendix A.2's
#   AdamW 2e-5 / wd 0.05 / layer decay 0.9 is for the Mask2Former / UperNet state-of-the-art runs of Table 9.
# * [PVT paper] (arXiv 2102.12122) §5.3, the settings referred to: AdamW with initial lr 1e-4, 80k iterations with
#   batch 16 (4 GPUs), poly decay with power 0.9, random resize and crop to 512x512 for training, shorter side 512
#   at test, new layers Xavier-initialised (mmseg FPN's init_cfg; FPNHead keeps mmcv's ConvModule init).
# * [PVT config] (github.com/whai362/PVT segmentation/configs/sem_fpn/PVT/fpn_pvt_*_ade20k_40k.py, fpn_r50.py and
#   _base_/datasets/ade20k.py), for what neither paper states: weight_decay 1e-4, min_lr 0.0, no warm-up, no gradient
#   clipping (optimizer_config=dict()), checkpoint and mIoU evaluation every 8000 iterations, 4 images per GPU, no fp16,
#   no save_best; the model of _base_/models/fpn_vit_adapter.py (FPN 256 x 4 levels, FPNHead 128, no auxiliary head,
#   test_cfg mode 'whole'); the test pipeline's AlignResize(keep_ratio=True, size_divisor=32) written as
#   Resize(keep_ratio=True) + ResizeToMultiple(size_divisor=32), the same resize (rescale to (2048, 512), then bilinear
#   to the next multiple of 32). Those files are PVT's 8-GPU form of this schedule (gpu_multiples=2: "lr*2 and
#   max_iters/2", lr 2e-4 for 40k iterations at batch 32); at the paper's 80k / batch 16: lr 1e-4, as PVT §5.3.
#   The train pipeline is mmseg's ADE20K one in both (_base_/datasets/ade20k.py; PVT's RepeatDataset(times=50) only
#   lengthens its epochs, which an iteration-based run does not see).
# * [default] AdamW betas (0.9, 0.999): the mmcv / torch default, which the PVT config leaves implicit.
# * [project] The backbone dicts of the UperNet ViT-Adapter recipes (upernet_deit_adapter_{tiny,small,base}_512_160k_
#   ade20k.py), drop path 0.1 / 0.2 / 0.3 included, and their DeiT files.
_base_ = ['./_base_/models/fpn_vit_adapter.py', './_base_/datasets/ade20k.py', './_base_/default_runtime.py']
crop_size = (512, 512)
pretrained = 'pretrained/deit_tiny_patch16_224-a1311bcf.pth'

model = dict(
    pretrained=pretrained,
    backbone=dict(
        _delete_=True,
        type='ViTAdapter',
        patch_size=16,
        embed_dim=192,
        depth=12,
        num_heads=3,
        mlp_ratio=4,
        drop_path_rate=0.1,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=6,
        cffn_ratio=0.25,
        deform_ratio=1.0,
        interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
        window_attn=[False] * 12,
        window_size=[None] * 12),
    neck=dict(in_channels=[192, 192, 192, 192]))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(2048, 512),
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='ResizeToMultiple', size_divisor=32),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(samples_per_gpu=4,
            val=dict(pipeline=test_pipeline),
            test=dict(pipeline=test_pipeline))
global_batch_size = 16
optimizer = dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4)
optimizer_config = dict()
lr_config = dict(policy='poly', power=0.9, min_lr=0.0, by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=80000)
checkpoint_config = dict(by_epoch=False, interval=8000)
evaluation = dict(interval=8000, metric='mIoU')
