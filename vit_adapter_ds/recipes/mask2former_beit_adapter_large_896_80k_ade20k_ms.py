# Official: segmentation/configs/ade20k/mask2former_beit_adapter_large_896_80k_ade20k_ms.py (docs/official-architecture.md §4.1).
# The _ss recipe (same training) with the official multi-scale + flip test: MultiScaleFlipAug(img_scale=(3584, 896),
# img_ratios=[640/896, 768/896, 1.0], flip=True), Resize(keep_ratio), ResizeToMultiple(32), PadShortSide(896,
# pad_val=0 BEFORE Normalize, i.e. black pixels), slide 896 / stride 512, padding removed before the resize back
# (EncoderDecoderMask2FormerAug). 60.5 mIoU. EncoderDecoderMask2Former.aug_test(pad_short_side=896,
# pad_value='black') implements the padding rule.
_base_ = ['./mask2former_beit_adapter_large_896_80k_ade20k_ss.py']
evaluation = dict(img_ratios=[640. / 896., 768. / 896., 1.0], flip=True,
                  pad_short_side=dict(size=896, before_normalize=True))
