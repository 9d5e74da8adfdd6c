# Official: segmentation/configs/ade20k/mask2former_beitv2_adapter_large_896_80k_ade20k_ss.py (docs/official-architecture.md §4.1).
# Mask2Former + BEiTv2-Adapter-L, 896x896 crop, 80k iters, batch 16, layer decay 0.9.
# Stage 2: ADE20K (150 classes) fine-tuned from the BEiTv2 COCO-Stuff segmentor (load_from; the 171-class classifier
# is re-initialised for 150 classes). 61.2 mIoU (SS).
_base_ = ['./mask2former_beit_adapter_large_896_80k_ade20k_ss.py']
pretrained = 'pretrained/beitv2_large_patch16_224_pt1k_ft21k.pth'
load_from = 'pretrained/mask2former_beitv2_adapter_large_896_80k_cocostuff164k.pth'
model = dict(pretrained=pretrained)
# the official test_pipeline of this config flips (one scale, flip=True), unlike its BEiT base
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(3584, 896),
        flip=True,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='ResizeToMultiple', size_divisor=32),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(val=dict(pipeline=test_pipeline),
            test=dict(pipeline=test_pipeline))
