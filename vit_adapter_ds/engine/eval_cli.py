"""Command lines behind ``launch/eval.py`` and ``launch/predict.py``, for segmentation and detection recipes.

The recipe's task (:func:`vit_adapter_ds.tasks.task_for`, by ``model.type``) decides what is measured and drawn.

Segmentation (``EncoderDecoder``, ``EncoderDecoderMask2Former``): dataset mIoU; colourised masks::

    python launch/eval.py --config upernet_deit_adapter_tiny_512_160k_ade20k --checkpoint model.pth \
        [--shards shards/ade20k/val] [--aug-test | --ratios 0.5 1.0 --flip] [--out metrics.json]
    python launch/predict.py --config RECIPE --checkpoint model.pth --images a.jpg dir/ --out predictions/ [--overlay]

Detection (``MaskRCNN``): COCO box / mask AP through pycocotools (the recipe's ``evaluation.metric``), with the
recipe's test pipeline (``data.<split>.pipeline``); images with the boxes, class names, scores and masks drawn::

    python launch/eval.py --config synthetic_mask_rcnn --checkpoint model.pth [--split val|test] [--shards DIR] \
        [--out metrics.json] [--out-json results] [--format-only]
    python launch/predict.py --config synthetic_mask_rcnn --checkpoint model.pth --images a.jpg dir/ --out drawn/ \
        [--score-thr 0.3] [--save-json] [--image-format png|jpg]

``--out`` holds ``bbox_mAP``, ``bbox_mAP_50``, ``bbox_mAP_75``, ``bbox_mAP_s/m/l`` (and ``segm_*``), ``num_images``.
``--out-json P`` writes the detections in the COCO result format, mmdet's ``format_results`` files ``P.bbox.json`` /
``P.segm.json`` (``category_id`` = the shard manifest's COCO ids, masks as RLE), as the COCO test-dev server takes
them; ``--format-only`` writes them without computing AP (test-dev shards carry no annotations). Predict writes
``<stem>.png`` (or ``.jpg``) per image, and with ``--save-json`` ``<stem>.json``: the drawn detections (``bbox``
``[x, y, w, h]``, ``score``, ``label`` = class index, ``category_id`` / ``name`` from the manifest when readable,
``segmentation`` RLE). Flags of the other task (``--mode``, ``--crop-size``, ``--stride``, ``--ratios``,
``--aug-test``, ``--flip``, ``--overlay`` for segmentation; ``--out-json``, ``--format-only``, ``--score-thr``,
``--save-json``, ``--image-format`` for detection) are refused.

Under ``torchrun`` / ``srun`` each rank evaluates (predicts) its share and rank 0 writes the metrics: every image is
evaluated exactly once over all ranks (the COCO evaluator gathers the ranks' images and refuses one seen twice).

``--checkpoint``: any kind :mod:`vit_adapter_ds.checkpoint.reader` reads (a consolidated fp32 state dict, an mmcv
``{'meta', 'state_dict'}`` file such as the released ViT-Adapter checkpoints, safetensors, a DeepSpeed checkpoint
directory); a detection checkpoint in the official mmdet key layout (``rpn_head.*``, ``roi_head.*``) is converted
through :mod:`vit_adapter_ds.models.detectors.keymap`. Loading is strict: missing or unexpected keys are errors,
since evaluating a partly initialised model gives meaningless numbers.

These command lines sit on top of the tasks, next to the training command line (``engine/cli.py``);
:func:`run_cli` turns the expected errors (bad flags, recipe, checkpoint or shards) into one
``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmseg/ViT-Adapter multi-scale test ratios (ADE20K UperNet)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# argparse dests of the flags only one kind of task understands (refused for the other kind)
SEGMENTATION_ONLY = ("mode", "crop_size", "stride", "aug_test", "ratios", "flip", "overlay")
DETECTION_ONLY = ("out_json", "format_only", "score_thr", "save_json", "image_format")
DEFAULT_SCORE_THR = 0.3


class UsageError(ValueError):
    """A flag, recipe section or input that does not fit the command (printed as one ``error:`` line)."""


def run_cli(main, argv=None) -> int:
    """``main(argv)``; a :class:`UsageError`, ``ConfigError``, ``CheckpointError``, ``ShardSetError`` or missing file
    is printed as ``<prog>: error: ...`` (exit status 2) instead of a traceback."""
    from ..checkpoint.reader import CheckpointError
    from ..config import ConfigError
    from ..data.manifest import ShardSetError

    try:
        return main(argv)
    except (UsageError, ConfigError, CheckpointError, ShardSetError, FileNotFoundError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _refuse(args, names, why: str) -> None:
    given = [n for n in names if getattr(args, n, None) not in (None, False)]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise UsageError(f"{flags}: {why}")


def _is_detection(cfg) -> bool:
    from ..tasks import ObjectDetection, task_for
    return isinstance(task_for(cfg), ObjectDetection)


def load_segmentor(cfg, checkpoint, device="cpu"):
    """Build the recipe's segmentor (no pretrained backbone file is read) and load ``checkpoint`` strictly, through
    the one safe reader (:mod:`vit_adapter_ds.checkpoint.reader`: any checkpoint kind, never unpickling objects)."""
    from ..checkpoint.reader import load_into
    from ..models.registry import build_model

    model = build_model(cfg.model, load_pretrained=False)
    load_into(model, checkpoint, strict=True)
    return model.to(device).eval()


def _init_runtime() -> tuple[int, int]:
    """Rank and world size under any launcher (torchrun, srun, deepspeed, plain python): one process group, so each
    rank evaluates its share and only rank 0 writes."""
    from .. import runtime as rt

    rt.init_distributed(deepspeed=False)
    return rt.rank(), rt.world_size()


def _device(arg: str | None) -> torch.device:
    from .. import runtime as rt
    return torch.device(arg) if arg else rt.device()


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="recipe name or .py file (default: the synthetic quickstart)")
    p.add_argument("--checkpoint", required=True,
                   help="weights: .pth (plain, mmcv or official mmdet layout), safetensors or DeepSpeed dir")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override recipe values")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="recipe data section: its shard_dir (and, for detection, its test pipeline)")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 (segmentation: the model in bf16, softmax/argmax in fp32; detection: autocast)")
    seg = p.add_argument_group("segmentation recipes only")
    seg.add_argument("--mode", choices=("whole", "slide"), default=None, help="default: the recipe's test_cfg")
    seg.add_argument("--crop-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    seg.add_argument("--stride", type=int, nargs=2, default=None, metavar=("H", "W"))
    seg.add_argument("--aug-test", action="store_true", help=f"multi-scale {list(MS_RATIOS)} + flip test")
    seg.add_argument("--ratios", type=float, nargs="+", default=None, help="multi-scale ratios of the test scale")
    seg.add_argument("--flip", action="store_true", help="add horizontally flipped inference")


def _aug(args) -> dict:
    ratios = list(MS_RATIOS) if args.aug_test and not args.ratios else args.ratios
    out = {"flip": bool(args.flip or args.aug_test)}
    if ratios:
        out["ratios"] = ratios
    return out


def _test_settings(cfg, args) -> dict:
    tc = dict(cfg.model.get("test_cfg") or {})
    ev = dict(cfg.get("evaluation") or {})
    return dict(mode=args.mode or tc.get("mode"), crop_size=args.crop_size or tc.get("crop_size"),
                stride=args.stride or tc.get("stride"), img_scale=ev.get("img_scale"),
                size_divisor=ev.get("size_divisor", 32), ms_resize=ev.get("ms_resize"),
                pad_short_side=ev.get("pad_short_side"))


def _norm(cfg) -> tuple[tuple, tuple]:
    norm = ((cfg.get("data") or {}).get("val") or {}).get("img_norm_cfg") or {}
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
    return tuple(norm.get("mean", IMAGENET_MEAN)), tuple(norm.get("std", IMAGENET_STD))


def _run_for_task(args, detection, segmentation, detection_only) -> int:
    """Load the recipe and run ``detection(cfg, args)`` or ``segmentation(cfg, args)`` by its task, after refusing the
    flags of the other task."""
    from ..config import load_recipe

    cfg = load_recipe(args.config, args.cfg_options)
    if _is_detection(cfg):
        _refuse(args, SEGMENTATION_ONLY, "segmentation recipes only; a detection recipe's test scales and flip come "
                                         f"from its data.{args.split}.pipeline (the *_ms recipes test with TTA)")
        return detection(cfg, args)
    _refuse(args, detection_only, "detection recipes only")
    return segmentation(cfg, args)


def eval_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="launch/eval.py",
                                description="Segmentation mIoU or detection box / mask AP of a checkpoint on shards.")
    _common_args(p)
    p.add_argument("--shards", default=None, help="shard dir (default: the recipe's data.<split>.shard_dir)")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    p.add_argument("--num-workers", type=int, default=2)
    det = p.add_argument_group("detection recipes only")
    det.add_argument("--out-json", default=None, metavar="PREFIX",
                     help="also write the detections as COCO result files PREFIX.bbox.json / PREFIX.segm.json")
    det.add_argument("--format-only", action="store_true", help="write --out-json only, no AP (e.g. test-dev)")
    args = p.parse_args(argv)

    return _run_for_task(args, _eval_detection, _eval_segmentation, DETECTION_ONLY)


def _eval_segmentation(cfg, args) -> int:
    from ..data import build_val_loader
    from ..evaluation.evaluator import evaluate
    from ..evaluation.miou import format_table

    rank, world = _init_runtime()
    device = _device(args.device)
    shard_dir = args.shards or ((cfg.get("data") or {}).get(args.split) or {}).get("shard_dir")
    if not shard_dir:
        print(f"error: no --shards and no data.{args.split}.shard_dir in the recipe", file=sys.stderr)
        return 2
    model = load_segmentor(cfg, args.checkpoint, device)
    num_classes = int(model.num_classes)
    mean, std = _norm(cfg)
    loader = build_val_loader(shard_dir, rank=rank, world_size=world, num_workers=args.num_workers, mean=mean,
                              std=std, num_classes=num_classes)
    dtype = None
    if args.bf16:
        model = model.to(torch.bfloat16)
        dtype = torch.bfloat16
    names = loader.manifest.get("classes")
    res = evaluate(model, loader, num_classes, **_test_settings(cfg, args), aug=_aug(args),
                   class_names=names if names is not None and len(names) == num_classes else None,
                   device=device, dtype=dtype, progress=rank == 0, mean=mean, std=std)
    if rank == 0:
        print(format_table(res))
        print(f"{res['num_images']} images; aAcc {res['aAcc']:.4f} mIoU {res['mIoU']:.4f} mAcc {res['mAcc']:.4f}")
        if args.out:
            out = {k: res[k] for k in ("aAcc", "mIoU", "mAcc", "num_images")}
            out["per_class"] = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
                                for row in res["per_class"]]  # NaN (class absent) -> null: strict JSON
            out.update(checkpoint=str(args.checkpoint), shards=str(shard_dir), aug=_aug(args),
                       **{k: v for k, v in _test_settings(cfg, args).items()})
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=1, default=_json_default))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------------------------------- detection
def load_detector(task, checkpoint, device="cpu"):
    """The task's detector (no pretrained backbone file is read) with ``checkpoint`` loaded strictly (any kind
    ``checkpoint_io`` reads; official mmdet keys converted by :func:`~vit_adapter_ds.models.detectors.keymap.
    mmdet_checkpoint_filter`), in eval mode."""
    from ..checkpoint.reader import CheckpointError, load_into
    from ..models.detectors.keymap import mmdet_checkpoint_filter

    model = task.build_model(load_pretrained=False)
    what = f"--checkpoint {checkpoint} does not match the recipe's {type(model).__name__}"
    try:
        report = load_into(model, checkpoint, filter_fn=mmdet_checkpoint_filter)
    except CheckpointError as e:  # shape mismatches, unreadable files, unknown official keys
        raise CheckpointError(f"{what}: {e}") from e
    if report.missing or report.unexpected:
        raise CheckpointError(f"{what} (written for another recipe or model size?): "
                              f"{_some(report.missing)} missing from the file; "
                              f"{_some(report.unexpected)} in the file but not in the model")
    return model.to(device).eval()


def _some(keys, n: int = 4) -> str:
    keys = list(keys)
    if not keys:
        return "no keys"
    shown = ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''} ({shown})"


def _det_section(cfg, split: str, shards=None) -> dict:
    """``data.<split>`` (with ``shard_dir`` replaced by ``shards`` when given); a clear error when it is absent."""
    data = cfg.get("data") or {}
    if data.get(split) is None:
        other = "test" if split == "val" else "val"
        hint = f" (it has data.{other}: --split {other})" if data.get(other) is not None else ""
        raise UsageError(f"the recipe has no data.{split} (its shard_dir and test pipeline){hint}")
    if shards:
        data[split]["shard_dir"] = str(shards)
    return data[split]


def _det_val_loader(task, cfg, args, rank: int, world: int):
    from ..data.manifest import ShardSetError
    from ..utils.redact import redact_url

    shard_dir = _det_section(cfg, args.split, args.shards)["shard_dir"]
    try:
        loader = task.build_val_loader(rank, world, split=args.split)
    except ShardSetError as e:
        raise ShardSetError(f"data.{args.split}.shard_dir={redact_url(shard_dir)}: {e}") from e
    loader.num_workers = args.num_workers
    return loader, shard_dir


def format_coco_metrics(metrics: dict, iou_types) -> str:
    """The AP table: one row per iou type, the columns of :data:`~.coco.METRIC_NAMES`."""
    from ..evaluation.coco import METRIC_NAMES

    lines = ["       " + " ".join(f"{n:>7}" for n in METRIC_NAMES)]
    for t in iou_types:
        lines.append(f"{t:<6} " + " ".join(f"{metrics[f'{t}_{n}']:7.4f}" for n in METRIC_NAMES))
    return "\n".join(lines)


def _eval_detection(cfg, args) -> int:
    from ..tasks import task_for
    from ..tasks.detection import iou_types as recipe_iou_types
    from ..evaluation.coco import evaluate_detector

    if args.format_only and not args.out_json:
        raise UsageError("--format-only needs --out-json (where the COCO result files go)")
    task = task_for(cfg)
    iou = recipe_iou_types(cfg)
    rank, world = _init_runtime()
    device = _device(args.device)
    loader, shard_dir = _det_val_loader(task, cfg, args, rank, world)
    model = task.predictor(load_detector(task, args.checkpoint, device), loader)  # the recipe's TTA, if any
    res = evaluate_detector(model, loader, loader.categories, device=device, iou_types=iou, progress=rank == 0,
                            dtype=torch.bfloat16 if args.bf16 else None, results_prefix=args.out_json,
                            format_only=args.format_only)
    if rank == 0:
        n_total = int(loader.manifest["num_samples"])
        if not args.format_only:
            print(format_coco_metrics(res, iou))
        print(f"{res['num_images']} of {n_total} images evaluated" + (
            f" ({n_total - res['num_images']} bad samples skipped)" if res["num_images"] != n_total else ""))
        for t, path in (res.get("results_files") or {}).items():
            print(f"{t} results (COCO format) -> {path}")
        if args.out:
            out = {k: v for k, v in res.items() if k != "results_files"}
            out.update(checkpoint=str(args.checkpoint), shards=str(shard_dir), split=args.split, iou_types=list(iou),
                       results_files=res.get("results_files"))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=1, default=_json_default))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def list_images(paths) -> list[Path]:
    """Files given directly, plus the image files (by suffix, sorted) of the given directories."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or directory")
    return out


