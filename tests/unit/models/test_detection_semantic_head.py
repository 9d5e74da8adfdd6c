"""HTC's FusedSemanticHead against a float64 re-composition written here from the mmdet description, and its
loss (mean over all label pixels, ignored ones included) against a hand-built cross entropy."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.detectors.semantic_head import FusedSemanticHead

OFFICIAL = dict(type="FusedSemanticHead", num_ins=5, fusion_level=1, num_convs=4, in_channels=16,
                conv_out_channels=16, num_classes=7,
                loss_seg=dict(type="CrossEntropyLoss", ignore_index=255, loss_weight=0.2))


def test_forward_matches_float64_composition_and_official_keys():
    torch.manual_seed(0)
    head = FusedSemanticHead.from_config(OFFICIAL)
    feats = [torch.randn(2, 16, 32 // 2 ** i, 40 // 2 ** i) for i in range(5)]
    logits, emb = head(feats)
    assert logits.shape == (2, 7, 16, 20) and emb.shape == (2, 16, 16, 20)
    sd = {k: v.double() for k, v in head.state_dict().items()}

    def conv(x, name, pad):
        return F.conv2d(x, sd[name + ".weight"], sd[name + ".bias"], padding=pad)

    x = torch.relu(conv(feats[1].double(), "lateral_convs.1.conv", 0))
    for i in (0, 2, 3, 4):
        up = F.interpolate(feats[i].double(), size=(16, 20), mode="bilinear", align_corners=True)
        x = x + torch.relu(conv(up, f"lateral_convs.{i}.conv", 0))
    for i in range(4):
        x = torch.relu(conv(x, f"convs.{i}.conv", 1))
    torch.testing.assert_close(logits.double(), conv(x, "conv_logits", 0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(emb.double(), torch.relu(conv(x, "conv_embedding.conv", 0)), rtol=1e-4, atol=1e-4)


def test_loss_divides_by_all_pixels():
    head = FusedSemanticHead.from_config(OFFICIAL)
    logits = torch.randn(1, 7, 2, 2)
    labels = torch.tensor([[[0, 3], [255, 6]]])
    logp = torch.log_softmax(logits.double(), 1)[0]
    nll = -(logp[0, 0, 0] + logp[3, 0, 1] + logp[6, 1, 1])
    torch.testing.assert_close(head.loss(logits, labels).double(), 0.2 * nll / 4, rtol=1e-6, atol=1e-7)


def test_config_errors():
    bad = dict(OFFICIAL, norm_cfg=dict(type="GN", num_groups=32))
    with pytest.raises(ConfigError, match="semantic_head.norm_cfg"):
        FusedSemanticHead.from_config(bad)
