"""Point sampling of mask logits (mmcv ``point_sample``) and Mask2Former's importance sampling
(mmdet ``get_uncertain_point_coords_with_randomness``).

Point coordinates are normalised (x, y) in [0, 1] over the whole map; sampling is bilinear with zeros outside
(``grid_sample(..., align_corners=False)``), so maps of different resolutions (1/4 predictions, full-size targets)
are sampled at the same physical points.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(inputs: torch.Tensor, points: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """inputs (N, C, H, W), points (N, P, 2) in [0, 1] -> (N, C, P)."""
    if points.dim() != 3 or points.shape[-1] != 2:
        raise ValueError(f"points must be (N, P, 2), got {tuple(points.shape)}")
    grid = (2.0 * points - 1.0).unsqueeze(2).to(inputs.dtype)
    return F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)[..., 0]


def uncertain_point_coords(mask_logits: torch.Tensor, num_points: int, oversample_ratio: float,
                           importance_sample_ratio: float) -> torch.Tensor:
    """Mask2Former training points for (N, 1, H, W) mask logits -> (N, num_points, 2) coordinates.

    ``int(num_points * oversample_ratio)`` uniform candidates are drawn per mask; the
    ``int(importance_sample_ratio * num_points)`` most uncertain ones (uncertainty = -|logit| at the point) are
    kept and the rest of the ``num_points`` are fresh uniform points (appended after the uncertain ones). Uses the
    global torch RNG (``torch.rand``) like the official code.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    n = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=mask_logits.device)
    uncertainty = -point_sample(mask_logits, coords).abs()  # (N, 1, S)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1)[1]
    coords = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(n, num_random, 2, device=mask_logits.device)], dim=1)
    return coords
