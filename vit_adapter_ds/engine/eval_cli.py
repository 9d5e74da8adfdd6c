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
``segmentation`` RLE); for a segmentation recipe the recipe's test-time settings apply by default, as in
``launch/eval.py`` and mmseg's ``inference_segmentor`` (an ``_ms`` recipe's multi-scale ratios and flip; ``--ratios 1.0``
for a single scale); for a panoptic recipe the segments drawn, and with ``--save-json`` COCO's panoptic
prediction format (``<stem>_panoptic.png`` + ``<stem>.json`` with its ``segments_info``). Flags of the other task (``--mode``, ``--crop-size``, ``--stride``, ``--ratios``,
``--aug-test``, ``--flip``, ``--overlay`` for segmentation; ``--out-json``, ``--format-only``, ``--score-thr``,
``--save-json``, ``--image-format`` for detection; ``--out-json``, ``--format-only``, ``--score-thr`` for a panoptic
recipe) are refused.

Under ``torchrun`` / ``srun`` each rank evaluates (predicts) its share and rank 0 writes the metrics: every image is
evaluated exactly once over all ranks (the COCO evaluator gathers the ranks' images and refuses one seen twice).

``--checkpoint``: any kind :mod:`vit_adapter_ds.checkpoint.reader` reads (a consolidated fp32 state dict, an mmcv
``{'meta', 'state_dict'}`` file such as the released ViT-Adapter checkpoints, safetensors, a DeepSpeed checkpoint
directory); a detection checkpoint in the official mmdet key layout (``rpn_head.*``, ``roi_head.*``) is converted
through :mod:`vit_adapter_ds.models.detectors.keymap`. Loading is strict: missing or unexpected keys are errors,
since evaluating a partly initialised model gives meaningless numbers.

These command lines sit on top of the tasks, next to the training command line (``engine/cli.py``): the task
(:class:`vit_adapter_ds.tasks.base.Task`) builds the model from the checkpoint, its loaders, evaluates and predicts
(``evaluate_checkpoint`` / ``predict_images``); this module parses the flags, refuses those of another task (each
task names its own in ``cli_options``), starts the runtime and prints / writes rank 0's results. :func:`run_cli`
turns the expected errors (bad flags, recipe, checkpoint or shards) into one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

# argparse dests of the flags only some tasks understand (a task's ``cli_options``): refused for the others
EVAL_TASK_FLAGS = ("mode", "crop_size", "stride", "aug_test", "ratios", "flip", "out_json", "format_only")
PREDICT_TASK_FLAGS = ("mode", "crop_size", "stride", "aug_test", "ratios", "flip", "overlay", "score_thr",
                      "save_json", "image_format", "shards")


class UsageError(ValueError):
    """A flag, recipe section or input that does not fit the command (printed as one ``error:`` line)."""


def run_cli(main, argv=None) -> int:
    """``main(argv)``; a :class:`UsageError`, ``ConfigError``, ``CheckpointError``, ``ShardSetError`` or missing file
    is printed as ``<prog>: error: ...`` (exit status 2) instead of a traceback."""
    from ..data.user_images import ImageError
    from ..checkpoint.reader import CheckpointError
    from ..config import ConfigError
    from ..data.manifest import ShardSetError

    try:
        return main(argv)
    except (UsageError, ConfigError, CheckpointError, ShardSetError, ImageError, FileNotFoundError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _task_options(args, task_flags) -> tuple:
    """``(task, options)`` for the recipe of ``args``: the flags of ``task_flags`` that another task understands are
    refused when given (``--mode: segmentation recipes only``); the task's own become ``options``."""
    from ..config import load_recipe
    from ..tasks import TASKS, task_for

    task = task_for(load_recipe(args.config, args.cfg_options))
    for owner in dict.fromkeys(TASKS.values()):
        # a flag the recipe's task does not take is refused, also where the task derives from the flag's owner
        # (the panoptic task from detection: --out-json would otherwise be dropped silently)
        given = [n for n in task_flags if n in owner.cli_options and n not in task.cli_options
                 and getattr(args, n, None) not in (None, False)]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            kind = owner.name.split("_")[-1]  # semantic_segmentation -> segmentation recipes
            raise UsageError(f"{flags}: {kind} recipes only{task.foreign_options_hint(args.split)}")
    return task, {n: getattr(args, n) for n in task_flags if n in task.cli_options and hasattr(args, n)}


def load_detector(task, checkpoint, device="cpu"):
    """The detection task's model with ``checkpoint`` loaded strictly, in eval mode (``task.build_eval_model``)."""
    return task.build_eval_model(checkpoint, device)


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
    from ..tasks.segmentation import MS_RATIOS

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

    task, options = _task_options(args, EVAL_TASK_FLAGS)
    rank, world = _init_runtime()
    report, record = task.evaluate_checkpoint(args.checkpoint, split=args.split, shards=args.shards,
                                              num_workers=args.num_workers, device=_device(args.device),
                                              bf16=args.bf16, rank=rank, world_size=world, **options)
    if rank == 0:
        print(report)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(record, indent=1, default=_json_default))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def predict_main(argv=None) -> int:
    from ..tasks.detection import DEFAULT_SCORE_THR

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

    from ..data.user_images import list_images

    task, options = _task_options(args, PREDICT_TASK_FLAGS)
    if options.get("flip") is False:  # --flip not given: the recipe's test pipeline decides (as launch/eval.py)
        options["flip"] = None
    paths = list_images(args.images)
    rank, world = _init_runtime()
    for line in task.predict_images(args.checkpoint, paths[rank::world], args.out, split=args.split,
                                    device=_device(args.device), bf16=args.bf16, **options):
        print(line)  # under torchrun / srun each rank writes its share
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
