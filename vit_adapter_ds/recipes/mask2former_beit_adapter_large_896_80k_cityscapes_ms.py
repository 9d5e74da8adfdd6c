# Official: segmentation/configs/cityscapes/mask2former_beit_adapter_large_896_80k_cityscapes_ms.py (fd64a51).
# 85.8 mIoU (MS) on Cityscapes val, 571M parameters. The _ss recipe's model and training with the official
# multi-scale + flip test: MultiScaleFlipAug(img_scale=(2048, 1024), img_ratios 0.5-2.0, flip=True) +
# SETR_Resize(crop_size 896, setr_multi_scale; no ResizeToMultiple), slide 896 / stride 512.
# Two differences from the _ss file, as in the official one: no load_from (the official file has none, so it is
# default_runtime's None; the official README loads the Mapillary weights with --cfg-options load_from=<path>), and
# model.type='EncoderDecoderMask2FormerAug' (its slide crop to img_shape is a no-op here: no PadShortSide).
_base_ = ['./mask2former_beit_adapter_large_896_80k_cityscapes_ss.py']
model = dict(type='EncoderDecoderMask2FormerAug')
crop_size = (896, 896)
load_from = None
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(2048, 1024),
        img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0],
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
