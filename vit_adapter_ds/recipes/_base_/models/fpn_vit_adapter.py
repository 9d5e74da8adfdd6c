# mmseg 0.x _base_/models/fpn_r50.py (Semantic FPN; the copy PVT's configs use:
# github.com/whai362/PVT segmentation/configs/_base_/models/fpn_r50.py) with the backbone slot left for the recipe
# (as upernet_vit_adapter.py) and ADE20K's 150 classes (fpn_r50.py has Cityscapes' 19; PVT's configs set 150):
# FPN neck (out 256, 4 levels, no extra convs), FPNHead (128 channels, strides 4-32, dropout 0.1, SyncBN, CE loss),
# no auxiliary head, whole-image test.
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained=None,
    backbone=dict(type='ViTAdapter'),
    neck=dict(
        type='FPN',
        in_channels=[768, 768, 768, 768],
        out_channels=256,
        num_outs=4),
    decode_head=dict(
        type='FPNHead',
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