def read_image(path, mean, std) -> tuple[np.ndarray, torch.Tensor]:
    """RGB uint8 (H, W, 3) and the normalised (1, 3, H, W) float tensor."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return rgb, x[None]


def predict_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="launch/predict.py",
                                description="Colourised segmentation masks, or images with drawn detections.")
    _common_args(p)
    p.add_argument("--images", nargs="+", required=True, help="image files and/or directories")
    p.add_argument("--out", required=True,
                   help="output directory: <stem>.png (segmentation: indexed, values = class ids; detection: drawn)")
    p.add_argument("--overlay", action="store_true",
                   help="segmentation only: also write <stem>_overlay.png (mask over the image)")
    det = p.add_argument_group("detection recipes only")
    det.add_argument("--score-thr", type=float, default=None,
                     help=f"draw (and --save-json) detections scoring at least this (default {DEFAULT_SCORE_THR})")
    det.add_argument("--save-json", action="store_true", help="also write <stem>.json: the drawn detections")
    det.add_argument("--image-format", choices=("png", "jpg"), default=None, help="drawn image format (default png)")
    det.add_argument("--shards", default=None,
                     help="shard dir whose manifest gives the class names and COCO ids (default: data.<split>)")
    args = p.parse_args(argv)

    return _run_for_task(args, _predict_detection, _predict_segmentation, DETECTION_ONLY + ("shards",))


def _predict_segmentation(cfg, args) -> int:
    from ..evaluation.visualize import overlay, save_mask_png, save_rgb_png

    rank, world = _init_runtime()
    device = _device(args.device)
    model = load_segmentor(cfg, args.checkpoint, device)
    if args.bf16:
        model = model.to(torch.bfloat16)
    num_classes = int(model.num_classes)
    mean, std = _norm(cfg)
    st = _test_settings(cfg, args)
    aug = _aug(args)
    from ..models.test_time_resize import scales_from_ratios, select_test_resize
    scales = scales_from_ratios(st["img_scale"], aug["ratios"]) if aug.get("ratios") else [st["img_scale"]]
    resize_rule = select_test_resize(st["size_divisor"], st["ms_resize"], multi_scale=bool(aug.get("ratios")))
    out_dir = Path(args.out)
    images = list_images(args.images)[rank::world]  # under torchrun / srun each rank writes its share
    for path in images:
        rgb, x = read_image(path, mean, std)
        x = x.to(device, torch.bfloat16 if args.bf16 else torch.float32)
        with torch.no_grad():
            prob = model.aug_test(x, scales=scales, flip=aug["flip"], resize_rule=resize_rule,
                                  mode=st["mode"], crop_size=st["crop_size"], stride=st["stride"])
        pred = prob.argmax(1)[0].cpu().numpy()
        save_mask_png(out_dir / f"{path.stem}.png", pred, num_classes)
        if args.overlay:
            save_rgb_png(out_dir / f"{path.stem}_overlay.png", overlay(rgb, pred, num_classes))
        print(f"{path} -> {out_dir / (path.stem + '.png')}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _class_info(shard_dir, split: str, num_classes: int):
    """``(names, category ids, palette)`` from the manifest of ``shard_dir`` when it is readable and has
    ``num_classes`` categories, else ``(None, None, None)`` (labels are drawn as class indices)."""
    from ..data.manifest import ShardSetError, read_manifest

    try:
        m = read_manifest(shard_dir, split)
    except (ShardSetError, OSError, ValueError):
        return None, None, None
    cats = m.get("categories") or []
    if len(cats) != num_classes:
        return None, None, None
    palette = m.get("palette")
    return ([str(c["name"]) for c in cats], [int(c["id"]) for c in cats],
            palette if palette is not None and len(palette) >= num_classes else None)


def detections_json(pred: dict, score_thr: float, names=None, cat_ids=None) -> list[dict]:
    """The detections scoring ``>= score_thr`` as dicts: ``bbox`` [x, y, w, h] (COCO), ``score``, ``label`` (class
    index), ``category_id`` / ``name`` (when known) and ``segmentation`` (COCO RLE, when the model predicts masks)."""
    from ..evaluation.coco import encode_mask

    out = []
    for k in torch.nonzero(pred["scores"] >= score_thr).flatten().tolist():
        x1, y1, x2, y2 = (float(v) for v in pred["boxes"][k])
        label = int(pred["labels"][k])
        d = {"bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(pred["scores"][k]), "label": label}
        if cat_ids is not None:
            d["category_id"], d["name"] = cat_ids[label], names[label]
        if pred.get("masks") is not None:
            d["segmentation"] = encode_mask(pred["masks"][k].numpy())
        out.append(d)
    return out


def _predict_detection(cfg, args) -> int:
    from PIL import Image

    from ..config.keys import to_plain
    from ..tasks import task_for
    from ..tasks.detection import test_settings, val_loader_item
    from ..evaluation.visualize import draw_detections, save_image

    thr = DEFAULT_SCORE_THR if args.score_thr is None else float(args.score_thr)
    section = _det_section(cfg, args.split, args.shards)
    test_tf = test_settings(to_plain(cfg.data), args.split)  # the recipe's test scale, normalisation and TTA
    task = task_for(cfg)
    paths = list_images(args.images)
    rank, world = _init_runtime()
    device = _device(args.device)
    detector = load_detector(task, args.checkpoint, device)
    model = task.predictor(detector, test_tf)  # the detector, or its test-time augmentation (the recipe's)
    names, cat_ids, palette = _class_info(section["shard_dir"], args.split, int(detector.num_classes))
    autocast = torch.bfloat16 if args.bf16 else None
    out_dir = Path(args.out)
    for path in paths[rank::world]:  # under torchrun / srun each rank writes its share
        img = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).contiguous()
        x = val_loader_item(test_tf, img)
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            pred = model.predict(x["img"].to(device), [x["img_shape"]], [tuple(img.shape[-2:])])[0]
        pred = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu() for k, v in pred.items()}
        dst = out_dir / f"{path.stem}.{args.image_format or 'png'}"
        save_image(dst, draw_detections(img, pred, thr, names, palette))
        dets = detections_json(pred, thr, names, cat_ids)
        if args.save_json:
            h, w = img.shape[-2:]
            (out_dir / f"{path.stem}.json").write_text(json.dumps(
                {"image": str(path), "height": int(h), "width": int(w), "score_thr": thr, "detections": dets}))
        print(f"{path} -> {dst} ({len(dets)} detections >= {thr})")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
