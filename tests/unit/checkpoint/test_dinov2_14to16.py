"""The DINOv2 Mask R-CNN recipes (``detection/configs/mask_rcnn/dinov2/*``) load DINOv2 weights as the official
``detection/convert_14to16.py`` prepares them: the 14x14 patch kernel resized to 16x16 with
``F.interpolate(mode='bilinear', align_corners=False)``, ``blocks.i.ls1.gamma`` / ``ls2.gamma`` renamed to the ViT
layer scale ``gamma1`` / ``gamma2`` (the official ViTAdapter's ``layer_scale=True`` default), ``mask_token`` dropped;
``pos_embed`` is left as it is (DINOv2's 1 + 37 x 37 tokens = the recipes' ``pretrain_size=img_size=592`` / 16) and
``cls_token`` / ``norm`` / register tokens are not used (the official loader is ``strict=False``). Checked on a
hand-made state dict with DINOv2's key names and shapes (narrow width, the real 37 x 37 grid), the interpolation
re-derived here in float64, and the official converted file and the raw file giving the same model."""
from __future__ import annotations

import math

import numpy as np
import torch

from vit_adapter_ds.models import ViTAdapter
from vit_adapter_ds.models.factory import load_pretrained

D, DEPTH = 32, 4


def dinov2_state_dict(seed=0, registers=0):
    """DINOv2 ``DinoVisionTransformer`` (hub release, ``block_chunks=0``) keys and shapes at width ``D``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"cls_token": r(1, 1, D), "pos_embed": r(1, 1 + 37 * 37, D), "mask_token": r(1, D),
          "patch_embed.proj.weight": r(D, 3, 14, 14), "patch_embed.proj.bias": r(D)}
    if registers:
        sd["register_tokens"] = r(1, registers, D)
    for i in range(DEPTH):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": r(D), p + "norm1.bias": r(D), p + "attn.qkv.weight": r(3 * D, D),
                   p + "attn.qkv.bias": r(3 * D), p + "attn.proj.weight": r(D, D), p + "attn.proj.bias": r(D),
                   p + "ls1.gamma": r(D), p + "norm2.weight": r(D), p + "norm2.bias": r(D),
                   p + "mlp.fc1.weight": r(4 * D, D), p + "mlp.fc1.bias": r(4 * D), p + "mlp.fc2.weight": r(D, 4 * D),
                   p + "mlp.fc2.bias": r(D), p + "ls2.gamma": r(D)})
    sd.update({"norm.weight": r(D), "norm.bias": r(D)})
    return sd


def bilinear_1d_weights(n_in, n_out):
    """(n_out, n_in) float64 matrix of PyTorch's bilinear resize with ``align_corners=False``: source
    ``(o + 0.5) * n_in / n_out - 0.5`` floored at 0, the two neighbours weighted linearly (the last index repeats)."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[o, i0] += 1 - lam
        m[o, i1] += lam
    return m


def official_convert(sd):
    """detection/convert_14to16.py re-typed: resize the patch kernel to 16 x 16, drop mask_token, rename ls*.gamma."""
    a = torch.from_numpy(bilinear_1d_weights(14, 16))
    out = {}
    for k, v in sd.items():
        if "mask_token" in k:
            continue
        if k == "patch_embed.proj.weight":
            v = torch.einsum("oi,ncij,pj->ncop", a, v.double(), a).float()
        out[k.replace("ls1.gamma", "gamma1").replace("ls2.gamma", "gamma2")] = v
    return out


def recipe_geometry_model():
    """The DINOv2 recipes' backbone geometry (pretrain_size = img_size = 592, patch 16, layer_scale default True)."""
    torch.manual_seed(0)
    return ViTAdapter(img_size=592, pretrain_size=592, patch_size=16, embed_dim=D, depth=DEPTH, num_heads=2,
                      mlp_ratio=4, conv_inplane=8, n_points=2, deform_num_heads=2, cffn_ratio=0.25, deform_ratio=1.0,
                      interaction_indexes=[[i, i] for i in range(DEPTH)], window_attn=[True, False] * 2,
                      window_size=[14, None] * 2, task="detection")


def test_raw_dinov2_loads_as_the_official_conversion():
    raw = dinov2_state_dict(registers=4)
    converted = official_convert(raw)
    a, b = recipe_geometry_model(), recipe_geometry_model()
    rep_raw = load_pretrained(a, dict(raw))
    rep_conv = load_pretrained(b, dict(converted))
    assert rep_raw.kind == rep_conv.kind == "vit"
    sa, sb = a.state_dict(), b.state_dict()
    # the released-file path (convert_14to16.py, then load) and the raw-file path give the same model
    assert all(torch.allclose(sa[k], sb[k], rtol=0, atol=1e-6) for k in sa), \
        [k for k in sa if not torch.allclose(sa[k], sb[k], rtol=0, atol=1e-6)]
    for k, v in converted.items():
        if k in sa:
            torch.testing.assert_close(sa[k], v, rtol=0, atol=1e-6)
    assert torch.equal(sa["blocks.3.gamma2"], raw["blocks.3.ls2.gamma"])
    assert torch.equal(sa["pos_embed"], raw["pos_embed"])  # 1 + 37 x 37: not interpolated
    assert ("blocks.0.ls1.gamma", "blocks.0.gamma1") in rep_raw.renamed
    assert ("patch_embed.proj.weight", (D, 3, 14, 14), (D, 3, 16, 16)) in rep_raw.resized
    # not used by ViT-Adapter, as in the official strict=False load (register tokens: none in the recipes' files)
    assert set(rep_raw.unexpected) == {"cls_token", "mask_token", "register_tokens", "norm.weight", "norm.bias"}
    assert set(rep_conv.unexpected) == {"cls_token", "register_tokens", "norm.weight", "norm.bias"}
    assert not any(k.startswith("blocks.") or k in ("pos_embed", "patch_embed.proj.weight") for k in rep_raw.missing)


def test_interpolation_rule_hand_checked():
    """The 1-d weights above are PyTorch's bilinear rule for 14 -> 16 (two corner values checked by hand)."""
    m = bilinear_1d_weights(14, 16)
    assert np.allclose(m.sum(1), 1)
    assert m[0, 0] == 1.0                                   # src (0.5) * 14 / 16 - 0.5 = -0.0625 -> 0
    np.testing.assert_allclose(m[1, 0:2], [1 - 0.8125, 0.8125])  # src 1.5 * 0.875 - 0.5 = 0.8125
    assert m[15, 13] == 1.0                                 # src 13.0625: the last index repeats
