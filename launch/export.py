#!/usr/bin/env python
"""Export consolidated fp32 weights from a DeepSpeed checkpoint (any ZeRO stage).

    python launch/export.py work_dirs/x/checkpoints/iter_1000 --out model.pth              # mmcv format (default)
    python launch/export.py work_dirs/x --out model.pth                                    # newest complete checkpoint
    python launch/export.py CKPT --out model.safetensors --format safetensors              # plain tensors
    python launch/export.py CKPT --out model.onnx --format onnx --config RECIPE            # ONNX, checked by ORT

``onnx``: the recipe's model (``--config``, required) with the checkpoint's weights, traced at one static size and
checked with ONNX Runtime against PyTorch (``vit_adapter_ds/deploy/onnx.py`` says what each family exports, the
tolerance and what is refused).

``mmcv`` format: ``{'meta': {...}, 'state_dict': {...}}``, the layout of the officially released ViT-Adapter
checkpoints: ``backbone.*``, ``decode_head.*``, ``auxiliary_head.*`` for segmentors; for a detector the official mmdet
keys ``backbone.*``, ``neck.*``, ``rpn_head.*``, ``roi_head.*`` (``vit_adapter_ds/models/detectors/keymap.py``).
``torch`` / ``safetensors``: this package's keys.

The model type (which decides the mmdet key mapping) comes from, in this order: ``--model-type``; the run's data-only
record ``<work_dir>/config.json`` (``vit_adapter_ds/config/run_record.py``; work_dir = the folder holding
``checkpoints/``); the checkpoint's own keys (``rpn.*`` with ``roi_heads.*``: MaskRCNN; with ``roi_head.*``:
HybridTaskCascade; neither: a segmentor), which must agree with the first two. The model type's task (the task
registry, ``vit_adapter_ds.tasks.task_class``) names the official key layout and converts to it. Nothing found next to
a checkpoint is executed: a work dir's ``config.py`` (older runs have only that) is embedded in the meta as text, never
loaded.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

SEGMENTOR = "segmentor"  # --model-type for any segmentor (its keys are already the official ones)
MAX_CONFIG_PY = 4 * 1024 * 1024  # an old run's config.py embedded as text: at most this many bytes


class ExportError(Exception):
    """A refusal; the message names the file and the reason."""


def _task_class(model_type):
    """The task that trains ``model_type`` (the task registry), None for no type (a segmentor) or an unknown one."""
    from vit_adapter_ds.config import ConfigError
    from vit_adapter_ds.tasks import task_class

    if model_type is None:
        return None
    try:
        return task_class(model_type)
    except ConfigError:
        return None


def _family(model_type):
    """The official key layout the model type's task exports to (for a detector "MaskRCNN" / "HybridTaskCascade" /
    "CascadeRCNN", the mmdet mapping it uses) or None (no mapping: a segmentor, whose keys are already the official
    ones)."""
    task = _task_class(model_type)
    return None if task is None else task.key_layout(model_type)


def model_type_choices():
    """``--model-type``: the model types whose task exports to an official key layout of their own, and 'segmentor'."""
    from vit_adapter_ds.tasks import TASKS

    return (*(t for t, task in TASKS.items() if task.key_layout(t) is not None), SEGMENTOR)


def model_type_from_keys(state_dict: dict):
    """``(model type or None, why)`` from this package's keys: ``rpn.*`` with ``roi_heads.*`` (torchvision heads) ->
    MaskRCNN, with ``roi_head.*`` (cascade) -> CascadeRCNN when the neck is one FPN (``neck.fpn.*``), else
    HybridTaskCascade (a list of necks, ``neck.<i>.*``); none of these -> a segmentor (None). Raises
    :class:`ExportError` when the keys fit neither (or both)."""
    has = {p: any(k.startswith(p) for k in state_dict)
           for p in ("rpn.", "roi_heads.", "roi_head.", "decode_head.", "neck.fpn.")}
    if has["rpn."] and has["roi_heads."] and not has["roi_head."] and not has["decode_head."]:
        return "MaskRCNN", "rpn.* and roi_heads.* keys"
    if has["rpn."] and has["roi_head."] and not has["roi_heads."] and not has["decode_head."]:
        if has["neck.fpn."]:
            return "CascadeRCNN", "rpn.*, roi_head.* and neck.fpn.* keys"
        return "HybridTaskCascade", "rpn.* and roi_head.* keys"
    one_stage = {k.split(".")[1] for k in state_dict if k.startswith("bbox_head.")}  # ATSS / GFL: a dense head
    if one_stage and not (has["rpn."] or has["roi_heads."] or has["roi_head."] or has["decode_head."]):
        for name, kind in (("atss_cls", "ATSS"), ("gfl_cls", "GFL")):
            if name in one_stage:
                return kind, f"bbox_head.{name}.* keys"
    if not (has["rpn."] or has["roi_heads."] or has["roi_head."]):
        return None, "no rpn.* / roi_head(s).* keys"
    found = ", ".join(f"{p}*" for p, v in has.items() if v and p != "neck.fpn.")
    raise ExportError(f"cannot tell the detector type from its keys ({found}); give --model-type")


def _read_text(path: Path):
    """A small regular file's text (embedded in the meta as data), else None."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_CONFIG_PY:
            return None
        with open(path, "rb") as f:
            return f.read(MAX_CONFIG_PY).decode("utf-8", errors="replace")
    except OSError:
        return None


