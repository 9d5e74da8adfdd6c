# Official: segmentation/configs/ade20k/upernet_uniperceiver_adapter_large_512_160k_ade20k.py (fd64a51). UperNet +
# Uni-Perceiver-Adapter-L (Uni-Perceiver-L encoder, global attention in every layer, with_cp=True), ADE20K 512x512,
# 160k iters, batch 16 (8 GPUs x 2), AdamW lr 6e-5 wd 0.05 + layer decay 0.8, poly schedule with 1500-iteration linear
# warm-up, fp16 (init_scale 512). Pretrained: the released Uni-Perceiver-L converted by the official
# uniperceiver_converter.py (a raw uni-perceiver-large-L24-H1024-224size-pretrained.pth loads too: the backbone's
# checkpoint filter applies the converter's rules). Reported mIoU 55.0 / 55.4 (SS / MS); segmentation/README.md lists
# 364M parameters, the AugReg-L row's figure: this model has 363.4M (Uni-Perceiver keeps 196 + 8 position rows
# where AugReg-L has a 577-token pos_embed).
_base_ = ['./_base_/models/upernet_vit_adapter.py', './_base_/datasets/ade20k.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_160k.py']
crop_size = (512, 512)
pretrained = 'pretrained/uni-perceiver-large-L24-H1024-224size-pretrained_converted.pth'
model = dict(
    pretrained=pretrained,
    backbone=dict(
        _delete_=True,
        type='UniPerceiverAdapter',
        patch_size=16,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        mlp_ratio=4,
        drop_path_rate=0.4,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=16,
        cffn_ratio=0.25,
        deform_ratio=0.5,
        with_cp=True,  # set with_cp=True to save memory
        interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
        window_attn=[False] * 24,
        window_size=[None] * 24),
    decode_head=dict(num_classes=150, in_channels=[1024, 1024, 1024, 1024]),
    auxiliary_head=dict(num_classes=150, in_channels=1024),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
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
optimizer = dict(_delete_=True, type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05,
                 constructor='LayerDecayOptimizerConstructor',
                 paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.8))
lr_config = dict(_delete_=True, policy='poly', warmup='linear', warmup_iters=1500, warmup_ratio=1e-6, power=1.0,
                 min_lr=0.0, by_epoch=False)
data = dict(samples_per_gpu=2,
            val=dict(pipeline=test_pipeline),
            test=dict(pipeline=test_pipeline))
global_batch_size = 16
runner = dict(type='IterBasedRunner', max_iters=160000)
checkpoint_config = dict(by_epoch=False, interval=1000, max_keep_ckpts=1)
evaluation = dict(interval=16000, metric='mIoU', save_best='mIoU')
fp16 = dict(loss_scale=dict(init_scale=512))
