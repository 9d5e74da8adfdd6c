"""Mask2Former head (official ViT-Adapter segmentation ``Mask2FormerHead``) in plain PyTorch on the project's
deformable-attention op: pixel decoder, masked-attention decoder, Hungarian matching and losses."""
from .criterion import Mask2FormerCriterion, semantic_to_masks
from .head import Mask2FormerHead, official_to_ours, ours_to_official
from .matcher import HungarianMatcher
from .pixel_decoder import MSDeformAttnPixelDecoder
from .point_sample import point_sample, uncertain_point_coords
from .positional_encoding import SinePositionalEncoding
from .transformer_decoder import MaskedAttentionDecoder, fill_fully_masked_rows

__all__ = ["Mask2FormerHead", "Mask2FormerCriterion", "HungarianMatcher", "MSDeformAttnPixelDecoder",
           "MaskedAttentionDecoder", "SinePositionalEncoding", "point_sample", "uncertain_point_coords",
           "semantic_to_masks", "fill_fully_masked_rows", "official_to_ours", "ours_to_official"]
