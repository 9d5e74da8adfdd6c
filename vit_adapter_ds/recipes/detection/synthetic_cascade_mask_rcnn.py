# Built-in tiny Cascade Mask R-CNN recipe for CPU tests, the twin of ./synthetic_mask_rcnn.py: the same
# ViT-Adapter-T-wide backbone cut to 4 blocks / 4 interactions, 64-channel FPN and synthetic COCO-layout shards
# (python -m vit_adapter_ds.data.make_shards synthetic --layout coco --out shards/synthetic_coco ...; 7 classes) and
# pipelines, with the official cascade heads made light: 3 ConvFCBBoxHead stages (2 shared convs with SyncBN + 1 fc of
# 256, class-specific regression, GIoU x10 on decoded boxes, the official stage stds / IoU thresholds / loss weights)
# and an FCNMaskHead (2 convs) per stage; 128 RoIs sampled per image and stage.
_base_ = [
    '../_base_/models/cascade_mask_rcnn_fpn.py',
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
        bbox_head=[
            dict(type='ConvFCBBoxHead', num_shared_convs=2, num_shared_fcs=1, in_channels=64, conv_out_channels=64,
                 fc_out_channels=256, roi_feat_size=7, num_classes=num_classes,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                 target_stds=[0.1, 0.1, 0.2, 0.2]),
                 reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
                 loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                 loss_bbox=dict(type='GIoULoss', loss_weight=10.0)),
            dict(type='ConvFCBBoxHead', num_shared_convs=2, num_shared_fcs=1, in_channels=64, conv_out_channels=64,
                 fc_out_channels=256, roi_feat_size=7, num_classes=num_classes,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                 target_stds=[0.05, 0.05, 0.1, 0.1]),
                 reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
                 loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                 loss_bbox=dict(type='GIoULoss', loss_weight=10.0)),
            dict(type='ConvFCBBoxHead', num_shared_convs=2, num_shared_fcs=1, in_channels=64, conv_out_channels=64,
                 fc_out_channels=256, roi_feat_size=7, num_classes=num_classes,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                 target_stds=[0.033, 0.033, 0.067, 0.067]),
                 reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
                 loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                 loss_bbox=dict(type='GIoULoss', loss_weight=10.0))],
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64, num_classes=num_classes)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300), rcnn=[
        dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                           match_low_quality=False, ignore_iof_thr=-1),
             sampler=dict(type='RandomSampler', num=128, pos_fraction=0.25, neg_pos_ub=-1,
                          add_gt_as_proposals=True),
             mask_size=28, pos_weight=-1, debug=False),
        dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.6, neg_iou_thr=0.6, min_pos_iou=0.6,
                           match_low_quality=False, ignore_iof_thr=-1),
             sampler=dict(type='RandomSampler', num=128, pos_fraction=0.25, neg_pos_ub=-1,
                          add_gt_as_proposals=True),
             mask_size=28, pos_weight=-1, debug=False),
        dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.7, min_pos_iou=0.7,
                           match_low_quality=False, ignore_iof_thr=-1),
             sampler=dict(type='RandomSampler', num=128, pos_fraction=0.25, neg_pos_ub=-1,
                          add_gt_as_proposals=True),
             mask_size=28, pos_weight=-1, debug=False)]),
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
work_dir = 'work_dirs/synthetic_cascade_mask_rcnn'
