# Official: detection/configs/mask_rcnn/mask_rcnn_augreg_adapter_large_fpn_1x_coco.py (fd64a51)
# Mask R-CNN 1x + detection ViT-Adapter-L (AugReg, 384 pre-training; window attention [T x 5, F] x 4, w=14; the 3x
# recipe's model), FPN 256, AugReg mean / std 127.5. Unlike the 3x recipe the train pipeline is the base
# coco_instance_augreg one (single scale 1333 x 800 + flip, no AutoAugment / crop); AdamW lr 1e-4 wd 0.05 with
# LayerDecayOptimizerConstructor(num_layers=24, layer_decay_rate=0.80); 12 epochs, steps 8 / 11; 8 GPUs x 2 images;
# fp16 commented out; evaluation save_best='auto' (bbox_mAP).
# Reported box / mask AP: 48.7 / 43.3 (detection/configs/mask_rcnn/README.md, 348M parameters; that table's config
# link points at the 3x file).
_base_ = [
    '../_base_/models/mask_rcnn_fpn.py',
    '../_base_/datasets/coco_instance_augreg.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime_det.py'
]
pretrained = ('pretrained/L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-'
              'res_384.pth')
model = dict(
    backbone=dict(
        _delete_=True,
        type='ViTAdapter',
        img_size=384,
        pretrain_size=384,
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
        interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
        window_attn=[True, True, True, True, True, False,
                     True, True, True, True, True, False,
                     True, True, True, True, True, False,
                     True, True, True, True, True, False],
        window_size=[14, 14, 14, 14, 14, None,
                     14, 14, 14, 14, 14, None,
                     14, 14, 14, 14, 14, None,
                     14, 14, 14, 14, 14, None],
        pretrained=pretrained),
    neck=dict(
        type='FPN',
        in_channels=[1024, 1024, 1024, 1024],
        out_channels=256,
        num_outs=5))
data = dict(
    samples_per_gpu=2,
    workers_per_gpu=2)
optimizer = dict(
    _delete_=True, type='AdamW', lr=0.0001, weight_decay=0.05,
    constructor='LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.80))
optimizer_config = dict(grad_clip=None)
evaluation = dict(save_best='auto')
# fp16 = dict(loss_scale=dict(init_scale=512))  (commented out in the official file)
checkpoint_config = dict(
    interval=1,
    max_keep_ckpts=2,
    save_last=True,
)
global_batch_size = 16
