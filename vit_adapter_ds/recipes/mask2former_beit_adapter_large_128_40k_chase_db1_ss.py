# Official: segmentation/configs/chase_db1/mask2former_beit_adapter_large_128_40k_chase_db1_ss.py (fd64a51): Mask2Former
# (100 queries, the 256-channel decoder of the official _base_/models/mask2former_beit_chase_db1.py) + BEiT-Adapter-L,
# 2 classes, 128 crops, 40k iterations, batch 16 (README "4x4"), evaluated and kept best by mDice. 89.4 mDice.
_base_ = ['./_base_/models/mask2former_beit_adapter.py', './_base_/datasets/chase_db1.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_40k.py']
crop_size = (128, 128)
img_scale = (960, 999)
pretrained = 'pretrained/beit_large_patch16_224_pt22k_ft22k.pth'
model = dict(
    type='EncoderDecoderMask2Former',
    pretrained=pretrained,
    backbone=dict(
        _delete_=True,
        type='BEiTAdapter',
        img_size=crop_size[0],
        patch_size=16,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        mlp_ratio=4,
        qkv_bias=True,
        use_abs_pos_emb=False,
        use_rel_pos_bias=True,
        init_values=1e-6,
        drop_path_rate=0.3,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=16,
        cffn_ratio=0.25,
        deform_ratio=0.5,
        with_cp=True,
        interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]]),
    # the official file's 256-channel decoder (the dims of the official _base_/models/mask2former_beit.py):
    # feat / out channels 256, 8 attention heads, FFN 2048, positional num_feats 128; with_cp=True in both FFNs
    decode_head=dict(
        in_channels=[1024, 1024, 1024, 1024],
        feat_channels=256,
        out_channels=256,
        num_queries=100,
        num_things_classes=0,
        num_stuff_classes=2,
        pixel_decoder=dict(
            encoder=dict(
                transformerlayers=dict(
                    attn_cfgs=dict(embed_dims=256, num_heads=8),
                    ffn_cfgs=dict(embed_dims=256, feedforward_channels=2048))),
            positional_encoding=dict(num_feats=128)),
        positional_encoding=dict(num_feats=128),
        transformer_decoder=dict(
            transformerlayers=dict(
                attn_cfgs=dict(embed_dims=256, num_heads=8),
                ffn_cfgs=dict(embed_dims=256, feedforward_channels=2048),
                feedforward_channels=2048)),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=2.0, reduction='mean',
                      class_weight=[1.0] * 2 + [0.1])),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(85, 85)))
optimizer = dict(_delete_=True, type='AdamW', lr=2e-5, betas=(0.9, 0.999), weight_decay=0.05,
                 constructor='LayerDecayOptimizerConstructor',
                 paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.90))
lr_config = dict(_delete_=True, policy='poly', warmup='linear', warmup_iters=1500, warmup_ratio=1e-6, power=1.0,
                 min_lr=0.0, by_epoch=False)
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', img_scale=img_scale, ratio_range=(0.5, 2.0)),
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
        img_scale=img_scale,
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
data = dict(samples_per_gpu=4,
            train=dict(pipeline=train_pipeline),
            val=dict(pipeline=test_pipeline),
            test=dict(pipeline=test_pipeline))
global_batch_size = 16
runner = dict(type='IterBasedRunner', max_iters=40000)
checkpoint_config = dict(by_epoch=False, interval=1000, max_keep_ckpts=1)
evaluation = dict(interval=4000, metric='mDice', save_best='mDice')
