# Official: detection/configs/htc++/htc++_augreg_adapter_large_fpn_3x_coco_ms.py (fd64a51)
# The AugReg-L HTC++ model (./htc++_augreg_adapter_large_fpn_3x_coco.py) tested with the official test-time
# augmentation HybridTaskCascadeAug (vit_adapter_ds.models.detectors.htc_aug): 6 scales (1600, 600..1600; the BEiT
# _ms files use 3000) x horizontal flip, per-scale box-area ranges, all detections merged by soft-NMS (IoU 0.5), up to
# 1000 per image; test_cfg.rcnn.max_per_img=100 here (300 in the single-scale file). As in the official file the
# backbone's pretrained is None (the model's weights come from --checkpoint).
# Reported box / mask AP: 57.7 / 49.9 (minival), 58.4 / 50.7 (test-dev); 401M parameters.
_base_ = ['./htc++_augreg_adapter_large_fpn_3x_coco.py']
pretrained = None
model = dict(
    type='HybridTaskCascadeAug',
    backbone=dict(pretrained=None),
    test_cfg=dict(
        rcnn=dict(max_per_img=100),
        aug=dict(score_thr=0.001, nms=dict(type='soft_nms', iou_threshold=0.5), max_per_img=1000,
                 scale_ranges=[['l'], ['l'], ['m', 'l'], ['s', 'm'], ['s', 'm'], ['s', 'm']])))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug',
         img_scale=[(1600, 600), (1600, 800), (1600, 1000), (1600, 1200), (1600, 1400), (1600, 1600)],
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
