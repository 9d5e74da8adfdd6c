# Built-in quickstart: a tiny ViT-Adapter (embed 96, depth 4, 4 interactions) + UperNet (channels 64) on the
# synthetic dataset (8 classes: python -m vit_adapter_ds.data.make_shards synthetic ...), 128x128 crops.
# Sized to train in a few minutes with 2 ranks on a 2-core CPU (DeepSpeed ZeRO-2 fp32) and reach an mIoU far above
# chance (measured: mIoU 0.51 after 200 iterations, chance 0.125, in 73 s of training on the quiet 2-core CPU; 300
# iterations at lr 2e-3 reach 0.67 in 1.5x the training time; see benchmarks/RESULTS.md).
_base_ = ['./_base_/models/upernet_vit_adapter.py', './_base_/default_runtime.py']
num_classes = 8
crop_size = (128, 128)
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='ViTAdapter',
        img_size=128,
        pretrain_size=128,
        patch_size=16,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=4,
        drop_path_rate=0.0,
        conv_inplane=32,
        n_points=4,
        deform_num_heads=6,
        cffn_ratio=0.25,
        deform_ratio=1.0,
        interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]]),
    decode_head=dict(in_channels=[96, 96, 96, 96], channels=64, num_classes=num_classes),
    auxiliary_head=dict(in_channels=96, channels=32, num_classes=num_classes),
    test_cfg=dict(mode='whole'))
# the official mmseg pipelines (as recipes/_base_/datasets/ade20k.py) at the synthetic images' scale
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', img_scale=(256, 128), ratio_range=(0.5, 2.0)),
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
        img_scale=(256, 128),
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='ResizeToMultiple', size_divisor=32),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(
    samples_per_gpu=4,
    workers_per_gpu=1,
    train=dict(type='synthetic', shard_dir='shards/synthetic/train', pipeline=train_pipeline),
    val=dict(type='synthetic', shard_dir='shards/synthetic/val', pipeline=test_pipeline))
optimizer = dict(type='AdamW', lr=3e-3, betas=(0.9, 0.999), weight_decay=0.01,
                 constructor='LayerDecayOptimizerConstructor',
                 paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.95))
optimizer_config = dict(grad_clip=dict(max_norm=1.0, norm_type=2))
lr_config = dict(policy='poly', warmup='linear', warmup_iters=10, warmup_ratio=1e-6, power=1.0, min_lr=0.0,
                 by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=200)
checkpoint_config = dict(by_epoch=False, interval=100, max_keep_ckpts=2)
evaluation = dict(interval=100, metric='mIoU', save_best='mIoU')
log_config = dict(interval=10)
work_dir = 'work_dirs/synthetic_quickstart'
