# Official: detection/configs/_base_/datasets/coco_detection.py (mmdet 2.x), the box-only twin of
# ./coco_instance.py (ATSS, GFL, Sparse R-CNN): read from COCO instance shards (python -m
# vit_adapter_ds.data.make_shards coco --root data/coco -> shards/coco/{train,val}) instead of ann_file / img_prefix.
# The pipelines are the official step lists; the detection loader translates them
# (vit_adapter_ds.data.pipeline.train_ops_from_pipeline / test_cfg_from_pipeline) and refuses any step it does not
# implement. Evaluation every epoch, box AP only.
dataset_type = 'CocoDataset'
data_root = 'shards/coco/'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', img_scale=(1333, 800), keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug',
         img_scale=(1333, 800),
         flip=False,
         transforms=[
             dict(type='Resize', keep_ratio=True),
             dict(type='RandomFlip'),
             dict(type='Normalize', **img_norm_cfg),
             dict(type='Pad', size_divisor=32),
             dict(type='ImageToTensor', keys=['img']),
             dict(type='Collect', keys=['img']),
         ])
]
data = dict(
    samples_per_gpu=2,
    workers_per_gpu=2,
    train=dict(type=dataset_type, shard_dir=data_root + 'train', pipeline=train_pipeline),
    val=dict(type=dataset_type, shard_dir=data_root + 'val', pipeline=test_pipeline),
    test=dict(type=dataset_type, shard_dir=data_root + 'val', pipeline=test_pipeline))
evaluation = dict(interval=1, metric='bbox')
