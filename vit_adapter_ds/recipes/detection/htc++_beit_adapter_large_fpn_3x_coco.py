# Official: detection/configs/htc++/htc++_beit_adapter_large_fpn_3x_coco.py (czczup/ViT-Adapter at fd64a51; spec
# §5.1): the BEiTv2-L recipe (./htc++_beitv2_adapter_large_fpn_3x_coco.py) with the BEiT-L pretrained file
# (pt22k-ft22k); every other field is the same in the two official files: backbone drop_path_rate 0.4 (0.3 is the
# ExtraAttention neck's drop_path), plain NMS (IoU 0.7) for the RPN's proposals in training and testing, soft-NMS
# (IoU 0.5) only in test_cfg.rcnn. Reported 58.4 / 50.8 box / mask AP (minival), 58.9 / 51.3 test-dev; with the TTA
# of ./htc++_beit_adapter_large_fpn_3x_coco_ms.py 60.4 / 52.5 (test-dev).
_base_ = ['./htc++_beitv2_adapter_large_fpn_3x_coco.py']
pretrained = 'pretrained/beit_large_patch16_224_pt22k_ft22k.pth'
model = dict(backbone=dict(pretrained=pretrained))
