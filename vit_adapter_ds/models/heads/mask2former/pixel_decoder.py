"""Mask2Former pixel decoder (mmdet/mmseg_custom ``MSDeformAttnPixelDecoder``) on the project's deformable attention.

Inputs: the backbone's 4 maps (strides 4, 8, 16, 32). The coarsest ``num_levels`` (3) maps are projected
(``input_convs``: 1x1 conv + GN, coarsest first), flattened, given the sine positional encoding plus a learned
per-level embedding (``level_encoding``) and refined by ``num_layers`` post-norm deformable-attention encoder layers
(self-attention over all levels with each token's own centre as the reference point, then an FFN). The finer maps
(stride 4) go through an FPN step: ``lateral_convs`` (1x1 conv + GN) + the upsampled stride-8 output,
``output_convs`` (3x3 conv + GN + ReLU); ``mask_feature`` (1x1 conv) of the finest map is the per-pixel embedding.

State-dict keys are the official ones::

    input_convs.{i}.conv.{weight,bias}, input_convs.{i}.gn.{weight,bias}       i = 0 (stride 32) .. 2 (stride 8)
    encoder.layers.{j}.attentions.0.{sampling_offsets,attention_weights,value_proj,output_proj}.{weight,bias}
    encoder.layers.{j}.ffns.0.layers.0.0.{weight,bias}, encoder.layers.{j}.ffns.0.layers.1.{weight,bias}
    encoder.layers.{j}.norms.{0,1}.{weight,bias}
    level_encoding.weight                                                      (num_levels, C), coarsest first
    lateral_convs.0.conv.weight, lateral_convs.0.gn.*, output_convs.0.conv.weight, output_convs.0.gn.*
    mask_feature.{weight,bias}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from ...backbones.msdeform_attn import MSDeformAttn
from .layers import FFN, ConvNorm, caffe2_xavier_init_, xavier_uniform_init_
from .positional_encoding import SinePositionalEncoding


class MSDeformAttnEncoderLayer(nn.Module):
    """mmcv ``BaseTransformerLayer(operation_order=('self_attn', 'norm', 'ffn', 'norm'))`` with mmcv's
    ``MultiScaleDeformableAttention``: ``x = norm0(x + dropout(msda(x + pos, ref, value=x)))``,
    ``x = norm1(ffn(x))`` (the FFN adds its identity). Tokens are batch-first (N, S, C) here."""

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int,
                 feedforward_channels: int, attn_drop: float = 0.0, ffn_drop: float = 0.0, with_cp: bool = False):
        super().__init__()
        self.attentions = nn.ModuleList([MSDeformAttn(embed_dims, num_levels, num_heads, num_points, ratio=1.0)])
        self.attn_dropout = nn.Dropout(attn_drop)
        self.ffns = nn.ModuleList([FFN(embed_dims, feedforward_channels, ffn_drop, with_cp=with_cp)])
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims), nn.LayerNorm(embed_dims)])

    def forward(self, x, pos, reference_points, spatial_shapes, level_start_index):
        attn = self.attentions[0](x + pos, reference_points, x, spatial_shapes, level_start_index)
        x = self.norms[0](x + self.attn_dropout(attn))
        return self.norms[1](self.ffns[0](x))


class MSDeformAttnEncoder(nn.Module):
    """``num_layers`` encoder layers (mmcv ``DetrTransformerEncoder`` with post-norm layers: no final norm).
    ``with_cp`` checkpoints each layer's FFN (as the recipes' ``ffn_cfgs.with_cp``); ``layer_cp`` whole layers."""

    def __init__(self, num_layers: int, layer_cp: bool = False, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(MSDeformAttnEncoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.layer_cp = bool(layer_cp)

    def forward(self, x, pos, reference_points, spatial_shapes, level_start_index):
        for layer in self.layers:
            if self.layer_cp and torch.is_grad_enabled() and x.requires_grad:
                x = cp.checkpoint(layer, x, pos, reference_points, spatial_shapes, level_start_index,
                                  use_reentrant=False)
            else:
                x = layer(x, pos, reference_points, spatial_shapes, level_start_index)
        return x


class MSDeformAttnPixelDecoder(nn.Module):
    """See the module docstring.

    Args:
        in_channels: channels of the 4 backbone maps (fine to coarse).
        strides: their strides (4, 8, 16, 32).
        feat_channels: width of the encoder and of the multi-scale outputs.
        out_channels: width of the mask features.
        num_outs: how many multi-scale maps are returned (coarse to fine).
        num_groups: GroupNorm groups.
        num_layers, num_heads, num_levels, num_points, feedforward_channels, attn_drop, ffn_drop: encoder.
        num_feats, normalize, temperature, scale, eps, offset: sine positional encoding.
        with_cp: checkpoint the encoder FFNs; ``layer_cp``: checkpoint whole encoder layers.
    """

    def __init__(self, in_channels=(256, 512, 1024, 2048), strides=(4, 8, 16, 32), feat_channels: int = 256,
                 out_channels: int = 256, num_outs: int = 3, num_groups: int = 32, num_layers: int = 6,
                 num_heads: int = 8, num_levels: int = 3, num_points: int = 4, feedforward_channels: int = 1024,
                 attn_drop: float = 0.0, ffn_drop: float = 0.0, with_cp: bool = False, layer_cp: bool = False,
                 positional_encoding: dict | None = None):
        super().__init__()
        in_channels = list(in_channels)
        self.strides = list(strides)
        if len(self.strides) != len(in_channels):
            raise ValueError(f"{len(in_channels)} in_channels but {len(self.strides)} strides")
        self.num_input_levels = len(in_channels)
        self.num_encoder_levels = int(num_levels)
        if not 1 <= self.num_encoder_levels <= self.num_input_levels:
            raise ValueError(f"num_levels must be in [1, {self.num_input_levels}], got {num_levels}")
        if not 1 <= num_outs <= self.num_input_levels:
            raise ValueError(f"num_outs must be in [1, {self.num_input_levels}], got {num_outs}")
        self.num_outs = int(num_outs)
        # from the coarsest map down (low to high resolution)
        self.input_convs = nn.ModuleList(
            ConvNorm(in_channels[i], feat_channels, 1, num_groups, bias=True, act=False)
            for i in range(self.num_input_levels - 1, self.num_input_levels - self.num_encoder_levels - 1, -1))
        self.encoder = MSDeformAttnEncoder(num_layers, layer_cp=layer_cp, embed_dims=feat_channels,
                                           num_heads=num_heads, num_levels=self.num_encoder_levels,
                                           num_points=num_points, feedforward_channels=feedforward_channels,
                                           attn_drop=attn_drop, ffn_drop=ffn_drop, with_cp=with_cp)
        self.positional_encoding = SinePositionalEncoding(**(positional_encoding or {"num_feats": feat_channels // 2,
                                                                                     "normalize": True}))
        if 2 * self.positional_encoding.num_feats != feat_channels:
            raise ValueError(f"positional encoding num_feats={self.positional_encoding.num_feats} must be "
                             f"feat_channels / 2 = {feat_channels / 2}")
        self.level_encoding = nn.Embedding(self.num_encoder_levels, feat_channels)
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for i in range(self.num_input_levels - self.num_encoder_levels - 1, -1, -1):
            self.lateral_convs.append(ConvNorm(in_channels[i], feat_channels, 1, num_groups, bias=False, act=False))
            self.output_convs.append(ConvNorm(feat_channels, feat_channels, 3, num_groups, bias=False, act=True))
        self.mask_feature = nn.Conv2d(feat_channels, out_channels, kernel_size=1)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official ``init_weights``: xavier-uniform input convs, caffe2-xavier lateral/output/mask convs,
        N(0, 1) level encoding, xavier-normal encoder weights, then the deformable-attention reset."""
        for conv in self.input_convs:
            xavier_uniform_init_(conv.conv)
        for lateral, output in zip(self.lateral_convs, self.output_convs):
            caffe2_xavier_init_(lateral.conv)
            caffe2_xavier_init_(output.conv)
        caffe2_xavier_init_(self.mask_feature)
        nn.init.normal_(self.level_encoding.weight, mean=0.0, std=1.0)
        for p in self.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        for layer in self.encoder.layers:
            layer.attentions[0]._reset_parameters()

    @staticmethod
    def reference_points(h: int, w: int, device) -> torch.Tensor:
        """Normalised (x, y) centres of an h x w grid, row-major: (h * w, 2) (mmdet ``MlvlPointGenerator``
        priors with offset 0.5, divided by the map size)."""
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)

    def forward(self, feats):
        """feats: list of (N, C_i, H_i, W_i) maps, fine to coarse. Returns ``(mask_feature (N, out, H_0, W_0),
        multi_scale_features)``, the latter ``num_outs`` maps (N, feat, h, w) from coarse to fine."""
        if len(feats) != self.num_input_levels:
            raise ValueError(f"expected {self.num_input_levels} feature maps, got {len(feats)}")
        n = feats[0].shape[0]
        # through the module's forward (not .weight), so ZeRO-3 gathers the embedding
        level_encoding = self.level_encoding(torch.arange(self.num_encoder_levels, device=feats[0].device))
        tokens, pos_list, refs, shapes = [], [], [], []
        for i in range(self.num_encoder_levels):
            level = self.num_input_levels - i - 1
            feat = feats[level]
            h, w = feat.shape[-2:]
            projected = self.input_convs[i](feat)
            pos = self.positional_encoding(feat.new_zeros((n, h, w), dtype=torch.bool)).to(projected.dtype)
            pos = pos + level_encoding[i].view(1, -1, 1, 1).to(projected.dtype)
            tokens.append(projected.flatten(2).transpose(1, 2))
            pos_list.append(pos.flatten(2).transpose(1, 2))
            refs.append(self.reference_points(h, w, feat.device))
            shapes.append((h, w))
        x = torch.cat(tokens, 1)
        pos = torch.cat(pos_list, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=x.device)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        reference_points = torch.cat(refs, 0)[None, :, None].expand(n, -1, self.num_encoder_levels, -1)
        memory = self.encoder(x, pos, reference_points, spatial_shapes, level_start_index)
        outs = [m.transpose(1, 2).reshape(n, -1, h, w)
                for m, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)]
        for j, i in enumerate(range(self.num_input_levels - self.num_encoder_levels - 1, -1, -1)):
            cur = self.lateral_convs[j](feats[i])
            y = cur + F.interpolate(outs[-1], size=cur.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(self.output_convs[j](y))
        return self.mask_feature(outs[-1]), outs[:self.num_outs]
