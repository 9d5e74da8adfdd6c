# Official: segmentation/configs/_base_/datasets/chase_db1.py (CHASE_DB1, 2 classes), read from WebDataset shards
# (python -m vit_adapter_ds.data.make_shards chase_db1 --root data/CHASE_DB1 --out shards/chase_db1 ->
# shards/chase_db1/{train,val}) instead of data_root / img_dir / ann_dir.
# data.train is the official RepeatDataset(times=40000, dataset=...)'s inner dataset: the loader of an
# iteration-based run starts a new epoch (a new shuffle of the 20 training images) whenever one ends, so the repeat
# changes only where epochs begin (mmseg shuffles the 800,000 repeated indices at once), not which images a step
# sees on average. The wrapper type is not a catalog entry.
# The pipelines are the official step lists; data/pipeline.py translates them for the loaders and the
# evaluation and refuses any step, key or value it does not implement.
dataset_type = 'ChaseDB1Dataset'
data_root = 'shards/chase_db1/'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
img_scale = (960, 999)
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', img_scale=img_scale, ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size=crop_size, pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg'])
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=img_scale,
        # img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0],
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img'])
        ])
]
data = dict(
    samples_per_gpu=4,
    workers_per_gpu=4,
    train=dict(type=dataset_type, shard_dir=data_root + 'train', pipeline=train_pipeline),
    val=dict(type=dataset_type, shard_dir=data_root + 'val', pipeline=test_pipeline),
    test=dict(type=dataset_type, shard_dir=data_root + 'val', pipeline=test_pipeline))
