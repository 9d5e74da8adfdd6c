"""Mask2Former head (mmseg_custom ``Mask2FormerHead`` of the official ViT-Adapter segmentation code).

Data flow for the backbone's 4 maps (strides 4/8/16/32):

1. :class:`~.pixel_decoder.MSDeformAttnPixelDecoder` -> 1/4 ``mask_features`` and 3 multi-scale maps (1/32, 1/16,
   1/8); each map gets ``level_embed`` and the sine positional encoding and is flattened as decoder memory.
2. ``num_queries`` queries (``query_feat`` content, ``query_embed`` positions). A first prediction is made from
   the raw queries; then decoder layer i cross-attends to level ``i % 3`` with the attention mask of the previous
   prediction (mask logits resized bilinearly to that level, ``sigmoid < 0.5`` masked, a fully masked row
   un-masked), self-attends and applies its FFN; a prediction follows every layer, so there are
   ``num_layers + 1`` predictions for deep supervision.
3. A prediction: ``post_norm`` -> ``cls_embed`` (C + 1 logits, last = no object) and ``mask_embed`` (3-layer MLP)
   dotted with ``mask_features`` -> (N, Q, H/4, W/4) mask logits.

Semantic inference (``forward_test``) uses the last prediction:
``seg[n, c] = sum_q softmax(cls[n, q])[c] * sigmoid(mask[n, q])`` for the C real classes.

State-dict keys (under ``decode_head.``) are the official ones: ``pixel_decoder.*`` (see its module),
``transformer_decoder.layers.{i}.*`` and ``transformer_decoder.post_norm.*``, ``query_embed.weight``,
``query_feat.weight``, ``level_embed.weight``, ``cls_embed.{weight,bias}``, ``mask_embed.{0,2,4}.{weight,bias}``
(plus ``decoder_input_projs.{i}.*`` only when a projection exists). The official head also carries mmseg's unused
``conv_seg`` classifier; :func:`official_to_ours` drops it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import HEADS
from ...layer_decay import zero_layer_id
from .criterion import Mask2FormerCriterion, num_matched_masks, semantic_to_masks
from .layers import caffe2_xavier_init_
from .matcher import HungarianMatcher
from .pixel_decoder import MSDeformAttnPixelDecoder
from .positional_encoding import SinePositionalEncoding
from .transformer_decoder import MaskedAttentionDecoder, fill_fully_masked_rows

# official decode_head keys with no counterpart here (mmseg BaseDecodeHead's classifier, unused by Mask2Former)
UNUSED_OFFICIAL_KEYS = ("conv_seg.weight", "conv_seg.bias")


def official_to_ours(state_dict: dict, prefix: str = "decode_head.") -> dict:
    """An official segmentor (or head, ``prefix=''``) state dict -> ours: identical keys, minus the unused
    ``{prefix}conv_seg.*`` of mmseg's BaseDecodeHead."""
    drop = {prefix + k for k in UNUSED_OFFICIAL_KEYS}
    return {k: v for k, v in state_dict.items() if k not in drop}


def ours_to_official(state_dict: dict, prefix: str = "decode_head.") -> dict:
    """Ours -> official keys (identical; ``conv_seg`` is not added: mmcv loads released checkpoints non-strictly
    and the official head never uses it)."""
    return dict(state_dict)


