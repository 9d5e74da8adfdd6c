"""Official mmdet Mask R-CNN checkpoint keys <-> MaskRCNN: a synthetic checkpoint with the official keys and shapes
(typed here as a literal table, not derived from the code) loads strictly, class rows land where torchvision expects
them, and export writes the official layout back exactly."""
from __future__ import annotations

import pytest
import torch

from vit_adapter_ds.models.detectors import MaskRCNN
from vit_adapter_ds.models.detectors.keymap import KeyMapError, from_mmdet, load_mmdet_checkpoint, to_mmdet

from test_detection_model import tiny_cfg

# mmdet 2.x Mask R-CNN heads of mask_rcnn_deit_adapter_tiny_fpn_3x_coco (D = 192, 80 classes)
OFFICIAL = {
    **{f"neck.lateral_convs.{i}.conv.weight": (256, 192, 1, 1) for i in range(4)},
    **{f"neck.lateral_convs.{i}.conv.bias": (256,) for i in range(4)},
    **{f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3) for i in range(4)},
    **{f"neck.fpn_convs.{i}.conv.bias": (256,) for i in range(4)},
    "rpn_head.rpn_conv.weight": (256, 256, 3, 3), "rpn_head.rpn_conv.bias": (256,),
    "rpn_head.rpn_cls.weight": (3, 256, 1, 1), "rpn_head.rpn_cls.bias": (3,),
    "rpn_head.rpn_reg.weight": (12, 256, 1, 1), "rpn_head.rpn_reg.bias": (12,),
    "roi_head.bbox_head.shared_fcs.0.weight": (1024, 12544), "roi_head.bbox_head.shared_fcs.0.bias": (1024,),
    "roi_head.bbox_head.shared_fcs.1.weight": (1024, 1024), "roi_head.bbox_head.shared_fcs.1.bias": (1024,),
    "roi_head.bbox_head.fc_cls.weight": (81, 1024), "roi_head.bbox_head.fc_cls.bias": (81,),
    "roi_head.bbox_head.fc_reg.weight": (320, 1024), "roi_head.bbox_head.fc_reg.bias": (320,),
    **{f"roi_head.mask_head.convs.{i}.conv.weight": (256, 256, 3, 3) for i in range(4)},
    **{f"roi_head.mask_head.convs.{i}.conv.bias": (256,) for i in range(4)},
    "roi_head.mask_head.upsample.weight": (256, 256, 2, 2), "roi_head.mask_head.upsample.bias": (256,),
    "roi_head.mask_head.conv_logits.weight": (80, 256, 1, 1), "roi_head.mask_head.conv_logits.bias": (80,),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MaskRCNN.from_config(tiny_cfg(num_classes=80, depth=4))


@pytest.fixture(scope="module")
def official(model):
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in OFFICIAL.items()}
    sd.update({"backbone." + k: v.clone() for k, v in model.backbone.state_dict().items()})
    return {"meta": {"CLASSES": ["c%d" % i for i in range(80)]}, "state_dict": sd}


