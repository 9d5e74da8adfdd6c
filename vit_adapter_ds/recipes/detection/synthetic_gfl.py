# Built-in tiny GFL recipe for CPU tests, the twin of ./gfl_deit_adapter_small_fpn_3x_coco.py as
# ./synthetic_mask_rcnn.py is of the Mask R-CNN ones: the same ViT-Adapter-T-wide backbone cut to 4 blocks /
# 4 interactions, a 64-channel FPN with the official one-stage settings (start_level=1, two extra convs on the
# output, strides 8-128), a GFLHead of 2 GN convs per tower (64 channels, 32 groups, 17 bins), official assigner,
# losses and test settings; anchors 4 x stride (octave_base_scale=4: the synthetic objects are 10-90 pixels); synthetic
# COCO-layout shards (python -m vit_adapter_ds.data.make_shards synthetic --layout coco --out shards/synthetic_coco
# ...; 7 classes), box AP only.
_base_ = [
    '../_base_/datasets/coco_detection.py',
    '../_base_/default_runtime_det.py'
]
num_classes = 7
model = dict(
    type='GFL',
    backbone=dict(
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
    neck=dict(type='FPN', in_channels=[192, 192, 192, 192], out_channels=64, start_level=1,
              add_extra_convs='on_output', num_outs=5),
    bbox_head=dict(
        type='GFLHead',
        num_classes=num_classes,
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=4, scales_per_octave=1,
                              strides=[8, 16, 32, 64, 128]),
        loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_dfl=dict(type='DistributionFocalLoss', loss_weight=0.25),
        reg_max=16,
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.6),
                  max_per_img=100))
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
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels']),
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
evaluation = dict(interval=100, metric=['bbox'], save_best='bbox_mAP')
log_config = dict(interval=10)
work_dir = 'work_dirs/synthetic_gfl'
