# Built-in tiny HTC++ recipe for CPU tests: the official HTC++ structure (./htc++_beitv2_adapter_large_fpn_3x_coco.py:
# BEiT-Adapter with window attention, [ExtraAttention, FPN] neck, 3-stage interleaved HTC with mask information
# flow, a fused semantic head over the COCO-Stuff maps, soft-NMS testing; InstaBoost + Resize range mode + flip +
# pad 32 + SegRescale(1/8)) cut to a BEiT-Adapter of 4 blocks / 4 interactions at width 96, a 32-channel FPN and
# light heads, at small scales, on the synthetic COCO-layout shards with semantic maps
# (python -m vit_adapter_ds.data.make_shards synthetic --layout coco --out shards/synthetic_coco ...; 7 classes; the
# maps hold raw COCO-Stuff ids < 183, so the semantic head keeps the official 183 classes).
_base_ = ['./htc++_beitv2_adapter_large_fpn_3x_coco.py']
num_classes = 7
_C = 32  # FPN / head channels


def _bbox_head(stds):
    return dict(type='Shared4Conv1FCBBoxHead', in_channels=_C, conv_out_channels=_C, fc_out_channels=64,
                roi_feat_size=7, num_classes=num_classes,
                bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
                reg_class_agnostic=True,
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))


def _mask_head(i):
    return dict(type='HTCMaskHead', with_conv_res=i > 0, num_convs=2, in_channels=_C, conv_out_channels=_C,
                num_classes=num_classes, loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))


def _rcnn(iou):
    return dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                              ignore_iof_thr=-1),
                sampler=dict(type='RandomSampler', num=64, pos_fraction=0.25, neg_pos_ub=-1,
                             add_gt_as_proposals=True),
                mask_size=28, pos_weight=-1, debug=False)


model = dict(
    backbone=dict(
        _delete_=True, type='BEiTAdapter', img_size=224, patch_size=16, embed_dim=96, depth=4, num_heads=3,
        mlp_ratio=4, qkv_bias=True, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-6,
        drop_path_rate=0.1, conv_inplane=16, n_points=4, deform_num_heads=6, cffn_ratio=0.25, deform_ratio=0.5,
        window_attn=[True] * 4, window_size=[7, 7, 7, 14], interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
        pretrained=None),
    neck=[
        dict(type='ExtraAttention', in_channels=[96] * 4, num_head=4, with_ffn=True, ffn_ratio=4.0, drop_path=0.1),
        dict(type='FPN', in_channels=[96] * 4, out_channels=_C, num_outs=5)],
    rpn_head=dict(in_channels=_C, feat_channels=_C),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=_C),
        bbox_head=[_bbox_head([0.1, 0.1, 0.2, 0.2]), _bbox_head([0.05, 0.05, 0.1, 0.1]),
                   _bbox_head([0.033, 0.033, 0.067, 0.067])],
        mask_roi_extractor=dict(out_channels=_C),
        mask_head=[_mask_head(i) for i in range(3)],
        semantic_roi_extractor=dict(out_channels=_C),
        semantic_head=dict(in_channels=_C, conv_out_channels=_C, num_convs=2, num_classes=183)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=300), rcnn=[_rcnn(0.5), _rcnn(0.6), _rcnn(0.7)]),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='InstaBoost', action_candidate=('normal', 'horizontal', 'skip'), action_prob=(1, 0, 0), scale=(0.8, 1.2),
         dx=15, dy=15, theta=(-1, 1), color_prob=0.5, hflag=False, aug_ratio=0.5),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='Resize', img_scale=[(192, 96), (192, 160)], multiscale_mode='range', keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='SegRescale', scale_factor=1 / 8),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug',
         img_scale=(192, 128),
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
    _delete_=True,
    samples_per_gpu=2,
    workers_per_gpu=1,
    train=dict(shard_dir='shards/synthetic_coco/train', pipeline=train_pipeline),
    val=dict(shard_dir='shards/synthetic_coco/val', pipeline=test_pipeline),
    test=dict(shard_dir='shards/synthetic_coco/val', pipeline=test_pipeline))
optimizer = dict(_delete_=True, type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.05,
                 constructor='LayerDecayOptimizerConstructor', paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.90))
optimizer_config = dict(_delete_=True, grad_clip=dict(max_norm=10.0, norm_type=2))
lr_config = dict(_delete_=True, policy='step', warmup='linear', warmup_iters=20, warmup_ratio=0.001, step=[250],
                 by_epoch=False)
runner = dict(_delete_=True, type='IterBasedRunner', max_iters=300)
checkpoint_config = dict(_delete_=True, by_epoch=False, interval=100, max_keep_ckpts=2)
evaluation = dict(interval=100, metric=['bbox', 'segm'], save_best='bbox_mAP')
log_config = dict(interval=10)
global_batch_size = None
work_dir = 'work_dirs/synthetic_htc'