@HEADS.register()
class Mask2FormerHead(nn.Module):
    """See the module docstring.

    Args:
        in_channels: channels of the 4 backbone maps.
        feat_channels: pixel-decoder / transformer-decoder width (the official configs use one value for both).
        out_channels: mask-feature width (= ``mask_embed`` output).
        num_classes: C (``num_things_classes + num_stuff_classes``).
        num_queries: number of queries.
        num_transformer_feat_level: number of multi-scale maps the decoder cycles through (3).
        pixel_decoder: keyword arguments of :class:`MSDeformAttnPixelDecoder` (besides channels).
        decoder: keyword arguments of :class:`MaskedAttentionDecoder` (``num_layers``, ``num_heads``,
            ``feedforward_channels``, ``with_cp``, dropouts; ``embed_dims`` = ``feat_channels``).
        positional_encoding: keyword arguments of the decoder's :class:`SinePositionalEncoding`.
        enforce_decoder_input_project: 1x1 conv projections of the memory even when widths agree.
        criterion: a :class:`Mask2FormerCriterion` (default: official weights and sampling).
        ignore_index: label value without a mask target.
    """

    def __init__(self, in_channels=(1024, 1024, 1024, 1024), feat_channels: int = 1024, out_channels: int = 1024, *,
                 num_classes: int, num_queries: int = 100, num_transformer_feat_level: int = 3,
                 pixel_decoder: dict | None = None, decoder: dict | None = None,
                 positional_encoding: dict | None = None, enforce_decoder_input_project: bool = False,
                 criterion: Mask2FormerCriterion | None = None, ignore_index: int = 255, align_corners: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.in_channels = list(in_channels)
        self.num_classes = int(num_classes)
        self.num_queries = int(num_queries)
        self.num_transformer_feat_level = int(num_transformer_feat_level)
        self.ignore_index = int(ignore_index)
        self.align_corners = bool(align_corners)
        pd = dict(pixel_decoder or {})
        pd.setdefault("num_levels", self.num_transformer_feat_level)
        if pd["num_levels"] != self.num_transformer_feat_level:
            raise ValueError(f"pixel decoder num_levels={pd['num_levels']} != num_transformer_feat_level="
                             f"{self.num_transformer_feat_level}")
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_channels=self.in_channels, feat_channels=feat_channels,
                                                      out_channels=out_channels, **pd)
        dec = dict(decoder or {})
        dec.setdefault("embed_dims", feat_channels)
        self.transformer_decoder = MaskedAttentionDecoder(**dec)
        self.decoder_embed_dims = self.transformer_decoder.embed_dims
        self.num_heads = self.transformer_decoder.num_heads
        self.decoder_input_projs = nn.ModuleList(
            nn.Conv2d(feat_channels, self.decoder_embed_dims, kernel_size=1)
            if (self.decoder_embed_dims != feat_channels or enforce_decoder_input_project) else nn.Identity()
            for _ in range(self.num_transformer_feat_level))
        self.decoder_positional_encoding = SinePositionalEncoding(
            **(positional_encoding or {"num_feats": feat_channels // 2, "normalize": True}))
        self.query_embed = nn.Embedding(self.num_queries, feat_channels)
        self.query_feat = nn.Embedding(self.num_queries, feat_channels)
        self.level_embed = nn.Embedding(self.num_transformer_feat_level, feat_channels)
        self.cls_embed = nn.Linear(feat_channels, self.num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(feat_channels, feat_channels), nn.ReLU(inplace=True),
            nn.Linear(feat_channels, feat_channels), nn.ReLU(inplace=True),
            nn.Linear(feat_channels, out_channels))
        self.criterion = criterion or Mask2FormerCriterion(self.num_classes)
        if self.criterion.num_classes != self.num_classes:
            raise ValueError(f"criterion has {self.criterion.num_classes} classes, the head {self.num_classes}")
        self.init_weights()

    # layer decay: the query / level embeddings and the prediction embeddings are layer 0 (official rule)
    LAYER_ZERO = ("mask_embed", "cls_embed", "level_embed", "query_embed", "query_feat")

    def layer_id(self, name: str, num_layers: int) -> int:
        """Layer decay: the layer of this head's parameter ``name`` (0 for :attr:`LAYER_ZERO`, else L - 1)."""
        return zero_layer_id(name, num_layers, self.LAYER_ZERO)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official ``init_weights``: caffe2-xavier input projections, the pixel decoder's own init,
        xavier-normal for every >1-d transformer-decoder parameter (embeddings and heads keep PyTorch's init)."""
        for m in self.decoder_input_projs:
            if isinstance(m, nn.Conv2d):
                caffe2_xavier_init_(m)
        self.pixel_decoder.init_weights()
        for p in self.transformer_decoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    # ------------------------------------------------------------------ forward
    def forward_head(self, query: torch.Tensor, mask_features: torch.Tensor, attn_size):
        """query (Q, N, C) -> (cls (N, Q, C+1), mask logits (N, Q, H, W), attention mask (N*heads, Q, h*w) bool)."""
        q = self.transformer_decoder.post_norm(query).transpose(0, 1)
        cls_pred = self.cls_embed(q)
        mask_pred = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), mask_features)
        attn = F.interpolate(mask_pred, size=tuple(attn_size), mode="bilinear", align_corners=False)
        attn = attn.flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
        return cls_pred, mask_pred, (attn.sigmoid() < 0.5).detach()

    def forward(self, feats):
        """feats: the backbone's list of 4 maps -> (list of cls logits (N, Q, C+1), list of mask logits
        (N, Q, H/4, W/4)), ``num_layers + 1`` entries each, the last being the final prediction."""
        if not isinstance(feats, (list, tuple)):
            raise TypeError(f"Mask2FormerHead expects the backbone's list of feature maps, got {type(feats)}")
        n = feats[0].shape[0]
        mask_features, memories = self.pixel_decoder(list(feats))
        # embeddings are read through their modules' forward (not .weight), so ZeRO-3 gathers them
        device = mask_features.device
        level_embed = self.level_embed(torch.arange(self.num_transformer_feat_level, device=device))
        inputs, positions = [], []
        for i in range(self.num_transformer_feat_level):
            x = self.decoder_input_projs[i](memories[i]).flatten(2).permute(2, 0, 1)
            inputs.append(x + level_embed[i].view(1, 1, -1))
            h, w = memories[i].shape[-2:]
            pos = self.decoder_positional_encoding(x.new_zeros((n, h, w), dtype=torch.bool))
            positions.append(pos.to(x.dtype).flatten(2).permute(2, 0, 1))
        ids = torch.arange(self.num_queries, device=device)
        query = self.query_feat(ids).unsqueeze(1).repeat(1, n, 1)
        query_pos = self.query_embed(ids).unsqueeze(1).repeat(1, n, 1)
        cls_pred, mask_pred, attn_mask = self.forward_head(query, mask_features, memories[0].shape[-2:])
        cls_list, mask_list = [cls_pred], [mask_pred]
        levels = self.num_transformer_feat_level
        for i, layer in enumerate(self.transformer_decoder.layers):
            level = i % levels
            query = layer(query, inputs[level], query_pos, positions[level], fill_fully_masked_rows(attn_mask))
            cls_pred, mask_pred, attn_mask = self.forward_head(query, mask_features,
                                                               memories[(i + 1) % levels].shape[-2:])
            cls_list.append(cls_pred)
            mask_list.append(mask_pred)
        return cls_list, mask_list

    def semantic_inference(self, cls_pred: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
        """(N, Q, C+1) logits, (N, Q, h, w) mask logits -> (N, C, h, w) scores
        ``einsum(softmax(cls)[..., :C], sigmoid(mask))``."""
        scores = F.softmax(cls_pred, dim=-1)[..., :-1]
        return torch.einsum("bqc,bqhw->bchw", scores, mask_pred.sigmoid())

    def forward_test(self, feats) -> torch.Tensor:
        """(N, C, H/4, W/4) semantic scores from the last prediction."""
        cls_list, mask_list = self(feats)
        return self.semantic_inference(cls_list[-1], mask_list[-1])

    def targets(self, gt_semantic_seg: torch.Tensor):
        """(N, H, W) label maps -> lists of per-image (labels, masks), see :func:`semantic_to_masks`."""
        pairs = [semantic_to_masks(g, self.num_classes, self.ignore_index) for g in gt_semantic_seg]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def num_matched_masks(self, gt_semantic_seg: torch.Tensor) -> int:
        """How many (query, target) pairs the matching of this (N, H, W) batch will make (from the targets alone,
        :func:`~.criterion.num_matched_masks`)."""
        return sum(num_matched_masks(g, self.num_queries, self.ignore_index) for g in gt_semantic_seg)

    def loss(self, feats, gt_semantic_seg: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward + :class:`Mask2FormerCriterion` over all predictions (keys ``loss_cls``, ``loss_mask``,
        ``loss_dice``, ``d{i}.loss_*``)."""
        cls_list, mask_list = self(feats)
        labels, masks = self.targets(gt_semantic_seg)
        return self.criterion(cls_list, mask_list, labels, masks)

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.decode_head") -> "Mask2FormerHead":
        """Build from the official ``decode_head=dict(type='Mask2FormerHead', ...)`` (with ``train_cfg`` as the
        official segmentor injects it); every nested key is validated, see :mod:`.config`."""
        from .config import head_kwargs_from_config
        return cls(**head_kwargs_from_config(cfg, where))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_queries={self.num_queries}"


__all__ = ["Mask2FormerHead", "official_to_ours", "ours_to_official", "HungarianMatcher", "UNUSED_OFFICIAL_KEYS"]
