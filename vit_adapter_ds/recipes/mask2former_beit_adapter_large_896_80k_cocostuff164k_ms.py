# Official: segmentation/configs/coco_stuff164k/mask2former_beit_adapter_large_896_80k_cocostuff164k_ms.py (docs/official-architecture.md §4.1).
# The _ss recipe with the official multi-scale + flip test: img_ratios=[640/896, 768/896, 1.0], flip=True,
# PadShortSide(896, pad_val=0 BEFORE Normalize: black pixels), padding removed after the sliding window. 52.0 mIoU.
# EncoderDecoderMask2FormerAug.aug_test(pad_short_side=896, pad_value='black') implements the padding rule.
_base_ = ['./mask2former_beit_adapter_large_896_80k_cocostuff164k_ss.py']
# the official _ms class: its slide inference cuts the PadShortSide padding off the scores
model = dict(type='EncoderDecoderMask2FormerAug')
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(3584, 896),
        img_ratios=[640. / 896., 768. / 896., 1.0],
        flip=True,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='ResizeToMultiple', size_divisor=32),
            dict(type='RandomFlip'),
            dict(type='PadShortSide', size=896, pad_val=0, seg_pad_val=255),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(val=dict(pipeline=test_pipeline),
            test=dict(pipeline=test_pipeline))
