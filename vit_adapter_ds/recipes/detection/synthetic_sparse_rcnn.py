# Built-in tiny Sparse R-CNN recipe for CPU tests, the twin of ./sparse_rcnn_deit_adapter_small_fpn_3x_coco.py (official
# detection/configs/sparse_rcnn/sparse_rcnn_deit_adapter_small_fpn_3x_coco.py): the ViT-Adapter-T-wide backbone of
# ./synthetic_mask_rcnn.py cut to 4 blocks / 4 interactions, a 64-channel 4-level FPN, 20 learned proposals and 2
# narrow DIIHead stages (4 heads, FFN 128, DynamicConv 16 inner channels) with the official losses, costs and coder
# (focal x2 / L1 x5 / GIoU x2, Hungarian matching, stds 0.5 0.5 1 1 without clipping); the official optimizer rule
# (AdamW, rpn_head lr x0.25 and decay x0.002, grad clip 1) at a higher lr; synthetic COCO-layout shards
# (python -m vit_adapter_ds.data.make_shards synthetic --layout coco --out shards/synthetic_coco ...; 7 classes),
# box AP only.
_base_ = [
    '../_base_/datasets/coco_detection.py',
    '../_base_/default_runtime_det.py'
]
num_classes = 7
num_stages = 2
num_proposals = 20
model = dict(
    type='SparseRCNN',
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
    neck=dict(type='FPN', in_channels=[192, 192, 192, 192], out_channels=64, start_level=0,
              add_extra_convs='on_output', num_outs=4),
    rpn_head=dict(type='EmbeddingRPNHead', num_proposals=num_proposals, proposal_feature_channel=64),
    roi_head=dict(
        type='SparseRoIHead',
        num_stages=num_stages,
        stage_loss_weights=[1] * num_stages,
        proposal_feature_channel=64,
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2),
            out_channels=64,
            featmap_strides=[4, 8, 16, 32]),
        bbox_head=[
            dict(type='DIIHead', num_classes=num_classes, num_ffn_fcs=2, num_heads=4, num_cls_fcs=1, num_reg_fcs=3,
                 feedforward_channels=128, in_channels=64, dropout=0.0, ffn_act_cfg=dict(type='ReLU', inplace=True),
                 dynamic_conv_cfg=dict(type='DynamicConv', in_channels=64, feat_channels=16, out_channels=64,
                                       input_feat_shape=7, act_cfg=dict(type='ReLU', inplace=True),
                                       norm_cfg=dict(type='LN')),
                 loss_bbox=dict(type='L1Loss', loss_weight=5.0),
                 loss_iou=dict(type='GIoULoss', loss_weight=2.0),
                 loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', clip_border=False, target_means=[0., 0., 0., 0.],
                                 target_stds=[0.5, 0.5, 1., 1.])) for _ in range(num_stages)
        ]),
    train_cfg=dict(
        rpn=None,
        rcnn=[
            dict(assigner=dict(type='HungarianAssigner',
                               cls_cost=dict(type='FocalLossCost', weight=2.0),
                               reg_cost=dict(type='BBoxL1Cost', weight=5.0),
                               iou_cost=dict(type='IoUCost', iou_mode='giou', weight=2.0)),
                 sampler=dict(type='PseudoSampler'),
                 pos_weight=1) for _ in range(num_stages)
        ]),
    test_cfg=dict(rpn=None, rcnn=dict(max_per_img=num_proposals)))
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
    type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05,
    paramwise_cfg=dict(custom_keys={'level_embed': dict(decay_mult=0.), 'pos_embed': dict(decay_mult=0.),
                                    'norm': dict(decay_mult=0.), 'bias': dict(decay_mult=0.),
                                    'rpn_head': dict(decay_mult=0.002, lr_mult=0.25)}))
optimizer_config = dict(grad_clip=dict(max_norm=1, norm_type=2))
lr_config = dict(policy='step', warmup='linear', warmup_iters=20, warmup_ratio=0.001, step=[250], by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=300)
checkpoint_config = dict(by_epoch=False, interval=100, max_keep_ckpts=2)
evaluation = dict(interval=100, metric='bbox', save_best='bbox_mAP')
log_config = dict(interval=10)
work_dir = 'work_dirs/synthetic_sparse_rcnn'
