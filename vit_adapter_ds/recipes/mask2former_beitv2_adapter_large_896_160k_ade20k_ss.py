# Official: segmentation/configs/ade20k/mask2former_beitv2_adapter_large_896_160k_ade20k_ss.py (fd64a51). The
# official README gives no result for it ("- / -"), 571M parameters.
# Mask2Former (200 queries) + BEiTv2-Adapter-L, ADE20K 896x896, 160k iters, batch 16 (16 GPUs x 1), layer decay 0.9,
# from BEiTv2-L ImageNet weights only (no COCO-Stuff stage: no load_from); evaluation every 8000 iterations and a
# single-scale test without flip, as the official file. Otherwise the BEiT 896 ADE20K recipe it derives from.
_base_ = ['./mask2former_beit_adapter_large_896_80k_ade20k_ss.py']
pretrained = 'pretrained/beitv2_large_patch16_224_pt1k_ft21k.pth'
load_from = None
model = dict(pretrained=pretrained)
runner = dict(type='IterBasedRunner', max_iters=160000)
evaluation = dict(interval=8000, metric='mIoU', save_best='mIoU')
