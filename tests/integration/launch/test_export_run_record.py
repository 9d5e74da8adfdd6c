"""``launch/export.py`` never executes a file found near a checkpoint: the model type (which decides the official
mmdet key layout of a detector) comes from ``--model-type``, the run's data-only ``config.json`` record
(``vit_adapter_ds/config/run_record.py``, written by the trainer next to ``config.py``) or the checkpoint's own keys.
A ``config.py`` planted two folders above a tag (where export used to ``Config.fromfile`` it) creates a marker file
if executed; the marker must never appear, in any format. Expected official tensors are written out by hand here
(mmdet names, background row last), not taken from the key-mapping code."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from vit_adapter_ds.config.run_record import (MAX_BYTES, RunRecordError, RunRecordMissing, read_run_config,
                                              read_run_record, write_run_config)

REPO = Path(__file__).resolve().parents[3]
FORMATS = ("mmcv", "torch", "safetensors")


def _export_module():
    spec = importlib.util.spec_from_file_location("launch_export_under_test", REPO / "launch" / "export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


export = _export_module()


def _planted(folder: Path, marker: Path, model_type: str = "EncoderDecoder") -> Path:
    """A config.py that creates ``marker`` when executed (and claims a segmentor, so running it would also lose the
    detector layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.py").write_text(f"open({str(marker)!r}, 'w').write('executed')\n"
                                      f"model = dict(type={model_type!r})\n")
    return folder / "config.py"


def _fake_tag(tag_dir: Path, sd: dict) -> Path:
    """A ZeRO-0 DeepSpeed tag (what DeepSpeed writes with ZeRO disabled) with a COMPLETE marker."""
    tag_dir.mkdir(parents=True)
    torch.save({"module": sd, "buffer_names": [], "optimizer": None, "param_shapes": None, "global_steps": 3},
               tag_dir / "mp_rank_00_model_states.pt")
    (tag_dir / "COMPLETE").write_text(json.dumps({"iteration": 3, "zero_stage": 0, "precision": "fp32"}))
    return tag_dir


@pytest.fixture(scope="module")
def mask_rcnn():
    from vit_adapter_ds.tasks import load_and_validate

    torch.manual_seed(0)
    cfg, task, _ = load_and_validate("synthetic_mask_rcnn", [])
    sd = {k: v.detach().clone() for k, v in task.build_model().state_dict().items()}
    return cfg, sd


def _check_official_mask_rcnn(exported: dict, sd: dict):
    """The mmdet Mask R-CNN names and row order, by hand (see the table in test_detection_keymap.py)."""
    assert not any(k.startswith(("rpn.", "roi_heads.", "neck.fpn.")) for k in exported)
    assert torch.equal(exported["rpn_head.rpn_conv.weight"], sd["rpn.head.conv.0.0.weight"])
    assert torch.equal(exported["rpn_head.rpn_cls.bias"], sd["rpn.head.cls_logits.bias"])
    assert torch.equal(exported["neck.lateral_convs.0.conv.weight"], sd["neck.fpn.inner_blocks.0.0.weight"])
    assert torch.equal(exported["roi_head.bbox_head.shared_fcs.1.weight"], sd["roi_heads.box_head.fc7.weight"])
    cls = sd["roi_heads.box_predictor.cls_score.weight"]  # torchvision: background first; mmdet: last
    assert torch.equal(exported["roi_head.bbox_head.fc_cls.weight"][:-1], cls[1:])
    assert torch.equal(exported["roi_head.bbox_head.fc_cls.weight"][-1], cls[0])
    assert torch.equal(exported["roi_head.bbox_head.fc_reg.weight"], sd["roi_heads.box_predictor.bbox_pred.weight"][4:])
    assert torch.equal(exported["roi_head.mask_head.conv_logits.bias"],
                       sd["roi_heads.mask_predictor.mask_fcn_logits.bias"][1:])
    backbone = [k for k in sd if k.startswith("backbone.")]
    assert backbone and all(torch.equal(exported[k], sd[k]) for k in backbone)


def _load(path: Path, fmt: str) -> dict:
    if fmt == "safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------ never executed
