# Official: segmentation/configs/coco_stuff10k/mask2former_beit_adapter_base_512_40k_cocostuff10k_ss.py (fd64a51).
# 50.0 mIoU (SS) (50.0 / 50.5), 120M parameters. The BEiT-Adapter-L recipe mask2former_beit_adapter_large_512_40k_cocostuff10k_ss.py with BEiT-B: ViT-Adapter-B
# (768 wide, 12 layers, 12 heads, drop path 0.2, interactions every 3 blocks, no activation checkpointing), the
# 256-channel decoder of the official file (8 heads, pixel-decoder FFN 1024, transformer-decoder FFN 2048,
# num_feats 128, no with_cp in the FFNs), lr 3e-5 with layer decay 0.95 over 12 layers; batch 16 (8 GPUs x 2).
_base_ = ['./_base_/models/mask2former_beit_adapter.py', './_base_/datasets/coco_stuff10k.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_40k.py']
crop_size = (512, 512)
pretrained = 'pretrained/beit_base_patch16_224_pt22k_ft22k.pth'
model = dict(
    pretrained=pretrained,
    backbone=dict(
        _delete_=True,
        type='BEiTAdapter',
        img_size=512,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        qkv_bias=True,
        use_abs_pos_emb=False,
        use_rel_pos_bias=True,
        init_values=1e-6,
        drop_path_rate=0.2,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=12,
        cffn_ratio=0.25,
        deform_ratio=0.5,
        interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]]),
    decode_head=dict(
        in_channels=[768, 768, 768, 768],
        feat_channels=256,
        out_channels=256,
        num_queries=100,
        num_things_classes=80,
        num_stuff_classes=91,
        pixel_decoder=dict(
            encoder=dict(
                transformerlayers=dict(
                    attn_cfgs=dict(embed_dims=256, num_heads=8),
                    ffn_cfgs=dict(_delete_=True, type='FFN', embed_dims=256, feedforward_channels=1024, num_fcs=2,
                                  ffn_drop=0.0, act_cfg=dict(type='ReLU', inplace=True)))),
            positional_encoding=dict(num_feats=128)),
        positional_encoding=dict(num_feats=128),
        transformer_decoder=dict(
            transformerlayers=dict(
                attn_cfgs=dict(embed_dims=256, num_heads=8),
                ffn_cfgs=dict(_delete_=True, embed_dims=256, feedforward_channels=2048, num_fcs=2,
                              act_cfg=dict(type='ReLU', inplace=True), ffn_drop=0.0, dropout_layer=None,
                              add_identity=True),
                feedforward_channels=2048)),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=2.0, reduction='mean',
                      class_weight=[1.0] * 171 + [0.1])),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
optimizer = dict(_delete_=True, type='AdamW', lr=3e-5, betas=(0.9, 0.999), weight_decay=0.05,
                 constructor='LayerDecayOptimizerConstructor',
                 paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.95))
lr_config = dict(_delete_=True, policy='poly', warmup='linear', warmup_iters=1500, warmup_ratio=1e-6, power=1.0,
                 min_lr=0.0, by_epoch=False)
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
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
        img_scale=(2048, 512),
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
data = dict(samples_per_gpu=2,
            train=dict(pipeline=train_pipeline),
            val=dict(pipeline=test_pipeline),
            test=dict(pipeline=test_pipeline))
global_batch_size = 16
runner = dict(type='IterBasedRunner', max_iters=40000)
checkpoint_config = dict(by_epoch=False, interval=1000, max_keep_ckpts=1)
evaluation = dict(interval=4000, metric='mIoU', save_best='mIoU')
