# Official: detection/configs/htc++/htc++_beit_adapter_large_fpn_3x_coco.py (czczup/ViT-Adapter; spec §5.1): the
# BEiTv2-L recipe (./htc++_beitv2_adapter_large_fpn_3x_coco.py, identical fields) with the BEiT-L pretrained file
# (pt22k-ft22k), drop_path_rate 0.3 ("maybe 0.4 is better" in the official file) and soft-NMS (IoU 0.7) as the RPN's
# proposal NMS in training and testing. Reported 58.5 / 50.8 box / mask AP (minival), 58.9 / 51.3 test-dev; with
# the TTA of ./htc++_beit_adapter_large_fpn_3x_coco_ms.py 60.4 / 52.5 (test-dev).
_base_ = ['./htc++_beitv2_adapter_large_fpn_3x_coco.py']
pretrained = 'pretrained/beit_large_patch16_224_pt22k_ft22k.pth'
model = dict(
    backbone=dict(drop_path_rate=0.3, pretrained=pretrained),
    train_cfg=dict(rpn_proposal=dict(nms=dict(type='soft_nms', iou_threshold=0.7))),
    test_cfg=dict(rpn=dict(nms=dict(type='soft_nms', iou_threshold=0.7))))
