"""The Objects365 -> COCO two-stage flow of the HTC++ o365 recipes, on the tiny HTC with their box heads: a stage-1
detector with more classes (365 in the real flow, 11 here) and another semantic-head size, saved in the official
mmdet layout by an mmcv runner with the EMA hook (``ema_*`` buffers next to the weights), loaded into the COCO model
(7 classes here) as ``load_from`` / ``--load-from`` does. The class-dependent layers -- every stage's ``fc_cls``
(``fc_reg`` is class-agnostic, 4 outputs, and loads), every stage's mask ``conv_logits`` and the semantic head's
classifier (its size differs here) -- keep their fresh initialisation; every other tensor is the stage-1 one; the
EMA buffers are dropped as mmdet's non-strict load ignores them."""
from __future__ import annotations

import torch

from test_detection_htc_giou import tiny_o365_model


def _model(num_classes, semantic_classes, seed):
    from vit_adapter_ds.models.detectors.htc import htc_from_config

    cfg = tiny_o365_model()
    for h in cfg["roi_head"]["bbox_head"] + cfg["roi_head"]["mask_head"]:
        h["num_classes"] = num_classes
    cfg["roi_head"]["semantic_head"]["num_classes"] = semantic_classes
    torch.manual_seed(seed)
    return htc_from_config(cfg)


def test_o365_checkpoint_into_coco_reinitialises_only_the_class_layers(tmp_path):
    from vit_adapter_ds.checkpoint.loading import load_into
    from vit_adapter_ds.checkpoint.reader import to_mmcv
    from vit_adapter_ds.engine.trainer import check_load_from_coverage
    from vit_adapter_ds.models.detectors.keymap import htc_to_mmdet, mmdet_checkpoint_filter

    stage1 = _model(11, 100, seed=1)
    sd1 = {k: v + 0.5 if v.is_floating_point() else v for k, v in stage1.state_dict().items()}
    official = htc_to_mmdet(sd1)
    ema = {"ema_" + k.replace(".", "_"): v * 2 for k, v in official.items() if v.is_floating_point()}
    path = tmp_path / "htc_o365_stage1.pth"
    torch.save(to_mmcv({**official, **ema}, {"iter": 20000}), path)

    stage2 = _model(7, 183, seed=2)
    fresh = {k: v.clone() for k, v in stage2.state_dict().items()}
    report = load_into(stage2, path, reinit_mismatched=True, filter_fn=mmdet_checkpoint_filter)  # --load-from
    check_load_from_coverage(report, stage2, path)
    cls = {f"roi_head.bbox_head.{i}.fc_cls.{p}" for i in range(3) for p in ("weight", "bias")} | \
        {f"roi_head.mask_head.{i}.conv_logits.{p}" for i in range(3) for p in ("weight", "bias")} | \
        {f"roi_head.semantic_head.conv_logits.{p}" for p in ("weight", "bias")}
    assert {k for k, _, _ in report.reinitialised} == cls
    assert ("roi_head.bbox_head.0.fc_cls.weight", (12, 64), (8, 64)) in report.reinitialised  # + background
    assert report.unexpected == [] and report.missing == []
    assert sorted(report.dropped) == sorted(ema) and "ema_* buffers" in str(report)
    now = stage2.state_dict()
    assert len(report.loaded) == len(now) - len(cls)
    for k, v in now.items():
        if k in cls:
            assert torch.equal(v, fresh[k]), k
        else:
            assert torch.equal(v, sd1[k]), k  # the weights, never the EMA buffers
    assert torch.equal(now["roi_head.bbox_head.2.fc_reg.weight"], sd1["roi_head.bbox_head.2.fc_reg.weight"])
