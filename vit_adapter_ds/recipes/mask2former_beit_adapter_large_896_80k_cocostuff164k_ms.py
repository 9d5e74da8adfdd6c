# Official: segmentation/configs/coco_stuff164k/mask2former_beit_adapter_large_896_80k_cocostuff164k_ms.py (docs/official-architecture.md §4.1).
# The _ss recipe with the official multi-scale + flip test: img_ratios=[640/896, 768/896, 1.0], flip=True,
# PadShortSide(896, pad_val=0 BEFORE Normalize: black pixels), padding removed after the sliding window. 52.0 mIoU.
# EncoderDecoderMask2Former.aug_test(pad_short_side=896, pad_value='black') implements the padding rule.
_base_ = ['./mask2former_beit_adapter_large_896_80k_cocostuff164k_ss.py']
evaluation = dict(img_ratios=[640. / 896., 768. / 896., 1.0], flip=True,
                  pad_short_side=dict(size=896, before_normalize=True))
