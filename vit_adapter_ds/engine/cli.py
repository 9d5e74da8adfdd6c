"""``launch/train.py``: argument parsing, validation (before any process group exists), then the :class:`Trainer`.

    deepspeed --num_gpus 2 launch/train.py --ds_config ds_configs/zero2_fp32.json [--config RECIPE]
        [--work-dir DIR] [--resume auto|PATH] [--load-from PATH] [--cfg-options key=value ...]
    torchrun --nproc_per_node 2 launch/train.py ...    |    srun python launch/train.py ...    |    python launch/train.py ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch/train.py", description="Train a ViT-Adapter segmentor with DeepSpeed.")
    p.add_argument("--ds_config", "--ds-config", dest="ds_config", default="ds_configs/zero2_fp32.json",
                   help="DeepSpeed JSON config (default: ds_configs/zero2_fp32.json)")
    p.add_argument("--config", default=None,
                   help="recipe .py file or built-in recipe name (default: the synthetic quickstart recipe)")
    p.add_argument("--work-dir", "--work_dir", dest="work_dir", default=None,
                   help="output directory (default: recipe work_dir or work_dirs/<recipe name>)")
    p.add_argument("--resume", default=None, help="'auto' (newest complete checkpoint in the work dir) or a path")
    p.add_argument("--resume-other-recipe", action="store_true",
                   help="resume even when the checkpoint was saved by another model than this recipe builds "
                        "(refused by default, naming both)")
    p.add_argument("--load-from", "--load_from", dest="load_from", default=None,
                   help="initialise from a segmentor checkpoint (DeepSpeed dir, consolidated or mmcv .pth); "
                        "shape-mismatched layers (class layers) are re-initialised")
    p.add_argument("--load-from-partial", action="store_true",
                   help="accept a --load-from checkpoint that fills fewer than half of the model's tensors "
                        "(an error by default)")
    p.add_argument("--cfg-options", "--cfg_options", dest="cfg_options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override recipe values, e.g. runner.max_iters=200 data.samples_per_gpu=4")
    p.add_argument("--dist-timeout", type=float, default=300.0,
                   help="seconds before a hung collective fails (default 300)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return p


def prepare(args, world_size: int):
    """Load + validate the recipe (engine sections, then the task: model on the meta device, loader arguments) and
    the DeepSpeed config; raises ``ConfigError`` / ``FileNotFoundError``. Returns (task, ds, work_dir, resume,
    load_from)."""
    from ..config import resolve_recipe_path
    from ..models.registry import pretrained_path
    from ..tasks import load_and_validate
    from .deepspeed_setup import load_ds_config, resolve_ds_config, zero_stage
    from .ema import build_hooks

    from .optim import param_groups_for_recipe
    from .schedule import schedule_kwargs

    cfg, task, meta_model = load_and_validate(args.config, args.cfg_options)
    schedule_kwargs(cfg)
    param_groups_for_recipe(meta_model, cfg)  # paramwise_cfg / custom_keys against the model's real names
    ds = resolve_ds_config(load_ds_config(args.ds_config), cfg, world_size)
    build_hooks(cfg, zero_stage(ds))  # custom_hooks: supported types and keys, ZeRO-3 refused (engine/ema.py)
    load_from = args.load_from or cfg.get("load_from")
    if load_from and not Path(load_from).exists():
        raise FileNotFoundError(f"--load-from / load_from: {load_from} not found")
    pretrained = pretrained_path(cfg.model)
    if pretrained and not Path(pretrained).exists():
        raise FileNotFoundError(f"pretrained weights {pretrained} not found (download them, or train from scratch "
                                "with --cfg-options model.pretrained=None)")
    for split in ("train", "val"):
        shard_dir = (cfg.data.get(split) or {}).get("shard_dir")
        if shard_dir and "://" not in str(shard_dir) and not Path(shard_dir).exists():  # URLs: data/remote.py
            raise FileNotFoundError(f"data.{split}.shard_dir {shard_dir} not found; write shards first, e.g. "
                                    "python -m vit_adapter_ds.data.make_shards synthetic ...")
    resume = args.resume or cfg.get("resume_from")
    if resume and resume != "auto" and not Path(resume).exists():
        raise FileNotFoundError(f"--resume {resume}: not found")
    work_dir = args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / resolve_recipe_path(args.config).stem)
    return task, ds, work_dir, resume, load_from


def main(argv=None, make_task=None) -> int:
    """``make_task(cfg) -> task`` replaces the recipe's task (tests train stand-in parts with the real engine)."""
    from .. import runtime as rt

    parser = build_parser()
    args = parser.parse_args(argv)
    env = rt.setup_env()
    world = int(env["WORLD_SIZE"])
    try:
        task, ds, work_dir, resume, load_from = prepare(args, world)
    except (ConfigError, FileNotFoundError) as e:
        if int(env["RANK"]) == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    import warnings  # DeepSpeed 0.19 calls a deprecated torch collective on every ZeRO step
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*is deprecated", category=FutureWarning)
    rt.init_distributed(timeout_s=args.dist_timeout)
    from .trainer import Trainer

    if make_task is not None:
        task = make_task(task.cfg)
    from .status import recorded

    from ..checkpoint.manager import RecipeMismatchError
    from ..checkpoint.reader import CheckpointError

    try:
        with recorded(work_dir, main=rt.is_main()) as status:  # status.json: running -> finished/stopped/failed
            result = Trainer(task, ds, work_dir, resume=resume, load_from=load_from, progress=not args.no_progress,
                             resume_other_recipe=args.resume_other_recipe,
                             load_from_partial=args.load_from_partial).build().fit()
            status.update(iteration=result["iteration"], metrics=result["metrics"])  # the final evaluation
    except (CheckpointError, RecipeMismatchError) as e:  # a refused checkpoint: said plainly, recorded as failed
        if rt.is_main():
            print(f"error: {e}", file=sys.stderr, flush=True)
        rt.close_distributed()
        return 2
    rt.close_distributed()
    return 0
