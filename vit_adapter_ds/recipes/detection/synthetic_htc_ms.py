# The tiny HTC++ recipe (./synthetic_htc.py) tested as the official _ms recipes do
# (./htc++_beitv2_adapter_large_fpn_3x_coco_ms.py): HybridTaskCascadeAug over 3 small scales x horizontal flip,
# per-scale box-area ranges, soft-NMS (IoU 0.5); up to 100 detections per image (official: 1000; each one's masks
# are computed at every augmentation, which dominates the CPU time).
_base_ = ['./synthetic_htc.py']
model = dict(
    type='HybridTaskCascadeAug',
    test_cfg=dict(
        aug=dict(score_thr=0.001, nms=dict(type='soft_nms', iou_threshold=0.5), max_per_img=100,
                 scale_ranges=[['m', 'l'], ['s', 'm', 'l'], ['s', 'm']])))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug',
         img_scale=[(192, 96), (192, 128), (256, 160)],
         flip=True,
         transforms=[
             dict(type='Resize', keep_ratio=True),
             dict(type='RandomFlip'),
             dict(type='Normalize', **img_norm_cfg),
             dict(type='Pad', size_divisor=32),
             dict(type='ImageToTensor', keys=['img']),
             dict(type='Collect', keys=['img']),
         ])
]
data = dict(test=dict(pipeline=test_pipeline), val=dict(pipeline=test_pipeline))
work_dir = 'work_dirs/synthetic_htc_ms'
