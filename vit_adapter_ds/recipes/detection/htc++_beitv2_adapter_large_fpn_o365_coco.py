# Official: detection/configs/htc++/htc++_beitv2_adapter_large_fpn_o365_coco.py (czczup/ViT-Adapter at fd64a51):
# the COCO fine-tune of the HTC++ BEiTv2-Adapter-L pre-trained on Objects365 (load_from the released
# htc++_beitv2_adapter_large_fpn_o365.pth, whose 365-class box classifiers are re-initialised for COCO's 80, see
# checkpoint/loading.py reinit_mismatched). Against ./htc++_beitv2_adapter_large_fpn_3x_coco.py: with_cp in the
# backbone and ExtraAttention, drop path 0.3 in both, GN in the FPN, SyncBN + GIoU (x10) on decoded boxes in the three
# box heads; no InstaBoost, Resize range 2000 x 600..1600, test 2000 x 1000; 32 GPUs x 2 images; AdamW lr 1e-4 with
# layer decay 0.80, grad clip 0.1; 20000 iterations, constant rate after a 500-iteration warm-up (step=[]);
# checkpoint and evaluation every 500 iterations (3 kept, best by box AP) and mmdet's ExpMomentumEMAHook (engine/
# ema.py: under this IterBasedRunner mmdet never swaps the average in, so evaluation and saved weights are the
# trained ones; the average is saved with each checkpoint). Reported 61.8 / 53.0 box / mask AP (minival, single
# scale), 62.6 / 54.2 with ./htc++_beitv2_adapter_large_fpn_o365_coco_ms.py (htc++/README.md; 401M parameters).
_base_ = [
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime_det.py'
]
NUM_CLASSES = 80
drop_path_rate = 0.3  # 0.4 (pre-train) -> 0.3 (fine-tune)
# https://github.com/czczup/ViT-Adapter/releases/download/v0.3.1/htc++_beitv2_adapter_large_fpn_o365.pth
load_from = 'pretrained/htc++_beitv2_adapter_large_fpn_o365.pth'
model = dict(
    type='HybridTaskCascade',
    backbone=dict(
        type='BEiTAdapter', img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
        qkv_bias=True, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-6,
        drop_path_rate=drop_path_rate, conv_inplane=64, n_points=4, deform_num_heads=16, cffn_ratio=0.25,
        deform_ratio=0.5, with_cp=True,
        window_attn=[True] * 24,
        window_size=[14, 14, 14, 14, 14, 56] * 4,
        interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
        pretrained=None),
    neck=[
        dict(type='ExtraAttention', in_channels=[1024, 1024, 1024, 1024], num_head=32, with_ffn=True, with_cp=True,
             ffn_ratio=4.0, drop_path=drop_path_rate),
        dict(type='FPN', in_channels=[1024, 1024, 1024, 1024], norm_cfg=dict(type='GN', num_groups=32),
             out_channels=256, num_outs=5)],
    rpn_head=dict(
        type='RPNHead', in_channels=256, feat_channels=256,
        anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)),
    roi_head=dict(
        type='HybridTaskCascadeRoIHead', interleaved=True, mask_info_flow=True, num_stages=3,
        stage_loss_weights=[1, 0.5, 0.25],
        bbox_roi_extractor=dict(type='SingleRoIExtractor',
                                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0), out_channels=256,
                                featmap_strides=[4, 8, 16, 32]),
        bbox_head=[
        dict(type='Shared4Conv1FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7,
             num_classes=NUM_CLASSES,
             bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                             target_stds=[0.1, 0.1, 0.2, 0.2]),
             reg_class_agnostic=True, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
             loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
             loss_bbox=dict(type='GIoULoss', loss_weight=10.0)),  # use GIoU loss
        dict(type='Shared4Conv1FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7,
             num_classes=NUM_CLASSES,
             bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                             target_stds=[0.05, 0.05, 0.1, 0.1]),
             reg_class_agnostic=True, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
             loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
             loss_bbox=dict(type='GIoULoss', loss_weight=10.0)),  # use GIoU loss
        dict(type='Shared4Conv1FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7,
             num_classes=NUM_CLASSES,
             bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                             target_stds=[0.033, 0.033, 0.067, 0.067]),
             reg_class_agnostic=True, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
             loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
             loss_bbox=dict(type='GIoULoss', loss_weight=10.0)),  # use GIoU loss
        ],
        mask_roi_extractor=dict(type='SingleRoIExtractor',
                                roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0), out_channels=256,
                                featmap_strides=[4, 8, 16, 32]),
        mask_head=[
        dict(type='HTCMaskHead', with_conv_res=False, num_convs=4, in_channels=256, conv_out_channels=256,
             num_classes=80, loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)),
        dict(type='HTCMaskHead', num_convs=4, in_channels=256, conv_out_channels=256,
             num_classes=80, loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)),
        dict(type='HTCMaskHead', num_convs=4, in_channels=256, conv_out_channels=256,
             num_classes=80, loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)),
        ],
        semantic_roi_extractor=dict(type='SingleRoIExtractor',
                                    roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
                                    out_channels=256, featmap_strides=[8]),
        semantic_head=dict(type='FusedSemanticHead', num_ins=5, fusion_level=1, num_convs=4, in_channels=256,
                           conv_out_channels=256, num_classes=183,
                           loss_seg=dict(type='CrossEntropyLoss', ignore_index=255, loss_weight=0.2))),
    train_cfg=dict(
        rpn=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                               ignore_iof_thr=-1),
                 sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                              add_gt_as_proposals=False),
                 allowed_border=0, pos_weight=-1, debug=False),
        rpn_proposal=dict(nms_pre=2000, max_per_img=2000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=[
        dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                               ignore_iof_thr=-1),
             sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
             mask_size=28, pos_weight=-1, debug=False),
        dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.6, neg_iou_thr=0.6, min_pos_iou=0.6,
                               ignore_iof_thr=-1),
             sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
             mask_size=28, pos_weight=-1, debug=False),
        dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.7, min_pos_iou=0.7,
                               ignore_iof_thr=-1),
             sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
             mask_size=28, pos_weight=-1, debug=False),
        ]),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.001, nms=dict(type='soft_nms', iou_threshold=0.5), max_per_img=100,
                  mask_thr_binary=0.5)))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
file_client_args = dict(backend='disk')
train_pipeline = [
    dict(type='LoadImageFromFile', file_client_args=file_client_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='Resize', img_scale=[(2000, 600), (2000, 1600)], multiscale_mode='range', keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='SegRescale', scale_factor=1 / 8),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile', file_client_args=file_client_args),
    dict(type='MultiScaleFlipAug',
         img_scale=(2000, 1000),
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
# 4 nodes, total batch size=2*32=64
data = dict(samples_per_gpu=2,
            train=dict(seg_prefix='data/coco/stuffthingmaps/train2017/', pipeline=train_pipeline),
            test=dict(pipeline=test_pipeline),
            val=dict(pipeline=test_pipeline))
global_batch_size = 64
optimizer = dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05,
                 constructor='LayerDecayOptimizerConstructor',
                 paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.80))
optimizer_config = dict(_delete_=True, grad_clip=dict(max_norm=0.1, norm_type=2))
lr_config = dict(policy='step', warmup='linear', warmup_iters=500, warmup_ratio=0.001, step=[])
runner = dict(_delete_=True, type='IterBasedRunner', max_iters=20000)
checkpoint_config = dict(interval=500, max_keep_ckpts=3)
evaluation = dict(interval=500, save_best='auto')
custom_hooks = [dict(type='ExpMomentumEMAHook', resume_from=None, momentum=0.0001, priority=49)]
