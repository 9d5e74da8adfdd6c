# Official: segmentation/configs/coco_stuff164k/upernet_beit_adapter_large_640_80k_cocostuff164k_ms.py (fd64a51).
# 50.7 mIoU (MS), 451M parameters (README). The _ss recipe (same model and training) with the official multi-scale +
# flip test: MultiScaleFlipAug(img_scale=(2560, 640), img_ratios 0.5-1.75, flip=True) + SETR_Resize(crop_size 640,
# setr_multi_scale; no ResizeToMultiple), slide 640 / stride 426.
_base_ = ['./upernet_beit_adapter_large_640_80k_cocostuff164k_ss.py']
crop_size = (640, 640)
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(2560, 640),
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