def resolve_model_type(state_dict: dict, tag_dir: Path, explicit: str | None):
    """``(model type or None for a segmentor, source, config text or None, its format)`` for ``--format mmcv``."""
    from vit_adapter_ds.config.run_record import FILENAME, RunRecordError, RunRecordMissing, read_run_config

    work_dir = tag_dir.parent.parent if tag_dir.parent.name == "checkpoints" else None
    config_text, config_format, recorded = None, None, None
    if work_dir is not None:
        try:
            cfg = read_run_config(work_dir)  # json.loads only
        except RunRecordMissing:
            cfg = None
            config_text = _read_text(work_dir / "config.py")  # an old run's config.py: text, never executed
            config_format = "py" if config_text is not None else None
        except RunRecordError as e:
            raise ExportError(str(e)) from e
        if cfg is not None:
            model = cfg.get("model")
            recorded = model.get("type") if isinstance(model, dict) else None
            if recorded is not None and not isinstance(recorded, str):
                raise ExportError(f"{work_dir / FILENAME}: model.type must be a string, got {recorded!r}")
            config_text, config_format = json.dumps(cfg, indent=1, sort_keys=True), "json"
    try:
        from_keys, why = model_type_from_keys(state_dict)
        ambiguous = None
    except ExportError as e:
        from_keys, why, ambiguous = None, None, e
    if explicit is not None:
        model_type, source = (None if explicit == SEGMENTOR else explicit), "--model-type"
    elif recorded is not None:
        model_type, source = recorded, f"{work_dir / FILENAME}"
    elif ambiguous is not None:
        where = ("no checkpoints/ folder above it" if work_dir is None else f"{work_dir / FILENAME} has no model.type"
                 if config_format == "json" else f"{work_dir / FILENAME} is missing")
        raise ExportError(f"{tag_dir}: no model type recorded ({where}) and {ambiguous}")
    else:
        return from_keys, f"checkpoint keys ({why})", config_text, config_format
    if ambiguous is None and _family(model_type) != _family(from_keys):
        raise ExportError(f"{tag_dir}: model type {model_type!r} from {source} does not fit the checkpoint's keys "
                          f"({why}: {from_keys or 'a segmentor'}); give the right --model-type")
    return model_type, source, config_text, config_format


def official_layout(state_dict: dict, model_type) -> dict:
    """The model type's task converts to its official layout (detectors: the official mmdet keys); a segmentor's keys
    (``model_type`` None or not a detector) are already official."""
    if _family(model_type) is None:
        return state_dict
    try:
        return _task_class(model_type).official_state_dict(state_dict, model_type)
    except (KeyError, ValueError) as e:
        raise ExportError(f"no official layout for these keys as {model_type}: {e}; give the right --model-type")


