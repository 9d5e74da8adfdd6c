# Official: segmentation/configs/ade20k/mask2former_beitv2_adapter_large_896_80k_ade20k_ms.py (docs/official-architecture.md §4.1).
# The BEiTv2 _ss recipe with the official multi-scale + flip test: img_ratios=[800/896, 832/896, 864/896, 1.0],
# flip=True, PadShortSide(896, pad_val=0 AFTER Normalize: zeros in the normalised image), padding removed after
# the sliding window (EncoderDecoderMask2FormerAug). 61.5 mIoU.
# EncoderDecoderMask2Former.aug_test(pad_short_side=896, pad_value=0.0) implements the padding rule.
_base_ = ['./mask2former_beitv2_adapter_large_896_80k_ade20k_ss.py']
evaluation = dict(img_ratios=[800. / 896., 832. / 896., 864. / 896., 1.0], flip=True,
                  pad_short_side=dict(size=896, before_normalize=False))