@pytest.mark.parametrize("fmt", FORMATS)
def test_config_py_two_folders_above_a_tag_is_never_executed(tmp_path, mask_rcnn, fmt):
    """``shared/iter_3`` used to run ``shared/../config.py``."""
    _, sd = mask_rcnn
    marker = tmp_path / "EXECUTED"
    _planted(tmp_path, marker)
    tag = _fake_tag(tmp_path / "shared" / "iter_3", sd)
    out = tmp_path / f"model.{fmt}"
    assert export.main([str(tag), "--out", str(out), "--format", fmt]) == 0
    assert not marker.exists()
    got = _load(out, fmt)
    if fmt == "mmcv":  # no run record: the detector is told from the checkpoint's keys
        assert got["meta"]["model_type"] == "MaskRCNN" and "keys" in got["meta"]["model_type_from"]
        assert "config" not in got["meta"]  # the planted file is not this run's: nothing embedded
        _check_official_mask_rcnn(got["state_dict"], sd)
    else:
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.parametrize("fmt", FORMATS)
def test_run_record_gives_the_official_detector_layout(tmp_path, mask_rcnn, fmt):
    """A work dir whose config.py was replaced: export reads config.json only."""
    cfg, sd = mask_rcnn
    work = tmp_path / "work"
    marker = tmp_path / "EXECUTED"
    _planted(work, marker)
    write_run_config(cfg, work)
    _fake_tag(work / "checkpoints" / "iter_3", sd)
    out = tmp_path / f"model.{fmt}"
    assert export.main([str(work), "--out", str(out), "--format", fmt]) == 0
    assert not marker.exists()
    if fmt != "mmcv":
        return
    got = _load(out, fmt)
    meta = got["meta"]
    assert meta["model_type"] == "MaskRCNN" and meta["model_type_from"] == str(work / "config.json")
    assert meta["config_format"] == "json" and json.loads(meta["config"])["model"]["type"] == "MaskRCNN"
    assert meta["iter"] == 3
    _check_official_mask_rcnn(got["state_dict"], sd)


def test_cli_subprocess_never_executes_the_work_dirs_config_py(tmp_path, mask_rcnn):
    cfg, sd = mask_rcnn
    work = tmp_path / "work"
    marker = tmp_path / "EXECUTED"
    _planted(work, marker, model_type="MaskRCNN")
    write_run_config(cfg, work)
    tag = _fake_tag(work / "checkpoints" / "iter_3", sd)
    res = subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), str(tag), "--out",
                          str(tmp_path / "m.pth")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not marker.exists()
    _check_official_mask_rcnn(torch.load(tmp_path / "m.pth", weights_only=True)["state_dict"], sd)


def test_old_run_without_a_record_embeds_config_py_as_text(tmp_path, mask_rcnn):
    _, sd = mask_rcnn
    work = tmp_path / "work"
    marker = tmp_path / "EXECUTED"
    text = _planted(work, marker).read_text()
    _fake_tag(work / "checkpoints" / "iter_3", sd)
    assert export.main([str(work), "--out", str(tmp_path / "m.pth")]) == 0
    got = torch.load(tmp_path / "m.pth", weights_only=True)
    assert not marker.exists()
    assert got["meta"]["config"] == text and got["meta"]["config_format"] == "py"
    _check_official_mask_rcnn(got["state_dict"], sd)  # from the keys, not from the text's model.type


# ------------------------------------------------------------------------------------------------ model type
@pytest.mark.parametrize("recipe,expected", [
    ("synthetic_quickstart", None), ("synthetic_mask2former", None),
    ("upernet_beit_adapter_large_640_160k_ade20k_ss", None),
    ("synthetic_mask_rcnn", "MaskRCNN"), ("synthetic_htc", "HybridTaskCascade"),
    ("synthetic_htc_ms", "HybridTaskCascade"),  # the TTA subclass maps like HybridTaskCascade
    ("synthetic_cascade_mask_rcnn", "CascadeRCNN"),
    ("synthetic_atss", "ATSS"),  # a dense bbox_head, no RPN
])
def test_model_type_from_the_keys_of_every_model_family(recipe, expected):
    from vit_adapter_ds.tasks import load_and_validate

    _, _, meta_model = load_and_validate(recipe, [])  # built on the meta device: the real key names
    assert export.model_type_from_keys(meta_model.state_dict())[0] == expected


def test_ambiguous_keys_refuse_mmcv_and_suggest_model_type(tmp_path, mask_rcnn, capsys):
    _, sd = mask_rcnn
    odd = {**sd, "decode_head.conv_seg.weight": torch.zeros(2, 2)}  # detector and segmentor keys
    tag = _fake_tag(tmp_path / "shared" / "iter_3", odd)
    assert export.main([str(tag), "--out", str(tmp_path / "m.pth")]) == 2
    err = capsys.readouterr().err
    assert "--model-type" in err and str(tag) in err and "decode_head" in err
    assert not (tmp_path / "m.pth").exists()
    assert export.main([str(tag), "--out", str(tmp_path / "t.pth"), "--format", "torch"]) == 0  # no mapping needed
    # an explicit type decides; a segmentor keeps this package's (already official) keys
    assert export.main([str(tag), "--out", str(tmp_path / "s.pth"), "--model-type", "segmentor"]) == 0
    assert set(torch.load(tmp_path / "s.pth", weights_only=True)["state_dict"]) == set(odd)