def test_official_checkpoint_loads_strictly(model, official):
    res = load_mmdet_checkpoint(model, official, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    sd, off = model.state_dict(), official["state_dict"]
    w = off["roi_head.bbox_head.fc_cls.weight"]
    # torchvision: background first; mmdet: background last
    torch.testing.assert_close(sd["roi_heads.box_predictor.cls_score.weight"][0], w[80])
    torch.testing.assert_close(sd["roi_heads.box_predictor.cls_score.weight"][1:], w[:80])
    reg = sd["roi_heads.box_predictor.bbox_pred.weight"]
    assert reg.shape == (324, 1024) and reg[:4].eq(0).all()
    torch.testing.assert_close(reg[4 + 4 * 7: 4 + 4 * 8], off["roi_head.bbox_head.fc_reg.weight"][4 * 7: 4 * 8])
    logits = sd["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert logits.shape == (81, 256, 1, 1) and logits[0].eq(0).all()
    torch.testing.assert_close(logits[13], off["roi_head.mask_head.conv_logits.weight"][12])
    torch.testing.assert_close(sd["neck.fpn.inner_blocks.2.0.weight"], off["neck.lateral_convs.2.conv.weight"])
    torch.testing.assert_close(sd["neck.fpn.layer_blocks.3.0.bias"], off["neck.fpn_convs.3.conv.bias"])
    torch.testing.assert_close(sd["rpn.head.conv.0.0.weight"], off["rpn_head.rpn_conv.weight"])
    torch.testing.assert_close(sd["roi_heads.mask_head.1.0.weight"], off["roi_head.mask_head.convs.1.conv.weight"])
    torch.testing.assert_close(sd["roi_heads.mask_predictor.conv5_mask.weight"],
                               off["roi_head.mask_head.upsample.weight"])


def test_export_writes_official_layout_back_exactly(model, official):
    load_mmdet_checkpoint(model, official)
    back = to_mmdet(model.state_dict())
    off = official["state_dict"]
    assert set(back) == set(off)
    for k in off:
        assert back[k].shape == off[k].shape, k
        assert torch.equal(back[k], off[k]), k


def test_round_trip_model_to_mmdet_to_model_keeps_every_used_tensor(model):
    sd = model.state_dict()
    again = from_mmdet(to_mmdet(sd))
    assert set(again) == set(sd)
    for k, v in sd.items():
        if k == "roi_heads.box_predictor.bbox_pred.weight" or k == "roi_heads.box_predictor.bbox_pred.bias":
            assert torch.equal(again[k][4:], v[4:]) and again[k][:4].eq(0).all()  # unused background rows
        elif k.startswith("roi_heads.mask_predictor.mask_fcn_logits"):
            assert torch.equal(again[k][1:], v[1:]) and again[k][0].eq(0).all()
        else:
            assert torch.equal(again[k], v), k


def test_unknown_keys_are_named():
    with pytest.raises(KeyMapError, match="roi_head.bbox_head.fc_cls_extra.weight"):
        from_mmdet({"roi_head.bbox_head.fc_cls_extra.weight": torch.zeros(1)})
    with pytest.raises(KeyMapError, match="roi_heads.keypoint"):
        to_mmdet({"roi_heads.keypoint.weight": torch.zeros(1)})


def test_load_from_filter_converts_official_checkpoints_only(model, official, tmp_path):
    """``--load-from`` (``load_into`` with the detection task's ``checkpoint_filter``) of a released mmcv file in the
    official mmdet layout gives the weights of the direct key map; this package's own layout passes unchanged."""
    from vit_adapter_ds.checkpoint.loading import load_into
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.tasks.detection import ObjectDetection

    task_filter = ObjectDetection(load_recipe("synthetic_mask_rcnn")).checkpoint_filter  # what the trainer passes
    path = tmp_path / "released.pth"
    torch.save(official, path)
    torch.manual_seed(1)
    fresh = MaskRCNN.from_config(tiny_cfg(num_classes=80, depth=4))
    report = load_into(fresh, str(path), filter_fn=task_filter, strict=True)
    assert any("mmdet key layout converted" in n for n in report.notes)
    want = from_mmdet(official)
    got = fresh.state_dict()
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    torch.manual_seed(2)
    other = MaskRCNN.from_config(tiny_cfg(num_classes=80, depth=4))
    report = load_into(other, fresh.state_dict(), filter_fn=task_filter, strict=True)
    assert not any("converted" in n for n in report.notes)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in got.items())


def test_converters_cover_the_detector_types():
    """Every DETECTORS type has its mmdet layout, the TTA subclass of HTC++ and Cascade Mask R-CNN included;
    to_official refuses others."""
    from vit_adapter_ds.models.detectors import DETECTORS
    from vit_adapter_ds.models.detectors import keymap

    assert {t: keymap._converters(t) for t in DETECTORS} == {
        "MaskRCNN": (keymap.from_mmdet, keymap.to_mmdet),
        "HybridTaskCascade": (keymap.htc_from_mmdet, keymap.htc_to_mmdet),
        "HybridTaskCascadeAug": (keymap.htc_from_mmdet, keymap.htc_to_mmdet),
        "CascadeRCNN": (keymap.cascade_from_mmdet, keymap.cascade_to_mmdet),
        "ATSS": (keymap.single_stage_from_mmdet, keymap.single_stage_to_mmdet),
        "GFL": (keymap.single_stage_from_mmdet, keymap.single_stage_to_mmdet),
        "SparseRCNN": (keymap.sparse_from_mmdet, keymap.sparse_to_mmdet),
        "Mask2Former": (keymap.m2f_panoptic_from_mmdet, keymap.m2f_panoptic_to_mmdet)}
    with pytest.raises(KeyError, match="EncoderDecoder"):
        keymap.to_official({}, "EncoderDecoder")
