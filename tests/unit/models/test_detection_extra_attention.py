"""HTC++ ExtraAttention neck against a float64 reference written out here (explicit softmax attention), with the
official parameter names."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.detectors.extra_attention import ExtraAttention


def reference(m, x, heads):
    sd = {k: v.double() for k, v in m.state_dict().items()}
    b, c, h, w = x.shape
    t = x.double().flatten(2).transpose(1, 2)

    def ln(z, p):
        return F.layer_norm(z, (c,), sd[p + ".weight"], sd[p + ".bias"], 1e-5)

    def lin(z, p):
        return z @ sd[p + ".weight"].T + sd[p + ".bias"]

    qkv = lin(ln(t, "norm1"), "attn.qkv").reshape(b, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)
    t = t + lin((a @ v).transpose(1, 2).reshape(b, h * w, c), "attn.proj")
    hid = lin(ln(t, "norm2"), "ffn.fc1")
    t = t + lin(0.5 * hid * (1 + torch.erf(hid / 2 ** 0.5)), "ffn.fc2")
    t = ln(t, "final_norm")
    return t.transpose(1, 2).reshape(b, c, h, w)


def test_matches_float64_reference_and_keeps_other_levels():
    torch.manual_seed(0)
    m = ExtraAttention.from_config(dict(type="ExtraAttention", in_channels=[32] * 4, num_head=4, with_ffn=True,
                                        ffn_ratio=4.0, drop_path=0.3)).eval()
    feats = [torch.randn(2, 32, 16 // s, 16 // s) for s in (1, 2, 4, 8)]
    out = m(feats)
    assert all(o is f for o, f in zip(out[:3], feats[:3]))
    torch.testing.assert_close(out[3].double(), reference(m, feats[3], 4), rtol=1e-5, atol=1e-5)
    assert {"norm1.weight", "attn.qkv.weight", "attn.proj.bias", "norm2.bias", "ffn.fc1.weight", "ffn.fc2.weight",
            "final_norm.weight"} <= set(m.state_dict())


def test_config_errors():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) model.neck\[0\].num_heads;"):
        ExtraAttention.from_config(dict(type="ExtraAttention", in_channels=[32] * 4, num_heads=4))
