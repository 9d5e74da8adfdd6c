# Official: detection/configs/mask_rcnn/mask_rcnn_augreg_large_fpn_3x_coco.py (fd64a51)
# Mask R-CNN 3x + the plain AugReg-L (384) baseline (ViTBaseline, no adapter: outputs of blocks 5, 11, 17, 23
# through norm1-4 and up1-4; window attention [T x 5, F] x 4, w=14; drop path 0.4), FPN 256, DETR-style
# AutoAugment, AugReg mean / std 127.5, AdamW lr 1e-4 wd 0.05 with LayerDecayOptimizerConstructor(num_layers=24,
# layer_decay_rate=0.80); 8 GPUs x 2 images; fp16 commented out; evaluation save_best='auto' (bbox_mAP).
# Reported box / mask AP: 48.3 / 43.3; #Param 337M (mask_rcnn/README.md, ViT-L).
_base_ = [
    '../_base_/models/mask_rcnn_fpn.py',
    '../_base_/datasets/coco_instance_augreg.py',
    '../_base_/schedules/schedule_3x.py',
    '../_base_/default_runtime_det.py'
]
pretrained = ('pretrained/L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-'
              'res_384.pth')
model = dict(
    backbone=dict(
        _delete_=True,
        type='ViTBaseline',
        img_size=384,
        pretrain_size=384,
        patch_size=16,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        mlp_ratio=4,
        drop_path_rate=0.4,
        out_indices=[5, 11, 17, 23],
        window_attn=[True, True, True, True, True, False] * 4,
        window_size=[14, 14, 14, 14, 14, None] * 4,
        pretrained=pretrained),
    neck=dict(
        type='FPN',
        in_channels=[1024, 1024, 1024, 1024],
        out_channels=256,
        num_outs=5))
img_norm_cfg = dict(
    mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], to_rgb=True)
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
    constructor='LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.80))
optimizer_config = dict(grad_clip=None)
evaluation = dict(save_best='auto')
# fp16 = dict(loss_scale=dict(init_scale=512))
checkpoint_config = dict(
    interval=1,
    max_keep_ckpts=2,
    save_last=True,
)
global_batch_size = 16
