"""mIoU: a hand-computed 3x3 example, equality with mmseg 1.2.2 ``IoUMetric``, exact 2-rank (gloo) all-reduce,
dataset evaluation against an explicit pipeline, and indexed prediction PNGs."""
import math
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vit_adapter_ds.evaluation import (IoUAccumulator, colorize, evaluate, format_table, intersect_and_union,
                                       save_mask_png, summarize)

try:
    from mmseg.evaluation.metrics import IoUMetric
except Exception:  # noqa: BLE001
    IoUMetric = None


def test_hand_computed_3x3():
    label = torch.tensor([[0, 0, 1], [1, 2, 2], [255, 2, 0]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0], [2, 2, 0]])
    inter, union, area_pred, area_label = intersect_and_union(pred, label, 4, 255)
    assert inter.tolist() == [2, 2, 2, 0] and inter.dtype == torch.int64
    assert area_label.tolist() == [3, 2, 3, 0]
    assert area_pred.tolist() == [3, 3, 2, 0]
    assert union.tolist() == [4, 3, 3, 0]
    m = summarize(inter, union, area_pred, area_label, ["a", "b", "c", "d"])
    assert m["aAcc"] == pytest.approx(6 / 8)
    np.testing.assert_allclose(m["IoU"][:3], [0.5, 2 / 3, 2 / 3])
    np.testing.assert_allclose(m["Acc"][:3], [2 / 3, 1.0, 2 / 3])
    assert math.isnan(m["IoU"][3]) and math.isnan(m["Acc"][3])
    assert m["mIoU"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert m["mAcc"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    np.testing.assert_allclose(m["Dice"][:3], [2 * 2 / (3 + 3), 2 * 2 / (3 + 2), 2 * 2 / (2 + 3)])  # 2I / (P + L)
    assert math.isnan(m["Dice"][3]) and m["mDice"] == pytest.approx((2 / 3 + 0.8 + 0.8) / 3)
    assert m["per_class"][1] == {"class": "b", "IoU": pytest.approx(2 / 3), "Acc": 1.0, "Dice": pytest.approx(0.8)}
    assert "mIoU 61.11" in format_table(m) and "mDice 75.56" in format_table(m)


def test_predicted_but_absent_class():
    # class 1 predicted but never labelled: IoU 0 (union > 0), Acc NaN
    m = summarize(*intersect_and_union(torch.tensor([0, 1]), torch.tensor([0, 0]), 2))
    assert m["IoU"].tolist()[1] == 0.0 and math.isnan(m["Acc"][1])
    assert m["mIoU"] == pytest.approx(0.25) and m["mAcc"] == pytest.approx(0.5)
    with pytest.raises(TypeError):
        intersect_and_union(torch.zeros(2), torch.zeros(2, dtype=torch.long), 2)
    with pytest.raises(ValueError):
        intersect_and_union(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long), 2)


def random_pairs(n=6, num_classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        h, w = 20 + i, 30 - i
        label = torch.randint(0, num_classes - 1, (h, w), generator=g)  # class num_classes-1 never labelled
        label[torch.rand(h, w, generator=g) < 0.2] = 255
        if i == 0:
            label[0, :5] = num_classes + 3  # out-of-range label value
        pred = torch.where(torch.rand(h, w, generator=g) < 0.6, label.clamp(max=num_classes - 1),
                           torch.randint(0, num_classes, (h, w), generator=g))
        pred[pred == 2] = 3  # class 2 never predicted
        out.append((pred, label))
    return out


@pytest.mark.skipif(IoUMetric is None, reason="mmsegmentation not importable")
def test_matches_mmseg_iou_metric():
    nc = 7
    pairs = random_pairs(num_classes=nc)
    acc = IoUAccumulator(nc)
    ref = []
    for pred, label in pairs:
        acc.update(pred, label)
        ours = intersect_and_union(pred, label, nc, 255)
        theirs = IoUMetric.intersect_and_union(pred, label, nc, 255)
        for a, b in zip(ours, theirs):
            assert a.tolist() == b.long().tolist()
        ref.append(theirs)
    totals = [sum(r[i] for r in ref) for i in range(4)]
    rm = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])
    m = acc.summarize()
    assert m["aAcc"] == pytest.approx(float(rm["aAcc"]), rel=1e-6)
    np.testing.assert_allclose(m["IoU"], rm["IoU"], rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(m["Acc"], rm["Acc"], rtol=1e-6, equal_nan=True)
    assert m["mIoU"] == pytest.approx(float(np.nanmean(rm["IoU"])), rel=1e-6)
    assert m["mAcc"] == pytest.approx(float(np.nanmean(rm["Acc"])), rel=1e-6)
    assert math.isnan(m["Acc"][nc - 1]) and not math.isnan(m["IoU"][nc - 1])
    dice = IoUMetric.total_area_to_metrics(*totals, metrics=["mDice"])["Dice"]  # the CHASE_DB1 recipe's metric
    np.testing.assert_allclose(m["Dice"], dice, rtol=1e-6, equal_nan=True)
    assert m["mDice"] == pytest.approx(float(np.nanmean(dice)), rel=1e-6)
    # mmseg 1.x IoUMetric.compute_metrics reports round(nanmean * 100, 2)
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = dict(classes=[str(i) for i in range(nc)])
    res = metric.compute_metrics([tuple(t) for t in ref])
    assert res["mIoU"] == pytest.approx(round(m["mIoU"] * 100, 2))
    assert res["aAcc"] == pytest.approx(round(m["aAcc"] * 100, 2))


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    acc = IoUAccumulator(7)
    for i, (pred, label) in enumerate(random_pairs(num_classes=7)):
        if i % world == rank:
            acc.update(pred, label)
    acc.all_reduce()
    if rank == 0:
        torch.save({"areas": acc.areas, "n": acc.num_images}, out_file)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_all_reduce_two_ranks_exact():
    single = IoUAccumulator(7)
    for pred, label in random_pairs(num_classes=7):
        single.update(pred, label)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.pt")
        # fork: the children need no re-import of this module (spawn would take ~10 s on 2 cores)
        mp.start_processes(_worker, args=(2, os.path.join(d, "init"), out), nprocs=2, join=True,
                           start_method="fork")
        res = torch.load(out)
    assert torch.equal(res["areas"], single.areas) and res["n"] == single.num_images
    single.all_reduce()  # no process group: no-op, and further updates are refused
    with pytest.raises(RuntimeError):
        single.update(*random_pairs(1)[0])



def _tiny_eval_setup():
    from torch import nn

    from vit_adapter_ds.models.heads import FCNHead
    from vit_adapter_ds.models.segmentor import EncoderDecoder

    torch.manual_seed(0)
    backbone = nn.Conv2d(3, 4, 3, padding=1)
    model = EncoderDecoder(_ListOut(backbone), FCNHead(4, 4, num_classes=3, in_index=0), num_classes=3).eval()
    g = torch.Generator().manual_seed(5)
    data = [{"img": torch.randn(1, 3, 24 + 8 * i, 40, generator=g),
             "gt_semantic_seg": torch.randint(0, 3, (1, 24 + 8 * i, 40), generator=g)} for i in range(5)]
    return model, data


class _ListOut(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        y = self.m(x)
        return [y, y, y, y]


def _eval_worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, data = _tiny_eval_setup()
    n = len(data)
    mine = data[rank * n // world:(rank + 1) * n // world]  # unequal shares (3 + 2), like the val loader
    res = evaluate(model, mine, 3, img_scale=(64, 32), size_divisor=32, aug=dict(ratios=[0.75, 1.0], flip=True))
    if rank == 0:
        torch.save({k: res[k] for k in ("aAcc", "mIoU", "mAcc", "mDice", "num_images")}, out_file)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_evaluate_two_ranks_equals_single_process():
    model, data = _tiny_eval_setup()
    single = evaluate(model, data, 3, img_scale=(64, 32), size_divisor=32, aug=dict(ratios=[0.75, 1.0], flip=True))
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.pt")
        mp.start_processes(_eval_worker, args=(2, os.path.join(d, "init"), out), nprocs=2, join=True,
                           start_method="fork")
        res = torch.load(out)
    assert res["num_images"] == 5
    for k in ("aAcc", "mIoU", "mAcc", "mDice"):
        assert res[k] == single[k]  # integer areas summed: bit-identical metrics

def test_evaluate_against_explicit_pipeline():
    from torch import nn

    from vit_adapter_ds.models.heads import FCNHead
    from vit_adapter_ds.models.segmentor import EncoderDecoder

    class Pointwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.proj(x)
            return [y, y, y, y]

    torch.manual_seed(0)
    nc = 3
    model = EncoderDecoder(Pointwise(), FCNHead(4, 4, num_classes=nc, in_index=0), num_classes=nc).eval()
    g = torch.Generator().manual_seed(1)
    data = []
    for h, w in [(40, 50), (36, 30)]:
        img = torch.randn(1, 3, h, w, generator=g)
        gt = torch.randint(0, nc, (1, h, w), generator=g)
        gt[:, :4] = 255
        data.append({"img": img, "gt_semantic_seg": gt})
    res = evaluate(model, data, nc, img_scale=(64, 32), size_divisor=32, num_vis=1, class_names=["x", "y", "z"])
    acc = IoUAccumulator(nc)
    with torch.no_grad():
        for b in data:
            h, w = b["gt_semantic_seg"].shape[1:]
            # Resize(keep_ratio) to (64, 32) then ResizeToMultiple(32), written out per image:
            # (40, 50): factor min(64/50, 32/40) = 0.8 -> (32, 40) -> (32, 64)
            # (36, 30): factor min(64/36, 32/30) = 1.0667 -> (38, 32) -> (64, 32)
            size = {(40, 50): (32, 64), (36, 30): (64, 32)}[(h, w)]
            x = F.interpolate(b["img"], size=size, mode="bilinear", align_corners=False)
            logit = F.interpolate(model.decode_head(model.backbone(x)), size=size, mode="bilinear")
            logit = F.interpolate(logit, size=(h, w), mode="bilinear")
            acc.update(logit.argmax(1)[0], b["gt_semantic_seg"][0])
    ref = acc.summarize()
    assert res["mIoU"] == pytest.approx(ref["mIoU"]) and res["aAcc"] == pytest.approx(ref["aAcc"])
    assert res["num_images"] == 2 and res["per_class"][2]["class"] == "z"
    assert res["vis"][0].shape == (40, 150, 3)
    with pytest.raises(ValueError):
        evaluate(model, data, nc, aug=dict(ratios=[1.0]))  # ratios without img_scale


def test_mask_png_roundtrip(tmp_path):
    from PIL import Image

    label = np.array([[0, 1, 2], [255, 1, 0]])
    pal = [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    p = save_mask_png(tmp_path / "m.png", label, 3, pal)
    im = Image.open(p)
    assert im.mode == "P"
    np.testing.assert_array_equal(np.asarray(im), label)
    rgb = np.asarray(im.convert("RGB"))
    assert rgb[0, 2].tolist() == [70, 80, 90] and rgb[1, 0].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(colorize(label, 3, pal), rgb)


def test_eval_and_predict_cli(tmp_path):
    """launch/eval.py and launch/predict.py end to end on synthetic shards with an mmcv-format checkpoint."""
    import json
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.engine.eval_cli import eval_main, predict_main
    from vit_adapter_ds.models.registry import build_model

    subprocess.run([sys.executable, "-m", "vit_adapter_ds.data.make_shards", "synthetic", "--out",
                    str(tmp_path / "shards"), "--num-train", "1", "--num-val", "2"], check=True, capture_output=True)
    cfg = load_recipe("synthetic_quickstart")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    sd = model.state_dict()
    torch.save({"meta": {"iter": 1}, "state_dict": sd}, tmp_path / "model.pth")
    out = tmp_path / "m.json"
    assert eval_main(["--checkpoint", str(tmp_path / "model.pth"), "--shards", str(tmp_path / "shards" / "val"),
                      "--out", str(out), "--num-workers", "0"]) == 0
    res = json.loads(out.read_text())
    assert res["num_images"] == 2 and len(res["per_class"]) == 8
    # the engine's in-process evaluation of the same model (not read back from the file) on the same shards
    from vit_adapter_ds.data import build_val_loader
    from vit_adapter_ds.evaluation.evaluator import evaluate_from_cfg
    loader = build_val_loader(str(tmp_path / "shards" / "val"), num_workers=0, mean=(123.675, 116.28, 103.53),
                              std=(58.395, 57.12, 57.375), num_classes=8)  # the quickstart's Normalize
    ref, _ = evaluate_from_cfg(model.eval(), loader, cfg)
    assert ref["mIoU"] > 0, ref
    for k in ("aAcc", "mIoU", "mAcc", "mDice"):
        assert res[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), (k, res[k], ref[k])

    Image.fromarray((np.random.default_rng(0).random((40, 70, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    assert predict_main(["--checkpoint", str(tmp_path / "model.pth"), "--images", str(tmp_path / "a.png"),
                         "--out", str(tmp_path / "pred"), "--overlay"]) == 0
    mask = Image.open(tmp_path / "pred" / "a.png")
    assert mask.mode == "P" and mask.size == (70, 40) and np.asarray(mask).max() < 8
    assert (tmp_path / "pred" / "a_overlay.png").exists()

    sd.pop("decode_head.conv_seg.bias")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing"):
        eval_main(["--checkpoint", str(tmp_path / "bad.pth"), "--shards", str(tmp_path / "shards" / "val"),
                   "--num-workers", "0"])
