# ADE20K (150 classes, reduce_zero_label) as WebDataset shards (python -m vit_adapter_ds.data.make_shards ade20k ...).
# The loader arguments express the official pipeline: Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
# RandomCrop(crop_size, cat_max_ratio=0.75), RandomFlip(0.5), PhotoMetricDistortion, Normalize, Pad(seg_pad_val=255);
# test (evaluation.img_scale / size_divisor): Resize(keep_ratio) to img_scale, ResizeToMultiple(32), Normalize.
dataset_type = 'ADE20KDataset'
data_root = 'shards/ade20k'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (512, 512)
data = dict(
    samples_per_gpu=2,
    workers_per_gpu=4,
    train=dict(shard_dir='shards/ade20k/train', crop_size=crop_size, scale=(2048, 512), ratio_range=(0.5, 2.0),
               cat_max_ratio=0.75, img_norm_cfg=img_norm_cfg),
    val=dict(shard_dir='shards/ade20k/val', img_norm_cfg=img_norm_cfg))
