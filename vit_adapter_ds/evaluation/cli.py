"""Command lines behind ``launch/eval.py`` (dataset mIoU) and ``launch/predict.py`` (colourised masks).

    python launch/eval.py --config upernet_deit_adapter_tiny_512_160k_ade20k --checkpoint model.pth \
        [--shards shards/ade20k/val] [--aug-test | --ratios 0.5 1.0 --flip] [--out metrics.json]
    torchrun --nproc_per_node 4 launch/eval.py ...          # each rank evaluates its share; areas are summed
    python launch/predict.py --config RECIPE --checkpoint model.pth --images a.jpg dir/ --out predictions/

``--checkpoint``: a consolidated fp32 state dict file, an mmcv ``{'meta', 'state_dict'}`` file (the released
ViT-Adapter checkpoints), or a DeepSpeed checkpoint directory. Loading is strict: missing or unexpected keys are
errors, since evaluating a partly initialised model gives meaningless numbers.
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


def load_segmentor(cfg, checkpoint, device="cpu"):
    """Build the recipe's segmentor (no pretrained backbone file is read) and load ``checkpoint`` strictly, through
    the one safe reader (:mod:`vit_adapter_ds.checkpoint_io`: any checkpoint kind, never unpickling objects)."""
    from ..checkpoint_io import load_into
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
    p.add_argument("--checkpoint", required=True, help="weights: .pth (plain or mmcv format) or DeepSpeed dir")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override recipe values")
    p.add_argument("--mode", choices=("whole", "slide"), default=None, help="default: the recipe's test_cfg")
    p.add_argument("--crop-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--stride", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--aug-test", action="store_true", help=f"multi-scale {list(MS_RATIOS)} + flip test")
    p.add_argument("--ratios", type=float, nargs="+", default=None, help="multi-scale ratios of the test scale")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped inference")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument("--bf16", action="store_true", help="run the model in bfloat16 (softmax/argmax in fp32)")


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


def eval_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="launch/eval.py", description="mIoU of a checkpoint on validation shards.")
    _common_args(p)
    p.add_argument("--shards", default=None, help="validation shard dir (default: the recipe's data.val.shard_dir)")
    p.add_argument("--out", default=None, help="write the metrics (with per-class IoU/Acc) as JSON here")
    p.add_argument("--num-workers", type=int, default=2)
    args = p.parse_args(argv)

    from ..config import load_recipe
    from ..data import build_val_loader
    from .evaluator import evaluate
    from .miou import format_table

    cfg = load_recipe(args.config, args.cfg_options)
    rank, world = _init_runtime()
    device = _device(args.device)
    shard_dir = args.shards or ((cfg.get("data") or {}).get("val") or {}).get("shard_dir")
    if not shard_dir:
        print("error: no --shards and no data.val.shard_dir in the recipe", file=sys.stderr)
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
    p = argparse.ArgumentParser(prog="launch/predict.py", description="Colourised segmentation masks of images.")
    _common_args(p)
    p.add_argument("--images", nargs="+", required=True, help="image files and/or directories")
    p.add_argument("--out", required=True, help="output directory: <stem>.png (indexed: values = class ids)")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png (mask over the image)")
    args = p.parse_args(argv)

    from ..config import load_recipe
    from .visualize import overlay, save_mask_png, save_rgb_png

    cfg = load_recipe(args.config, args.cfg_options)
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
