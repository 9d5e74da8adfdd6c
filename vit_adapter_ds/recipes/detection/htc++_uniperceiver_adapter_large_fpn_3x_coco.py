# Official: detection/configs/htc++/htc++_uniperceiver_adapter_large_fpn_3x_coco.py (fd64a51)
# HTC++ + detection Uni-Perceiver-Adapter-L (Uni-Perceiver-L encoder, window attention [T x 5, F] x 4, w=14,
# with_cp=False), neck [ExtraAttention (drop_path 0.4), FPN 256], the HTC++ heads, RPN and train / test settings of the
# BEiT / BEiTv2-L files (test_cfg.rcnn.max_per_img=100); the official file's drop_path_rate = 0.4 helper variable is
# written out in its two places, and its file_client_args (the disk backend, the default) is left out as in the other
# HTC++ recipes. ImageNet mean / std; AdamW lr 1e-4 wd 0.05 + layer decay 0.90; 16 GPUs x 1 image (htc++/README);
# unlike the other HTC++ files evaluation has save_best='auto'. The official READMEs list no result or parameter count
# for this file. Pretrained: the released Uni-Perceiver-L converted by the official uniperceiver_converter.py (the raw
# file loads too: the backbone's checkpoint filter applies the converter's rules).
_base_ = [
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_3x.py',
    '../_base_/default_runtime_det.py'
]
pretrained = 'pretrained/uni-perceiver-large-L24-H1024-224size-pretrained_converted.pth'
model = dict(
    type='HybridTaskCascade',
    backbone=dict(
        type='UniPerceiverAdapter', patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
        drop_path_rate=0.4, conv_inplane=64, n_points=4, deform_num_heads=16, cffn_ratio=0.25, deform_ratio=0.5,
        with_cp=False,
        interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
        window_attn=[True, True, True, True, True, False] * 4,
        window_size=[14, 14, 14, 14, 14, None] * 4,
        pretrained=pretrained),
    neck=[
        dict(type='ExtraAttention', in_channels=[1024, 1024, 1024, 1024], num_head=32, with_ffn=True, ffn_ratio=4.0,
             drop_path=0.4),
        dict(type='FPN', in_channels=[1024, 1024, 1024, 1024], out_channels=256, num_outs=5)],
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
             num_classes=80,
             bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                             target_stds=[0.1, 0.1, 0.2, 0.2]),
             reg_class_agnostic=True,
             loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
             loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)),
        dict(type='Shared4Conv1FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7,
             num_classes=80,
             bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                             target_stds=[0.05, 0.05, 0.1, 0.1]),
             reg_class_agnostic=True,
             loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
             loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)),
        dict(type='Shared4Conv1FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7,
             num_classes=80,
             bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                             target_stds=[0.033, 0.033, 0.067, 0.067]),
             reg_class_agnostic=True,
             loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
             loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)),
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
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='InstaBoost', action_candidate=('normal', 'horizontal', 'skip'), action_prob=(1, 0, 0), scale=(0.8, 1.2),
         dx=15, dy=15, theta=(-1, 1), color_prob=0.5, hflag=False, aug_ratio=0.5),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='Resize', img_scale=[(1600, 400), (1600, 1400)], multiscale_mode='range', keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='SegRescale', scale_factor=1 / 8),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug',
         img_scale=(1600, 1400),
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
data = dict(samples_per_gpu=1,
            train=dict(seg_prefix='data/coco/stuffthingmaps/train2017/', pipeline=train_pipeline),
            test=dict(pipeline=test_pipeline),
            val=dict(pipeline=test_pipeline))
optimizer = dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05,
                 constructor='LayerDecayOptimizerConstructor',
                 paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.90))
optimizer_config = dict(grad_clip=None)
checkpoint_config = dict(interval=1, max_keep_ckpts=2, save_last=True)
evaluation = dict(save_best='auto')
global_batch_size = 16
# fp16 = dict(loss_scale=dict(init_scale=512))
