# ADE20K (150 classes, reduce_zero_label) as WebDataset shards (python -m vit_adapter_ds.data.make_shards ade20k ...),
# laid out like the official _base_/datasets/ade20k.py and the detection bases (dataset_type, data_root,
# img_norm_cfg, data.train / val / test with type=dataset_type and the shard folder instead of img_dir / ann_dir).
# The loader arguments express the official train pipeline: Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
# RandomCrop(crop_size, cat_max_ratio=0.75), RandomFlip(0.5), PhotoMetricDistortion, Normalize, Pad(seg_pad_val=255);
# test (evaluation.img_scale / size_divisor): Resize(keep_ratio) to img_scale, ResizeToMultiple(32), Normalize.
# The official step lists are accepted too (data/pipeline.py: train_pipeline in data.train.pipeline, test_pipeline
# in data.val / data.test.pipeline, instead of these keys and evaluation's test keys); the recipes keep the flat keys,
# which their tests and --cfg-options overrides read.
dataset_type = 'ADE20KDataset'
data_root = 'shards/ade20k/'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (512, 512)
data = dict(
    samples_per_gpu=2,
    workers_per_gpu=4,
    train=dict(type=dataset_type, shard_dir=data_root + 'train', crop_size=crop_size, scale=(2048, 512),
               ratio_range=(0.5, 2.0), cat_max_ratio=0.75, img_norm_cfg=img_norm_cfg),
    val=dict(type=dataset_type, shard_dir=data_root + 'val', img_norm_cfg=img_norm_cfg),
    test=dict(type=dataset_type, shard_dir=data_root + 'val', img_norm_cfg=img_norm_cfg))
