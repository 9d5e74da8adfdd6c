"""The panoptic task (tasks/panoptic.py): chosen for a Mask2Former recipe on a panoptic dataset, the official recipe
validated (its 'bbox' / 'segm' metrics need data.val.ins_ann_file and instance results), and its loaders over synthetic COCO panoptic shards checked
against the shards' PNGs and json decoded here by hand (segment id = R + 256 G + 256^2 B, label = the category's
index in the manifest), the tiny detector's loss on a batch, and PQ = 100 for an oracle that predicts the ground
truth (through the task's evaluate)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_adapter_ds.config import ConfigError
from vit_adapter_ds.tasks import PanopticSegmentation, load_and_validate

RECIPES = Path(__file__).resolve().parents[3] / "vit_adapter_ds" / "recipes" / "detection"
OFFICIAL = RECIPES / "mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic.py"
H, W = 96, 128


def test_official_recipe_is_the_panoptic_task():
    cfg, task, _ = load_and_validate(str(OFFICIAL))  # metric=['PQ', 'bbox', 'segm'] with data.val.ins_ann_file
    assert isinstance(task, PanopticSegmentation) and task.best_metric == "PQ" and task.num_classes == 133
    assert list(cfg.evaluation.metric) == ["PQ", "bbox", "segm"]
    load_and_validate(str(OFFICIAL), ["evaluation.save_best=segm_mAP"])
    with pytest.raises(ConfigError, match=r"\['bbox', 'segm'\].*set data\.val\.ins_ann_file"):
        load_and_validate(str(OFFICIAL), ["data.val.ins_ann_file=None"])
    with pytest.raises(ConfigError, match=r"\['segm'\].*model\.test_cfg\.instance_on=True"):
        load_and_validate(str(OFFICIAL), ["evaluation.metric=['PQ','segm']", "model.test_cfg.instance_on=False"])
    load_and_validate(str(OFFICIAL), ["evaluation.metric=PQ", "model.test_cfg.instance_on=False",
                                      "data.val.ins_ann_file=None"])
    with pytest.raises(ConfigError, match=r"evaluation\.metric\[1\]='proposal' is not supported"):
        load_and_validate(str(OFFICIAL), ["evaluation.metric=['PQ','proposal']"])
    with pytest.raises(ConfigError, match=r"data\.val\.type='CocoDataset' is not supported by the panoptic"):
        load_and_validate(str(OFFICIAL), ["evaluation.metric=PQ", "data.val.type=CocoDataset"])
    # the same detector on instance data is the detection task's (which evaluates no PQ)
    with pytest.raises(ConfigError, match=r"evaluation\.metric='PQ': this object detection recipe"):
        load_and_validate(str(OFFICIAL), ["evaluation.metric=PQ", "data.train.type=CocoDataset"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("pan")
    subprocess.run([sys.executable, "-m", "vit_adapter_ds.data.make_shards", "synthetic", "--layout", "coco_panoptic",
                    "--num-train", "6", "--num-val", "3", "--size", str(H), str(W), "--out", str(out),
                    "--workers", "1", "--no-progress", "--raw-dir", str(out / "raw")], check=True, capture_output=True)
    return out


def _recipe(tmp_path, shards):
    text = f"""
_base_ = ['{RECIPES / 'synthetic_mask2former_panoptic.py'}']
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='Resize', img_scale=({W}, {H}), keep_ratio=True),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle', img_to_float=True),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=({W}, {H}), flip=False,
         transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip'),
                     dict(type='Normalize', **img_norm_cfg), dict(type='Pad', size_divisor=32),
                     dict(type='ImageToTensor', keys=['img']), dict(type='Collect', keys=['img'])])]
data = dict(_delete_=True, samples_per_gpu=2, workers_per_gpu=0,
            train=dict(type='CocoPanopticDataset', shard_dir='{shards / 'train'}', pipeline=train_pipeline,
                       shuffle='none'),
            val=dict(type='CocoPanopticDataset', shard_dir='{shards / 'train'}', pipeline=test_pipeline))
