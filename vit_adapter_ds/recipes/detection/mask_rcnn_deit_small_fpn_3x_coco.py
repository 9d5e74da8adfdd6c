# Official: detection/configs/mask_rcnn/mask_rcnn_deit_small_fpn_3x_coco.py (fd64a51)
# Mask R-CNN 3x + the plain DeiT-S baseline (ViTBaseline, no adapter: outputs of blocks 2, 5, 8, 11
# through norm1-4 and up1-4; window attention [T, T, F] x 4, w=14; drop path 0.1 in all three DeiT files),
# FPN 256, DETR-style AutoAugment, AdamW lr 1e-4 wd 0.05 with decay_mult 0 for level_embed / pos_embed / norm /
# bias; 8 GPUs x 2 images; fp16 commented out; evaluation save_best='auto' (bbox_mAP).
# Reported box / mask AP: 44.0 / 39.9; #Param 42M (mask_rcnn/README.md, ViT-S). Built from this file the model has
# 43.8M: its backbone keys and shapes equal the official ViTBaseline-S (parity golden vit_baseline_small_det) and
# the T / B / L files give their README counts (26M / 114M / 337M), so the 42M is the README's.
_base_ = [
    '../_base_/models/mask_rcnn_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_3x.py',
    '../_base_/default_runtime_det.py'
]
pretrained = 'pretrained/deit_small_patch16_224-cd65a155.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ViTBaseline',
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4,
        drop_path_rate=0.1,
        out_indices=[2, 5, 8, 11],
        window_attn=[True, True, False] * 4,
        window_size=[14, 14, None] * 4,
        pretrained=pretrained),
    neck=dict(
        type='FPN',
        in_channels=[384, 384, 384, 384],
        out_channels=256,
        num_outs=5))
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
# augmentation strategy originates from DETR / Sparse RCNN
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='AutoAugment',
         policies=[
             [
                 dict(type='Resize',
                      img_scale=[(480, 1333), (512, 1333), (544, 1333), (576, 1333),
                                 (608, 1333), (640, 1333), (672, 1333), (704, 1333),
                                 (736, 1333), (768, 1333), (800, 1333)],
                      multiscale_mode='value',
                      keep_ratio=True)
             ],
             [
                 dict(type='Resize',
                      img_scale=[(400, 1333), (500, 1333), (600, 1333)],
                      multiscale_mode='value',
                      keep_ratio=True),
                 dict(type='RandomCrop',
                      crop_type='absolute_range',
                      crop_size=(384, 600),
                      allow_negative_crop=True),
                 dict(type='Resize',
                      img_scale=[(480, 1333), (512, 1333), (544, 1333),
                                 (576, 1333), (608, 1333), (640, 1333),
                                 (672, 1333), (704, 1333), (736, 1333),
                                 (768, 1333), (800, 1333)],
                      multiscale_mode='value',
                      override=True,
                      keep_ratio=True)
             ]
         ]),
    dict(type='RandomCrop',
         crop_type='absolute_range',
         crop_size=(1024, 1024),
         allow_negative_crop=True),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks']),
]
data = dict(train=dict(pipeline=train_pipeline))
optimizer = dict(
    _delete_=True, type='AdamW', lr=0.0001, weight_decay=0.05,
    paramwise_cfg=dict(
        custom_keys={
            'level_embed': dict(decay_mult=0.),
            'pos_embed': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'bias': dict(decay_mult=0.)
        }))
optimizer_config = dict(grad_clip=None)
evaluation = dict(save_best='auto')
# fp16 = dict(loss_scale=dict(init_scale=512))  (commented out in the official file)
checkpoint_config = dict(
    interval=1,
    max_keep_ckpts=3,
    save_last=True,
)
global_batch_size = 16
