# Official: segmentation/configs/ade20k/upernet_beit_large_512_160k_ade20k_ms.py (fd64a51); no official result is
# listed. The _ss recipe (same model and training) with the official multi-scale + flip test: MultiScaleFlipAug(
# img_scale=(2048, 512), img_ratios 0.5-1.75, flip=True) + SETR_Resize(crop_size 512, setr_multi_scale; no
# ResizeToMultiple), slide 512 / stride 341.
_base_ = ['./upernet_beit_large_512_160k_ade20k_ss.py']
crop_size = (512, 512)
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(2048, 512),
        img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
        flip=True,
        transforms=[
            dict(type='SETR_Resize', keep_ratio=True, crop_size=crop_size, setr_multi_scale=True),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(val=dict(pipeline=test_pipeline),
            test=dict(pipeline=test_pipeline))
