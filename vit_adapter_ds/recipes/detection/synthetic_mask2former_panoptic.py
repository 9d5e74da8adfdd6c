# Built-in tiny Mask2Former panoptic recipe for CPU tests, the twin of
# ./mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic.py (official
# detection/configs/mask2former/mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic.py): the ViT-Adapter of
# ../synthetic_mask2former.py (embed 96, 4 blocks / 4 interactions) + the same small Mask2Former head (64 channels,
# 2 pixel-decoder / 2 decoder layers, 16 queries) under mmdet's keys (panoptic_head, strides), the official
# MaskFormerFusionHead and test_cfg (panoptic + instance results), 2048 sampled points; the official pipeline
# structure (flip, DETR-style AutoAugment, absolute-range crop, pad 32) at small scales, on the synthetic COCO
# panoptic shards (3 things + 3 stuff, the classes of that layout):
#   python -m vit_adapter_ds.data.make_shards synthetic --layout coco_panoptic --out shards/synthetic_coco_panoptic \
#       --num-train 64 --num-val 16 --size 192 256
#   python launch/train.py --config synthetic_mask2former_panoptic --ds_config ds_configs/zero2_fp32.json
_base_ = [
    '../_base_/datasets/coco_panoptic.py',
    '../_base_/default_runtime_det.py'
]
num_things_classes = 3
num_stuff_classes = 3
num_classes = num_things_classes + num_stuff_classes
model = dict(
    type='Mask2Former',
    backbone=dict(
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
    panoptic_head=dict(
        type='Mask2FormerHead',
        in_channels=[96, 96, 96, 96],
        feat_channels=64,
        out_channels=64,
        strides=[4, 8, 16, 32],
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        num_queries=16,
        num_transformer_feat_level=3,
        pixel_decoder=dict(
            type='MSDeformAttnPixelDecoder', num_outs=3, norm_cfg=dict(type='GN', num_groups=32),
            act_cfg=dict(type='ReLU'),
            encoder=dict(
                type='DetrTransformerEncoder', num_layers=2,
                transformerlayers=dict(
                    type='BaseTransformerLayer',
                    attn_cfgs=dict(type='MultiScaleDeformableAttention', embed_dims=64, num_heads=4, num_levels=3,
                                   num_points=4, im2col_step=64, dropout=0.0, batch_first=False, norm_cfg=None,
                                   init_cfg=None),
                    ffn_cfgs=dict(type='FFN', embed_dims=64, feedforward_channels=256, num_fcs=2, ffn_drop=0.0,
                                  act_cfg=dict(type='ReLU', inplace=True)),
                    operation_order=('self_attn', 'norm', 'ffn', 'norm')),
                init_cfg=None),
            positional_encoding=dict(type='SinePositionalEncoding', num_feats=32, normalize=True),
            init_cfg=None),
        enforce_decoder_input_project=False,
        positional_encoding=dict(type='SinePositionalEncoding', num_feats=32, normalize=True),
        transformer_decoder=dict(
            type='DetrTransformerDecoder', return_intermediate=True, num_layers=2,
            transformerlayers=dict(
                type='DetrTransformerDecoderLayer',
                attn_cfgs=dict(type='MultiheadAttention', embed_dims=64, num_heads=4, attn_drop=0.0,
                               proj_drop=0.0, dropout_layer=None, batch_first=False),
                ffn_cfgs=dict(embed_dims=64, feedforward_channels=256, num_fcs=2,
                              act_cfg=dict(type='ReLU', inplace=True), ffn_drop=0.0, dropout_layer=None,
                              add_identity=True),
                feedforward_channels=256,
                operation_order=('cross_attn', 'norm', 'self_attn', 'norm', 'ffn', 'norm')),
            init_cfg=None),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=2.0, reduction='mean',
                      class_weight=[1.0] * num_classes + [0.1]),
        loss_mask=dict(type='CrossEntropyLoss', use_sigmoid=True, reduction='mean', loss_weight=5.0),
        loss_dice=dict(type='DiceLoss', use_sigmoid=True, activate=True, reduction='mean', naive_dice=True, eps=1.0,
                       loss_weight=5.0)),
    panoptic_fusion_head=dict(
        type='MaskFormerFusionHead',
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        loss_panoptic=None,
        init_cfg=None),
    train_cfg=dict(
        num_points=2048, oversample_ratio=3.0, importance_sample_ratio=0.75,
        assigner=dict(type='MaskHungarianAssigner', cls_cost=dict(type='ClassificationCost', weight=2.0),
                      mask_cost=dict(type='CrossEntropyLossCost', weight=5.0, use_sigmoid=True),
                      dice_cost=dict(type='DiceCost', weight=5.0, pred_act=True, eps=1.0)),
        sampler=dict(type='MaskPseudoSampler')),
    test_cfg=dict(panoptic_on=True, semantic_on=False, instance_on=True, max_per_image=20, iou_thr=0.8,
                  filter_low_score=True),
    init_cfg=None)
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='AutoAugment',
         policies=[
             [dict(type='Resize', img_scale=[(160, 267), (176, 267), (192, 267)], multiscale_mode='value',
                   keep_ratio=True)],
             [dict(type='Resize', img_scale=[(128, 267), (144, 267)], multiscale_mode='value', keep_ratio=True),
              dict(type='RandomCrop', crop_type='absolute_range', crop_size=(96, 160), allow_negative_crop=True),
              dict(type='Resize', img_scale=[(160, 267), (176, 267), (192, 267)], multiscale_mode='value',
                   override=True, keep_ratio=True)]]),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle', img_to_float=True),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks', 'gt_semantic_seg']),
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
    train=dict(shard_dir='shards/synthetic_coco_panoptic/train', pipeline=train_pipeline),
    val=dict(shard_dir='shards/synthetic_coco_panoptic/val', pipeline=test_pipeline),
    test=dict(shard_dir='shards/synthetic_coco_panoptic/val', pipeline=test_pipeline))
evaluation = dict(interval=100, metric=['PQ'], save_best='PQ')
optimizer = dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05,
                 constructor='LayerDecayOptimizerConstructor',
                 paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.90))
optimizer_config = dict(grad_clip=dict(max_norm=0.01, norm_type=2))
lr_config = dict(policy='step', gamma=0.1, by_epoch=False, step=[200, 250], warmup='linear', warmup_by_epoch=False,
                 warmup_ratio=1.0, warmup_iters=10)
runner = dict(type='IterBasedRunner', max_iters=300)
checkpoint_config = dict(by_epoch=False, interval=100, max_keep_ckpts=2)
log_config = dict(interval=10)
work_dir = 'work_dirs/synthetic_mask2former_panoptic'
