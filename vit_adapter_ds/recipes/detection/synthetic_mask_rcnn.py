# Built-in tiny detection recipe for CPU tests: Mask R-CNN + a ViT-Adapter-T-wide backbone (embed 192, 3 heads,
# 6 deformable heads, window attention as the official T config) cut to 4 blocks / 4 interactions, a 64-channel
# FPN and light R-CNN heads, on the synthetic COCO-layout shards
# (python -m vit_adapter_ds.data.make_shards synthetic --layout coco --out shards/synthetic_coco ...; 7 classes),
# with the official pipeline structure (flip, DETR-style AutoAugment, absolute-range crop, pad 32) at small scales.
# Measured (single process, batch 2, 48 train / 12 val synthetic images of 512x683, shared 2-core CPU, ~2 s/iter):
# box / mask AP 0.18 / 0.22 after 100 iterations, 0.24 / 0.32 after 200, 0.41 / 0.49 after 300.
_base_ = [
    '../_base_/models/mask_rcnn_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime_det.py'
]
num_classes = 7
model = dict(
    backbone=dict(
        _delete_=True,
        type='ViTAdapter',
        img_size=128,
        pretrain_size=128,
        patch_size=16,
        embed_dim=192,
        depth=4,
        num_heads=3,
        mlp_ratio=4,
        drop_path_rate=0.0,
        conv_inplane=32,
        n_points=4,
        deform_num_heads=6,
        cffn_ratio=0.25,
        deform_ratio=1.0,
        interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
        window_attn=[True, True, False, False],
        window_size=[7, 7, None, None]),
    neck=dict(type='FPN', in_channels=[192, 192, 192, 192], out_channels=64, num_outs=5),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64, num_classes=num_classes)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300), rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='AutoAugment',
         policies=[
             [dict(type='Resize', img_scale=[(160, 267), (176, 267), (192, 267)], multiscale_mode='value',
                   keep_ratio=True)],
             [dict(type='Resize', img_scale=[(128, 267), (144, 267)], multiscale_mode='value', keep_ratio=True),
              dict(type='RandomCrop', crop_type='absolute_range', crop_size=(96, 160), allow_negative_crop=True),
              dict(type='Resize', img_scale=[(160, 267), (176, 267), (192, 267)], multiscale_mode='value',
                   override=True, keep_ratio=True)]]),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=(256, 256), allow_negative_crop=True),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug',
         img_scale=(267, 176),
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
    workers_per_gpu=1,
    train=dict(shard_dir='shards/synthetic_coco/train', pipeline=train_pipeline),
    val=dict(shard_dir='shards/synthetic_coco/val', pipeline=test_pipeline),
    test=dict(shard_dir='shards/synthetic_coco/val', pipeline=test_pipeline))
optimizer = dict(
    type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.05,
    paramwise_cfg=dict(custom_keys={'level_embed': dict(decay_mult=0.), 'pos_embed': dict(decay_mult=0.),
                                    'norm': dict(decay_mult=0.), 'bias': dict(decay_mult=0.)}))
optimizer_config = dict(grad_clip=dict(max_norm=10.0, norm_type=2))
lr_config = dict(policy='step', warmup='linear', warmup_iters=20, warmup_ratio=0.001, step=[250], by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=300)
checkpoint_config = dict(by_epoch=False, interval=100, max_keep_ckpts=2)
evaluation = dict(interval=100, metric=['bbox', 'segm'], save_best='bbox_mAP')
log_config = dict(interval=10)
work_dir = 'work_dirs/synthetic_mask_rcnn'
