"""FPN with the one-stage (ATSS / GFL) settings ``start_level=1, add_extra_convs='on_output', num_outs=5``: equal
to a plain-torch re-derivation of mmdet 2.22 ``FPN.forward`` (laterals of the inputs from ``start_level``,
top-down nearest upsampling to the finer size + add, 3x3 output convs, then extra 3x3 stride-2 convs on the last
output, each next on the previous one, no ReLU between), Xavier init of every conv, and the config errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.detectors.fpn import FPN

CFG = dict(type="FPN", in_channels=[8, 8, 8, 8], out_channels=16, start_level=1, add_extra_convs="on_output",
           num_outs=5)


def mmdet_fpn(feats, lateral, output, extra, start_level):
    """mmdet FPN.forward (add_extra_convs='on_output', relu_before_extra_convs=False), weights given as
    (weight, bias) pairs."""
    ins = feats[start_level:]
    lat = [F.conv2d(x, w, b) for x, (w, b) in zip(ins, lateral)]
    for i in range(len(lat) - 1, 0, -1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    outs = [F.conv2d(x, w, b, padding=1) for x, (w, b) in zip(lat, output)]
    for w, b in extra:
        outs.append(F.conv2d(outs[-1], w, b, stride=2, padding=1))
    return outs


def test_start_level_and_extra_convs_on_output_equal_mmdet():
    torch.manual_seed(0)
    fpn = FPN.from_config(dict(CFG))
    assert fpn.names == ["0", "1", "2", "extra0", "extra1"]
    feats = [torch.randn(2, 8, 40 // 2 ** i, 36 // 2 ** i) for i in range(4)]  # strides 4..32 of a 160 x 144 image
    with torch.no_grad():
        for m in fpn.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_()  # Xavier leaves them 0: make the comparison see them
    sd = fpn.state_dict()
    pairs = lambda pre, n: [(sd[f"{pre}.{i}{s}.weight"], sd[f"{pre}.{i}{s}.bias"]) for i, s in n]  # noqa: E731
    ref = mmdet_fpn(feats, pairs("fpn.inner_blocks", [(i, ".0") for i in range(3)]),
                    pairs("fpn.layer_blocks", [(i, ".0") for i in range(3)]),
                    pairs("fpn.extra_blocks.convs", [(j, "") for j in range(2)]), 1)
    out = list(fpn(feats).values())
    assert [tuple(o.shape[-2:]) for o in out] == [(20, 18), (10, 9), (5, 4), (3, 2), (2, 1)]
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_init_and_errors():
    fpn = FPN.from_config(dict(CFG))
    convs = [m for m in fpn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 + 3 + 2 and all(float(c.bias.abs().sum()) == 0 for c in convs)
    w = fpn.fpn.extra_blocks.convs[0].weight  # Xavier uniform bound sqrt(6 / (fan_in + fan_out))
    assert float(w.abs().max()) <= (6 / (16 * 9 + 16 * 9)) ** 0.5
    with pytest.raises(ConfigError, match="model.neck.add_extra_convs"):
        FPN.from_config(dict(CFG, add_extra_convs="on_input"), "model.neck")
    with pytest.raises(ConfigError, match="model.neck.num_outs=2 must be >= 3"):
        FPN.from_config(dict(CFG, num_outs=2), "model.neck")
    with pytest.raises(ConfigError, match="model.neck.start_level=4"):
        FPN.from_config(dict(CFG, start_level=4), "model.neck")
    with pytest.raises(ConfigError, match="model.neck.relu_before_extra_convs"):
        FPN.from_config(dict(CFG, relu_before_extra_convs=True), "model.neck")
    plain = FPN.from_config(dict(type="FPN", in_channels=[8] * 4, out_channels=16, num_outs=5))
    assert plain.names == ["0", "1", "2", "3", "pool"]  # the Mask R-CNN neck unchanged
