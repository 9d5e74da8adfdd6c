"""HTC++ R-CNN heads: official key names and shapes (typed here), class-agnostic regression, and the mask
information flow composed by hand."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vit_adapter_ds.models.detectors.htc_heads import HTCMaskHead, Shared4Conv1FCBBoxHead, mask_information_flow

BBOX_KEYS = {
    **{f"shared_convs.{i}.conv.weight": (256, 256, 3, 3) for i in range(4)},
    **{f"shared_convs.{i}.conv.bias": (256,) for i in range(4)},
    "shared_fcs.0.weight": (1024, 12544), "shared_fcs.0.bias": (1024,),
    "fc_cls.weight": (81, 1024), "fc_cls.bias": (81,), "fc_reg.weight": (4, 1024), "fc_reg.bias": (4,),
}
MASK_KEYS = {
    **{f"convs.{i}.conv.weight": (256, 256, 3, 3) for i in range(4)},
    **{f"convs.{i}.conv.bias": (256,) for i in range(4)},
    "upsample.weight": (256, 256, 2, 2), "upsample.bias": (256,),
    "conv_logits.weight": (80, 256, 1, 1), "conv_logits.bias": (80,),
}


def test_official_keys_and_shapes():
    box = Shared4Conv1FCBBoxHead()
    assert {k: tuple(v.shape) for k, v in box.state_dict().items()} == BBOX_KEYS
    first = HTCMaskHead(with_conv_res=False)
    assert {k: tuple(v.shape) for k, v in first.state_dict().items()} == MASK_KEYS
    later = HTCMaskHead()
    assert {k: tuple(v.shape) for k, v in later.state_dict().items()} == {
        **MASK_KEYS, "conv_res.conv.weight": (256, 256, 1, 1), "conv_res.conv.bias": (256,)}
    cls, reg = box(torch.randn(3, 256, 7, 7))
    assert cls.shape == (3, 81) and reg.shape == (3, 4)


def test_mask_information_flow_by_hand():
    torch.manual_seed(0)
    heads = [HTCMaskHead(False, 2, 8, 8, 3), HTCMaskHead(True, 2, 8, 8, 3), HTCMaskHead(True, 2, 8, 8, 3)]
    x = torch.randn(2, 8, 14, 14)
    logits = mask_information_flow(heads, x)
    assert [tuple(lg.shape) for lg in logits] == [(2, 3, 28, 28)] * 3

    def convs(h, z):
        for c in h.convs:
            z = F.relu(F.conv2d(z, c.conv.weight, c.conv.bias, padding=1))
        return z

    def head_logits(h, z):
        return F.conv2d(F.relu(F.conv_transpose2d(z, h.upsample.weight, h.upsample.bias, stride=2)),
                        h.conv_logits.weight, h.conv_logits.bias)

    f0 = convs(heads[0], x)
    f1 = convs(heads[1], x + F.relu(F.conv2d(f0, heads[1].conv_res.conv.weight, heads[1].conv_res.conv.bias)))
    f2 = convs(heads[2], x + F.relu(F.conv2d(f1, heads[2].conv_res.conv.weight, heads[2].conv_res.conv.bias)))
    for lg, h, f in zip(logits, heads, (f0, f1, f2)):
        torch.testing.assert_close(lg, head_logits(h, f))
