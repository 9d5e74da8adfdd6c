"""The engine-section keys of the official Mask2Former COCO-panoptic recipe (workflow, dynamic_intervals, the helper
variables num_things_classes / num_stuff_classes / max_iters / interval, evaluation.dynamic_intervals,
log_config.hooks, lr_config.warmup_by_epoch): accepted where the engine does what mmcv / mmdet do, refused with a
clear message otherwise; the dynamic evaluation interval follows mmdet's EvalHook._decide_interval."""
from __future__ import annotations

import copy

import pytest

from vit_adapter_ds.config import ConfigError, load_recipe, validate_sections
from vit_adapter_ds.config.keys import to_plain
from vit_adapter_ds.config.schema import eval_interval_at

RECIPE = "vit_adapter_ds/recipes/detection/mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic.py"


@pytest.fixture(scope="module")
def plain():
    return to_plain(load_recipe(RECIPE))  # load_recipe validates the engine sections


def test_official_panoptic_recipe_sections_validate(plain):
    assert plain["workflow"] == [("train", 5000)] or plain["workflow"] == [["train", 5000]]
    assert [tuple(p) for p in plain["evaluation"]["dynamic_intervals"]] == [(265001, 265500)]
    assert (plain["num_things_classes"], plain["num_stuff_classes"], plain["max_iters"], plain["interval"]) == \
        (80, 53, 265500, 5000)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(workflow=[("train", 5000), ("val", 1)]), r"workflow=.*only \[\('train', n\)\]"),
    (lambda c: c.update(workflow=[("val", 1)]), r"workflow=.*only \[\('train', n\)\]"),
    (lambda c: c.update(workflow=[("train", 0)]), r"workflow\[0\]\[1\] must be >= 1"),
    (lambda c: c.update(workflow="train"), r"workflow must be a list"),
    (lambda c: c["evaluation"].update(dynamic_intervals=[(10, 5), (10, 2)]), r"milestones must be strictly"),
    (lambda c: c["evaluation"].update(dynamic_intervals=[(10, 0)]), r"dynamic_intervals\[0\]\[1\] must be >= 1"),
    (lambda c: c["evaluation"].update(dynamic_intervals=[10]), r"dynamic_intervals\[0\] must be a \(milestone"),
    (lambda c: c["evaluation"].update(dynamic_intervals=5), r"must be a list of \(milestone, interval\)"),
    (lambda c: c["log_config"].update(hooks=[dict(type="TensorboardLoggerHook")]), r"hooks\[0\]\.type="),
    (lambda c: c["log_config"].update(hooks=[dict(type="TextLoggerHook", by_epoch=True)]), r"hooks\[0\]\.by_epoch"),
    (lambda c: c["lr_config"].update(warmup_by_epoch=True), r"lr_config\.warmup_by_epoch=True"),
    (lambda c: c["evaluation"].update(save_best="PQQ"), r"save_best='PQQ' is not supported"),
])
def test_panoptic_keys_refused_clearly(plain, edit, match):
    cfg = copy.deepcopy(plain)
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        validate_sections(cfg)


def test_pq_save_best_accepted(plain):
    cfg = copy.deepcopy(plain)
    cfg["evaluation"]["save_best"] = "PQ"
    validate_sections(cfg)


def test_eval_interval_follows_mmdet_rule():
    # the official recipe: every 5000 iterations, and from iteration 265001 on every 265500 (the last one)
    official = [(265001, 265500)]
    assert eval_interval_at(5000, 5000, official) == 5000
    assert eval_interval_at(265000, 5000, official) == 5000
    assert eval_interval_at(265001, 5000, official) == 265500
    due = [d for d in range(1, 265501) if d % eval_interval_at(d, 5000, official) == 0]
    assert due == list(range(5000, 265001, 5000)) + [265500]  # 53 x 5000, then the final iteration
    # hand-worked: interval 3, from 7 on 5, from 11 on 4 -> 3, 6 (interval 3), 10 (5), 12 (4)
    rule = [(7, 5), (11, 4)]
    assert [d for d in range(1, 14) if d % eval_interval_at(d, 3, rule) == 0] == [3, 6, 10, 12]
    assert eval_interval_at(4, 3, ()) == 3