evaluation = dict(_delete_=True, interval=10, metric=['PQ'])
"""
    path = tmp_path / "pan_recipe.py"
    path.write_text(text)
    return str(path)


def _reference(shards, split="train"):
    """Per sample of the shards (in order): the id map from the PNG, the segments and the manifest's categories."""
    import tarfile

    manifest = json.loads((shards / split / "manifest.json").read_text()) \
        if (shards / split / "manifest.json").exists() else None
    cats = manifest["categories"]
    samples = {}
    for tar in sorted((shards / split).glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    out = []
    for key in sorted(samples):
        rgb = np.asarray(Image.open(io.BytesIO(samples[key]["pan.png"])).convert("RGB")).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        out.append((key, ids, json.loads(samples[key]["json"])["segments_info"]))
    return out, cats


def test_loaders_against_the_shards(tmp_path, shards):
    cfg, task, _ = load_and_validate(_recipe(tmp_path, shards))
    assert isinstance(task, PanopticSegmentation) and task.num_classes == 6
    refs, cats = _reference(shards)
    label = {c["id"]: i for i, c in enumerate(cats)}
    things = {c["id"] for c in cats if c["isthing"]}
    by_key = {k: (ids, segs) for k, ids, segs in refs}
    loader = task.build_train_loader(rank=0, world_size=1, seed=0)
    seen = 0
    for _ in range(2):
        batch = next(loader)
        for b, key in enumerate(batch["meta"]["keys"]):
            ids, segs = by_key[key]
            sem = np.full((H, W), 255, np.int64)
            want_labels = []
            for s in segs:
                if s["area"] <= 0 or s["bbox"][2] < 1 or s["bbox"][3] < 1:
                    continue
                sem[ids == s["id"]] = label[s["category_id"]]
                if s["category_id"] in things and not s.get("iscrowd", 0):
                    want_labels.append(label[s["category_id"]])
            got = batch["semantic_seg"][b]
            assert np.array_equal(got.numpy(), sem)
            t = batch["targets"][b]
            assert sorted(t["labels"].tolist()) == sorted(want_labels)
            assert t["masks"].shape[0] == len(want_labels)
            seen += 1
    assert seen == 4
    model = task.build_model(load_pretrained=False)
    with task.step_context(model, [batch]):
        losses = task.forward_loss(model, batch, torch.device("cpu"), torch.float32)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0


def test_the_built_in_twin_trains_on_its_synthetic_layout_as_it_stands(shards):
    """``synthetic_mask2former_panoptic`` with only its shard folders pointed at the synthetic layout's shards (as
    ``make_shards synthetic --layout coco_panoptic --out shards/synthetic_coco_panoptic`` writes them): the panoptic
    task with the layout's 3 + 3 classes by name, its own pipeline (flip, AutoAugment resize / crop, pad 32) gives
    batches of padded images with targets, and its schedule and a loss step run (the recipe used to declare instance
    data, so it was the detection task and failed on its panoptic head)."""
    from vit_adapter_ds.engine.schedule import scheduler_from_config

    opts = [f"data.{split}.shard_dir={str(shards / ('train' if split == 'train' else 'val'))!r}"
            for split in ("train", "val", "test")]
    cfg, task, _ = load_and_validate("synthetic_mask2former_panoptic", opts)
    assert isinstance(task, PanopticSegmentation) and task.num_classes == 6 and task.best_metric == "PQ"
    batch = next(task.build_train_loader(rank=0, world_size=1, seed=0))
    img = batch["img"]
    assert img.shape[0] == 2 and img.shape[-2] % 32 == 0 and img.shape[-1] % 32 == 0
    assert 128 <= max(img.shape[-2:]) <= 288, img.shape  # the twin's small scales (short side 160..192)
    assert all(len(t["labels"]) == t["masks"].shape[0] for t in batch["targets"])
    model = task.build_model(load_pretrained=False)
    assert [c["name"] for c in task.build_val_loader(rank=0, world_size=1).categories] == [
        "person", "car", "dog", "road", "sky-other-merged", "grass-merged"]
    scheduler_from_config(torch.optim.SGD(model.parameters(), lr=1.0), cfg)
    with task.step_context(model, [batch]):
        losses = task.forward_loss(model, batch, torch.device("cpu"), torch.float32)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0


class _Oracle(torch.nn.Module):
    """Predicts the ground truth of the val items, in the order they come (mmdet's pan_results encoding, and the
    thing segments as ins_results with score 1)."""

    def __init__(self, items, label, things, num_classes):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.items, self.label, self.things, self.num_classes = list(items), label, things, num_classes

    def predict(self, img, image_sizes, ori_shapes):
        ids, segs = self.items.pop(0)
        pan = np.full(ids.shape, self.num_classes, np.int64)
        masks, labels = [], []
        for k, s in enumerate(segs):
            lab = self.label[s["category_id"]]
            pan[ids == s["id"]] = lab + (k + 1) * 1000 if s["category_id"] in self.things else lab
            if s["category_id"] in self.things:
                masks.append(torch.from_numpy(ids == s["id"]))
                labels.append(lab)
        masks = torch.stack(masks)
        boxes = torch.stack([torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
                             for ys, xs in (torch.nonzero(m, as_tuple=True) for m in masks)])
        ins = {"boxes": boxes, "labels": torch.tensor(labels), "scores": torch.ones(len(labels)), "masks": masks}
        return [{"pan_results": torch.from_numpy(pan), "ins_results": ins}]


def test_evaluate_is_pq_100_for_the_ground_truth(tmp_path, shards):
    cfg, task, _ = load_and_validate(_recipe(tmp_path, shards))
    val = task.build_val_loader(rank=0, world_size=1)
    refs, cats = _reference(shards)
    items = [(np.asarray(it["gt_pan_ids"]), it["segments_info"]) for it in val]
    for (ids, segs), (_, rids, rsegs) in zip(items, refs):
        assert np.array_equal(ids, rids) and segs == rsegs
    oracle = _Oracle(items, {c["id"]: i for i, c in enumerate(cats)}, {c["id"] for c in cats if c["isthing"]}, 6)
    metrics, pictures = task.evaluate(oracle, val, torch.float32, 0)
    assert metrics["PQ"] == pytest.approx(100.0) and metrics["PQ_th"] == pytest.approx(100.0)
    assert pictures == [] and not any(k.startswith(("bbox", "segm")) for k in metrics)


def test_instance_ap_is_1_for_the_ground_truth(tmp_path, shards):
    """metric=['PQ', 'bbox', 'segm'] with data.val.ins_ann_file (the synthetic layout's instances file): the task
    scores the ins_results against it; a missing file stops the run when the val loader is built (before training,
    not at the first evaluation)."""
    ins = shards / "raw" / "coco_panoptic" / "annotations" / "instances_train2017.json"
    opts = ["evaluation.metric=['PQ','bbox','segm']", f"data.val.ins_ann_file={str(ins)!r}"]
    cfg, task, _ = load_and_validate(_recipe(tmp_path, shards), opts)
    val = task.build_val_loader(rank=0, world_size=1)
    refs, cats = _reference(shards)
    items = [(np.asarray(it["gt_pan_ids"]), it["segments_info"]) for it in val]
    oracle = _Oracle(items, {c["id"]: i for i, c in enumerate(cats)}, {c["id"] for c in cats if c["isthing"]}, 6)
    metrics, _ = task.evaluate(oracle, val, torch.float32, 0)
    assert metrics["PQ"] == pytest.approx(100.0)
    assert metrics["bbox_mAP"] == pytest.approx(1.0) and metrics["segm_mAP"] == pytest.approx(1.0), metrics
    cfg, task, _ = load_and_validate(_recipe(tmp_path, shards), opts[:1] + ["data.val.ins_ann_file='missing.json'"])
    with pytest.raises(FileNotFoundError, match=r"data\.val\.ins_ann_file='missing\.json': no such file"):
        task.build_val_loader(rank=0, world_size=1)


def test_predict_draws_panoptic_segments_and_writes_coco_panoptic(tmp_path, shards):
    """launch/predict.py on a panoptic recipe: per image the drawn segments and (--save-json) COCO's panoptic
    prediction format, whose PNG ids and segments_info are the in-process model's pan_results (mmdet's _pan2json:
    segment id = label + instance * 1000, category = the manifest's); detection-only flags are refused."""
    from vit_adapter_ds.data.panoptic import rgb2id
    from vit_adapter_ds.engine.eval_cli import predict_main, run_cli
    from vit_adapter_ds.tasks.detection import val_loader_item
    from vit_adapter_ds.tasks.panoptic import val_loader_kwargs

    # a random model keeps no segment at the official thresholds: keep every query's mask, and favour the thing
    # classes 0 and 1 a little (stuff and thing instances both come out)
    opts = ["model.test_cfg.object_mask_thr=0.0", "model.test_cfg.iou_thr=0.0"]
    recipe = _recipe(tmp_path, shards)
    cfg, task, _ = load_and_validate(recipe, opts)
    torch.manual_seed(0)
    model = task.build_model(load_pretrained=False).eval()
    with torch.no_grad():
        model.panoptic_head.cls_embed.bias[:2] += 1.0
    ckpt = tmp_path / "model.pth"
    torch.save(model.state_dict(), ckpt)
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for name, (h, w) in (("a.png", (H, W)), ("b.jpg", (70, 150))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / name)
    out = tmp_path / "drawn"
    argv = ["--config", recipe, "--cfg-options", *opts, "--checkpoint", str(ckpt), "--images", str(img_dir),
            "--out", str(out), "--save-json"]
    assert run_cli(predict_main, argv) == 0
    cats = _reference(shards)[1]
    kinds = set()
    kw = val_loader_kwargs(dict(cfg.data), "val")
    for name in ("a.png", "b.jpg"):
        stem = name.split(".")[0]
        rgb = np.asarray(Image.open(img_dir / name).convert("RGB"))
        x = val_loader_item(type("T", (), kw)(), torch.from_numpy(rgb.copy()).permute(2, 0, 1))
        with torch.no_grad():
            pan = model.predict(x["img"], [x["img_shape"]], [rgb.shape[:2]])[0]["pan_results"].numpy()
        rec = json.loads((out / f"{stem}.json").read_text())
        ids = rgb2id(np.asarray(Image.open(out / rec["file_name"])))
        labels = pan % 1000
        assert np.array_equal(ids, np.where(labels == 6, 0, pan))  # void = 0, else mmdet's segment id
        segs = rec["segments_info"]
        kinds |= {s["isthing"] for s in segs}
        assert segs and sorted(s["id"] for s in segs) == sorted(set(np.unique(ids).tolist()) - {0})
        for s in segs:
            c = cats[s["id"] % 1000]
            assert (s["category_id"], s["name"], s["isthing"]) == (c["id"], c["name"], int(c["isthing"]))
            assert s["area"] == int((ids == s["id"]).sum())
        pic = np.asarray(Image.open(out / f"{stem}.png"))
        assert pic.shape == rgb.shape and (pic != rgb).any()
    assert kinds == {0, 1}  # stuff and thing segments
    assert run_cli(predict_main, argv[:-1] + ["--score-thr", "0.5"]) == 2
    assert run_cli(predict_main, argv[:-1] + ["--overlay"]) == 2
