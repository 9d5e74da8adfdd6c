# Official: detection/configs/htc++/htc++_beitv2_adapter_large_fpn_o365_coco_ms.py (czczup/ViT-Adapter at fd64a51):
# the Objects365 -> COCO model of ./htc++_beitv2_adapter_large_fpn_o365_coco.py tested with the official test-time
# augmentation HybridTaskCascadeAug (vit_adapter_ds.models.detectors.htc_aug): 6 scales (3000, 600..1600) x
# horizontal flip, per-scale box-area ranges, soft-NMS (IoU 0.5) merge, up to 1000 detections per image. The official
# file is the o365 file but for these and for load_from, which it does not set (the model's weights come from
# --checkpoint). Reported 62.6 / 54.2 box / mask AP (minival), 62.6 / 54.5 (test-dev).
_base_ = ['./htc++_beitv2_adapter_large_fpn_o365_coco.py']
load_from = None
model = dict(
    type='HybridTaskCascadeAug',
    test_cfg=dict(
        aug=dict(score_thr=0.001, nms=dict(type='soft_nms', iou_threshold=0.5), max_per_img=1000,
                 scale_ranges=[['l'], ['l'], ['m', 'l'], ['s', 'm'], ['s', 'm'], ['s', 'm']])))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
file_client_args = dict(backend='disk')
test_pipeline = [
    dict(type='LoadImageFromFile', file_client_args=file_client_args),
    dict(type='MultiScaleFlipAug',
         img_scale=[(3000, 600), (3000, 800), (3000, 1000), (3000, 1200), (3000, 1400), (3000, 1600)],
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
