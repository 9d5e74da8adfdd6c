"""mmdet ``SingleRoIExtractor`` with mmcv ``RoIAlign`` semantics, on ``torchvision.ops.roi_align``.

torchvision's ``MultiScaleRoIAlign`` uses ``aligned=False`` and infers the level scales from the feature sizes;
the official configs use mmcv's ``RoIAlign(output_size, sampling_ratio=0)`` whose default is ``aligned=True``
(half-pixel offset), with fixed ``featmap_strides``. The level of a RoI is mmdet's
``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` clamped to the available levels (identical to torchvision's
``LevelMapper`` with canonical scale 224 at level 4 when ``finest_scale=56``).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


def boxes_to_rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    """[(K_i, 4)] per image -> (sum K_i, 5) rows (image index, x1, y1, x2, y2)."""
    rows = [torch.cat([b.new_full((b.shape[0], 1), float(i)), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows, dim=0) if rows else torch.zeros(0, 5)


def level_rows(levels: torch.Tensor, i: int) -> torch.Tensor:
    """The RoIs (rows of ``levels``, ascending) that level ``i`` pools."""
    return torch.nonzero(levels == i).squeeze(1)


class LevelRoIAlign(nn.Module):
    """Pool each RoI from one pyramid level (``featmap_names[l]`` at stride ``featmap_strides[l]``).

    ``forward(features, boxes, image_shapes=None)`` -> (sum K_i, C, output_size, output_size); boxes are in
    input-image pixels. ``image_shapes`` is accepted for torchvision ``RoIHeads`` compatibility and unused. RoIs are
    float32 and the sampling runs in float32 (the output has the features' dtype), so bf16 / fp16 models keep
    exact box coordinates.
    """

    def __init__(self, featmap_names=("0", "1", "2", "3"), output_size: int = 7, featmap_strides=(4, 8, 16, 32),
                 sampling_ratio: int = 0, aligned: bool = True, finest_scale: int = 56):
        super().__init__()
        if len(featmap_names) != len(featmap_strides):
            raise ValueError("featmap_names and featmap_strides must have the same length")
        self.featmap_names = [str(n) for n in featmap_names]
        self.featmap_strides = [int(s) for s in featmap_strides]
        self.output_size = int(output_size)
        self.sampling_ratio, self.aligned, self.finest_scale = int(sampling_ratio), bool(aligned), finest_scale

    def map_levels(self, rois: torch.Tensor) -> torch.Tensor:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        lvl = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return lvl.clamp(min=0, max=len(self.featmap_names) - 1).long()

    def forward(self, features, boxes: list[torch.Tensor], image_shapes=None) -> torch.Tensor:
        feats = [features[n] for n in self.featmap_names]
        rois = boxes_to_rois(boxes).to(device=feats[0].device, dtype=torch.float32)
        c, o = feats[0].shape[1], self.output_size
        out = feats[0].new_zeros(rois.shape[0], c, o, o)
        if rois.shape[0] == 0:
            return out
        lvl = self.map_levels(rois)
        for i, (f, s) in enumerate(zip(feats, self.featmap_strides)):
            idx = level_rows(lvl, i)
            if idx.numel() == 0:
                continue
            out[idx] = roi_align(f.float(), rois[idx], (o, o), spatial_scale=1.0 / s,
                                 sampling_ratio=self.sampling_ratio, aligned=self.aligned).to(out.dtype)
        return out
