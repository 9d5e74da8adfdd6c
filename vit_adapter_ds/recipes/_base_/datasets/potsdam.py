# Official: segmentation/configs/_base_/datasets/potsdam.py (ISPRS Potsdam, 6 classes, reduce_zero_label: the
# official mmseg_custom/datasets/potsdam.py PotsdamDataset), read from WebDataset shards (python -m
# vit_adapter_ds.data.make_shards potsdam --root data/potsdam --out shards/potsdam -> shards/potsdam/{train,val}, from
# the tiles of mmseg's potsdam.py converter) instead of data_root / img_dir / ann_dir. The shards' manifest maps
# the labels (reduce_zero_label), so LoadAnnotations(reduce_zero_label=True) is accepted as written.
# The pipelines are the official step lists; data/pipeline.py translates them for the loaders and the
# evaluation and refuses any step, key or value it does not implement.
dataset_type = 'PotsdamDataset'
data_root = 'shards/potsdam/'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', img_scale=(512, 512), ratio_range=(0.5, 2.0)),
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
        img_scale=(512, 512),
        # img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
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
