# Built-in Mask2Former quickstart: the tiny ViT-Adapter of synthetic_quickstart.py (embed 96, depth 4,
# 4 interactions) + a small Mask2Former head (64 channels, 2 pixel-decoder layers, 2 decoder layers, 16 queries)
# on the synthetic dataset (8 classes: python -m vit_adapter_ds.data.make_shards synthetic ...), 128x128 crops.
# Same structure and keys as the official Mask2Former configs (_base_/models/mask2former_beit_adapter.py), only
# smaller, so the whole Mask2Former path (matching, point-sampled losses, deep supervision) runs on a 2-core CPU.
_base_ = ['./_base_/default_runtime.py']
num_classes = 8
crop_size = (128, 128)
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    type='EncoderDecoderMask2Former',
    pretrained=None,
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
    decode_head=dict(
        type='Mask2FormerHead',
        in_channels=[96, 96, 96, 96],
        feat_channels=64,
        out_channels=64,
        in_index=[0, 1, 2, 3],
        num_things_classes=num_classes,
        num_stuff_classes=0,
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
    train_cfg=dict(
        num_points=2048, oversample_ratio=3.0, importance_sample_ratio=0.75,
        assigner=dict(type='MaskHungarianAssigner', cls_cost=dict(type='ClassificationCost', weight=2.0),
                      mask_cost=dict(type='CrossEntropyLossCost', weight=5.0, use_sigmoid=True),
                      dice_cost=dict(type='DiceCost', weight=5.0, pred_act=True, eps=1.0)),
        sampler=dict(type='MaskPseudoSampler')),
    test_cfg=dict(mode='whole'),
    init_cfg=None)
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
    dict(type='ToMask'),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg', 'gt_masks', 'gt_labels']),
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
optimizer = dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05,
                 constructor='LayerDecayOptimizerConstructor',
                 paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.9))
optimizer_config = dict(grad_clip=dict(max_norm=1.0, norm_type=2))
lr_config = dict(policy='poly', warmup='linear', warmup_iters=20, warmup_ratio=1e-6, power=1.0, min_lr=0.0,
                 by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=300)
checkpoint_config = dict(by_epoch=False, interval=100, max_keep_ckpts=2)
evaluation = dict(interval=100, metric='mIoU', save_best='mIoU')
log_config = dict(interval=10)
work_dir = 'work_dirs/synthetic_mask2former'