def test_explicit_model_type_and_record_must_fit_the_keys(tmp_path, mask_rcnn, capsys):
    cfg, sd = mask_rcnn
    tag = _fake_tag(tmp_path / "shared" / "iter_3", sd)
    assert export.main([str(tag), "--out", str(tmp_path / "a.pth"), "--model-type", "HybridTaskCascade"]) == 2
    assert "does not fit the checkpoint's keys" in capsys.readouterr().err
    assert export.main([str(tag), "--out", str(tmp_path / "b.pth"), "--model-type", "MaskRCNN"]) == 0
    _check_official_mask_rcnn(torch.load(tmp_path / "b.pth", weights_only=True)["state_dict"], sd)
    # a record that names a segmentor for detector weights
    work = tmp_path / "work"
    work.mkdir()
    write_run_config({"model": {"type": "EncoderDecoder"}}, work)
    _fake_tag(work / "checkpoints" / "iter_3", sd)
    assert export.main([str(work), "--out", str(tmp_path / "c.pth")]) == 2
    err = capsys.readouterr().err
    assert str(work / "config.json") in err and "does not fit" in err


def test_malformed_record_is_refused_naming_the_file(tmp_path, mask_rcnn, capsys):
    _, sd = mask_rcnn
    work = tmp_path / "work"
    _fake_tag(work / "checkpoints" / "iter_3", sd)
    (work / "config.json").write_text("{not json")
    assert export.main([str(work), "--out", str(tmp_path / "m.pth")]) == 2
    err = capsys.readouterr().err
    assert str(work / "config.json") in err and "malformed" in err


# ------------------------------------------------------------------------------------------------ the record
def _lists(v):
    """Independent reference: the config with tuples as lists (what JSON can hold)."""
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_lists(x) for x in v]
    return v


def test_record_round_trips_every_recipe(tmp_path):
    from mmengine import Config

    from vit_adapter_ds.recipes import QUICKSTART, RECIPES
    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    for name, path in {**RECIPES, **DETECTION_RECIPES, "quickstart": QUICKSTART}.items():
        cfg = Config.fromfile(str(path))
        work = tmp_path / name
        work.mkdir()
        write_run_config(cfg, work)
        assert read_run_config(work) == _lists(cfg.to_dict()), name
        assert read_run_record(work)["notes"] == [], name  # recipes hold only JSON values and tuples


def test_values_json_cannot_hold_are_stringified_with_a_note(tmp_path):
    write_run_config({"model": {"type": "X", "act": torch.nn.GELU, 3: "int key", "eps": float("inf")}}, tmp_path)
    rec = read_run_record(tmp_path)
    assert rec["config"]["model"]["act"] == repr(torch.nn.GELU) and rec["config"]["model"]["3"] == "int key"
    assert rec["config"]["model"]["eps"] == "inf"
    assert len(rec["notes"]) == 3 and any("model.act" in n for n in rec["notes"])
    assert "Infinity" not in (tmp_path / "config.json").read_text()  # strict JSON


@pytest.mark.parametrize("content,match", [
    (b"{not json", "malformed"),
    (b'{"format": "vit-adapter-ds/run-config", "version": 1, "config": {}, "config": {}}', "duplicate key"),
    (b'{"format": "vit-adapter-ds/run-config", "version": 1, "config": {"a": NaN}}', "malformed"),
    (b'{"format": "something else", "version": 1, "config": {}}', "not a run record"),
    (b'{"format": "vit-adapter-ds/run-config", "version": 99, "config": {}}', "version 99"),
    (b'{"format": "vit-adapter-ds/run-config", "version": 1, "config": []}', "'config' must be a JSON object"),
    (b"\xff\xfe", "malformed"),
    (b"[" * 100000 + b"]" * 100000, "malformed"),
])
def test_bad_records_are_refused_naming_the_file(tmp_path, content, match):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(RunRecordError, match=match) as e:
        read_run_config(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value)


def test_record_size_cap_and_missing_file(tmp_path):
    with pytest.raises(RunRecordMissing, match="no run record"):
        read_run_config(tmp_path)
    with open(tmp_path / "config.json", "wb") as f:
        f.truncate(MAX_BYTES + 1)
    with pytest.raises(RunRecordError, match="larger than"):
        read_run_config(tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").mkdir()
    with pytest.raises(RunRecordError, match="not a regular file"):
        read_run_config(tmp_path)


def test_trainer_writes_the_record_next_to_config_py(tmp_path):
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.engine.trainer import Trainer

    cfg = load_recipe("synthetic_mask_rcnn", ["runner.max_iters=7"], validate=False)
    stub = types.SimpleNamespace(cfg=cfg, work_dir=tmp_path / "work", ds_config={"train_batch_size": 2})
    Trainer._prepare_work_dir(stub)
    assert (stub.work_dir / "config.py").is_file()
    rec = read_run_config(stub.work_dir)
    assert rec["runner"]["max_iters"] == 7 and rec["model"]["type"] == "MaskRCNN"
    assert rec == _lists(cfg.to_dict())
