# COCO-Stuff-164k (171 classes) as WebDataset shards (python -m vit_adapter_ds.data.make_shards cocostuff ...); laid
# out and translated as ade20k.py (the official _base_/datasets/coco-stuff164k.py pipelines, flat keys).
dataset_type = 'COCOStuffDataset'
data_root = 'shards/coco_stuff164k/'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (512, 512)
data = dict(
    samples_per_gpu=2,
    workers_per_gpu=4,
    train=dict(type=dataset_type, shard_dir=data_root + 'train', crop_size=crop_size, scale=(2048, 512),
               ratio_range=(0.5, 2.0), cat_max_ratio=0.75, img_norm_cfg=img_norm_cfg),
    val=dict(type=dataset_type, shard_dir=data_root + 'val', img_norm_cfg=img_norm_cfg),
    test=dict(type=dataset_type, shard_dir=data_root + 'val', img_norm_cfg=img_norm_cfg))