def export_onnx(args) -> int:
    """``--format onnx``: the recipe's model with the checkpoint, traced to ONNX and checked with ONNX Runtime
    (``vit_adapter_ds/deploy/onnx.py``)."""
    if args.config is None:
        print("error: --format onnx needs --config RECIPE (a recipe name or .py path): the graph is built from the "
              "recipe's model, the checkpoint only gives its weights", file=sys.stderr)
        return 2
    if args.model_type is not None:
        print("error: --model-type is not read by --format onnx (the recipe gives the model type)", file=sys.stderr)
        return 2
    from vit_adapter_ds.deploy.onnx import ExportError as OnnxExportError, export_recipe

    try:
        record = export_recipe(args.config, args.checkpoint, args.out, input_size=args.input_size,
                               verify=args.verify, options=args.cfg_options)
    except OnnxExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "verify_summary" in record:
        print(record["verify_summary"], file=sys.stderr)
    record.pop("verify_summary", None)
    print(json.dumps(record))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint tag dir (iter_N), a checkpoints dir or a work dir (--format onnx: "
                                      "also any weights file, e.g. model.pth)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--format", choices=("mmcv", "torch", "safetensors", "onnx"), default="mmcv")
    p.add_argument("--model-type", choices=model_type_choices(), default=None,
                   help="the model.type that decides the mmcv key layout (default: the run's config.json, else the "
                        "checkpoint's keys)")
    p.add_argument("--config", default=None,
                   help="--format onnx: the recipe (name or .py path) the model is built from (required)")
    p.add_argument("--cfg-options", nargs="+", default=None, help="--format onnx: overrides of the recipe, key=value")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="--format onnx: the static input size, multiples of 32 (default: the recipe's test scale, "
                        "short x long side rounded up, or its sliding-window crop)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="--format onnx: run the file with ONNX Runtime next to PyTorch and refuse differences over "
                        "the tolerance (vit_adapter_ds/deploy/onnx.py)")
    args = p.parse_args(argv)
    if args.format == "onnx":
        return export_onnx(args)
    for flag, value in (("--config", args.config), ("--input-size", args.input_size),
                        ("--cfg-options", args.cfg_options)):
        if value is not None:
            print(f"error: {flag} is only read by --format onnx", file=sys.stderr)
            return 2

    from vit_adapter_ds.checkpoint.deepspeed import consolidate_deepspeed
    from vit_adapter_ds.checkpoint.manager import find_resume
    from vit_adapter_ds.checkpoint.reader import CheckpointError, to_mmcv

    try:
        found = find_resume(args.checkpoint, args.checkpoint)
    except (FileNotFoundError, NotADirectoryError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if found is None:
        print(f"error: no complete checkpoint under {args.checkpoint}", file=sys.stderr)
        return 2
    tag_dir, meta = found
    sd = consolidate_deepspeed(tag_dir)  # read with weights_only=True, never unpickling objects
    out = Path(args.out)
    info = None
    if args.format == "mmcv":
        try:
            model_type, source, config_text, config_format = resolve_model_type(sd, tag_dir, args.model_type)
            sd = official_layout(sd, model_type)
        except ExportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        info = {"iter": meta.get("iteration"), "exported_from": str(tag_dir), "time": time.asctime(),
                "zero_stage": meta.get("zero_stage"), "precision": meta.get("precision"),
                "model_type": model_type or SEGMENTOR, "model_type_from": source}
        if config_text is not None:
            info["config"], info["config_format"] = config_text, config_format
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(out))  # no shared storage (BEiT indexes)
    elif args.format == "torch":
        torch.save(sd, out)
    else:
        torch.save(to_mmcv(sd, info), out)
    print(json.dumps({"checkpoint": str(tag_dir), "out": str(out), "format": args.format, "tensors": len(sd)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
