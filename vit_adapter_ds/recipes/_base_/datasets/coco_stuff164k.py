# Official: segmentation/configs/_base_/datasets/coco-stuff164k.py (COCO-Stuff-164k, 171 classes), read from
# WebDataset shards (python -m vit_adapter_ds.data.make_shards cocostuff ... -> shards/coco_stuff164k/{train,val})
# instead of data_root / img_dir / ann_dir.
# The pipelines are the official step lists; data/pipeline.py translates them for the loaders and the
# evaluation (seg_train_kwargs_from_pipeline / seg_test_settings_from_pipeline) and refuses any step, key or
# value it does not implement. The recipes derived from this file override test_pipeline (most add
# ResizeToMultiple(size_divisor=32)) and train_pipeline, as the official ones do.
dataset_type = 'COCOStuffDataset'
data_root = 'shards/coco_stuff164k/'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size=crop_size, pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(2048, 512),
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(
    samples_per_gpu=4,
    workers_per_gpu=4,
    train=dict(type=dataset_type, shard_dir=data_root + 'train', pipeline=train_pipeline),
    val=dict(type=dataset_type, shard_dir=data_root + 'val', pipeline=test_pipeline),
    test=dict(type=dataset_type, shard_dir=data_root + 'val', pipeline=test_pipeline))
