# Official: detection/configs/mask_rcnn/mask_rcnn_deit_adapter_base_fpn_1x_coco.py (fd64a51)
# Mask R-CNN 1x + detection ViT-Adapter-B (window attention [T, T, F] x 4, w=14; the 3x recipe's model), FPN 256.
# Unlike the 3x recipe the train pipeline is the base coco_instance one (single scale 1333 x 800 + flip, no
# AutoAugment / crop); AdamW lr 1e-4 wd 0.05 with decay_mult 0 for level_embed / pos_embed / norm / bias; 12 epochs,
# steps 8 / 11; 8 GPUs x 2 images; fp16 commented out; evaluation save_best='auto' (bbox_mAP).
# Reported box / mask AP: 47.0 / 41.8 (detection/configs/mask_rcnn/README.md, 120M parameters).
_base_ = [
    '../_base_/models/mask_rcnn_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime_det.py'
]
pretrained = 'pretrained/deit_base_patch16_224-b5f2ef4d.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ViTAdapter',
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        drop_path_rate=0.3,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=12,
        cffn_ratio=0.25,
        deform_ratio=0.5,
        interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
        window_attn=[True, True, False, True, True, False,
                     True, True, False, True, True, False],
        window_size=[14, 14, None, 14, 14, None,
                     14, 14, None, 14, 14, None],
        pretrained=pretrained),
    neck=dict(
        type='FPN',
        in_channels=[768, 768, 768, 768],
        out_channels=256,
        num_outs=5))
data = dict(
    samples_per_gpu=2,
    workers_per_gpu=2)
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
