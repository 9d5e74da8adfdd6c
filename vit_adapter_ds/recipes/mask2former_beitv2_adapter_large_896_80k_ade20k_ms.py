# Official: segmentation/configs/ade20k/mask2former_beitv2_adapter_large_896_80k_ade20k_ms.py (docs/official-architecture.md §4.1).
# The BEiTv2 _ss recipe with the official multi-scale + flip test: img_ratios=[800/896, 832/896, 864/896, 1.0],
# flip=True, PadShortSide(896, pad_val=0 AFTER Normalize: zeros in the normalised image), padding removed after
# the sliding window (EncoderDecoderMask2FormerAug). 61.5 mIoU.
# EncoderDecoderMask2FormerAug.aug_test(pad_short_side=896, pad_value=0.0) implements the padding rule.
_base_ = ['./mask2former_beitv2_adapter_large_896_80k_ade20k_ss.py']
# the official _ms class: its slide inference cuts the PadShortSide padding off the scores
model = dict(type='EncoderDecoderMask2FormerAug')
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(3584, 896),
        img_ratios=[800. / 896., 832. / 896., 864. / 896., 1.0],
        flip=True,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='ResizeToMultiple', size_divisor=32),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='PadShortSide', size=896, pad_val=0, seg_pad_val=255),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(val=dict(pipeline=test_pipeline),
            test=dict(pipeline=test_pipeline))
