# Official: segmentation/configs/coco_stuff164k/mask2former_beitv2_adapter_large_896_80k_cocostuff164k_ss.py
# (docs/official-architecture.md §4.1).
# Mask2Former + BEiTv2-Adapter-L, 896x896 crop, 80k iters, batch 16: the BEiT recipe with BEiTv2 weights.
# Stage 1: COCO-Stuff-164k (171 classes). 52.3 mIoU (SS).
_base_ = ['./mask2former_beit_adapter_large_896_80k_cocostuff164k_ss.py']
pretrained = 'pretrained/beitv2_large_patch16_224_pt1k_ft21k.pth'
model = dict(pretrained=pretrained)
