# Official: segmentation/configs/_base_/datasets/coco-stuff10k.py (COCO-Stuff-10k, 171 classes, reduce_zero_label),
# read from WebDataset shards (python -m vit_adapter_ds.data.make_shards coco_stuff10k --root data/coco_stuff10k
# --out shards/coco_stuff10k -> shards/coco_stuff10k/{train,val}, val = the 1,000 test images that the official
# val and test read) instead of data_root / img_dir / ann_dir. The official sections' reduce_zero_label=True is the
# shards' manifest label map (the writer converts the .mat labels as mmseg's converter, the manifest reduces the
# zero label), so the sections do not repeat it; LoadAnnotations(reduce_zero_label=True) is accepted as written.
# dataset_type is the official 'COCOStuffDataset' (mmseg's one class for the 10k and 164k sets): the cocostuff
# catalog entry's alias, with the classes and evaluator of the coco_stuff10k entry.
# The pipelines are the official step lists; data/pipeline.py translates them for the loaders and the
# evaluation and refuses any step, key or value it does not implement.
dataset_type = 'COCOStuffDataset'
data_root = 'shards/coco_stuff10k/'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
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
