"""Multi-scale deformable attention written from its definition with explicit loops (test helper).

Independent of ``grid_sample`` and of the kernels: for every (n, q, m, l, p) the sample at pixel
``(x * W - 0.5, y * H - 0.5)`` is the bilinear blend of its four integer neighbours, neighbours outside the
H x W map count as zero, and samples are summed with the attention weights. Built from differentiable
tensor ops, so autograd gives reference gradients too. Only for tiny sizes (Python loops).
"""
import math

import torch


def msda_naive(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    n_batch, _, n_heads, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    rows = []
    for n in range(n_batch):
        for q in range(lq):
            for m in range(n_heads):
                acc = value.new_zeros(d)
                for lvl in range(n_levels):
                    h, w = (int(v) for v in spatial_shapes[lvl])
                    start = int(level_start_index[lvl])
                    for p in range(n_points):
                        x = sampling_locations[n, q, m, lvl, p, 0] * w - 0.5
                        y = sampling_locations[n, q, m, lvl, p, 1] * h - 0.5
                        x0, y0 = math.floor(float(x.detach())), math.floor(float(y.detach()))
                        fx, fy = x - x0, y - y0
                        corners = ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                                   (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx))
                        for yy, xx, weight in corners:
                            if 0 <= yy < h and 0 <= xx < w:
                                pix = value[n, start + yy * w + xx, m]
                                acc = acc + attention_weights[n, q, m, lvl, p] * weight * pix
                rows.append(acc)
    return torch.stack(rows).view(n_batch, lq, n_heads * d)


def make_inputs(n, lq, m, d, shapes, n_points, dtype=torch.float64, lo=-0.25, hi=1.25, seed=0):
    """Random inputs with locations in [lo, hi] (so some fall outside the maps) and positive weights."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    s = int(areas.sum())
    n_levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64).to(dtype)
    loc = (lo + (hi - lo) * torch.rand(n, lq, m, n_levels, n_points, 2, generator=g, dtype=torch.float64)).to(dtype)
    attn = torch.rand(n, lq, m, n_levels, n_points, generator=g, dtype=torch.float64).to(dtype)
    return value, spatial_shapes, level_start_index, loc, attn
