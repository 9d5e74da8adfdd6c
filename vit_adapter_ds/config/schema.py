"""What the engine-level sections of a recipe may contain: every key of every section, its type and its range.

The ``model`` and ``data`` sections are not described here: the task validates them by building the model on the
meta device (each table entry's ``from_config`` checks its own keys) and by checking the loader arguments
(:mod:`vit_adapter_ds.tasks`), so the validator and the builder can never disagree. This module imports no model
code.
"""
from __future__ import annotations

from collections.abc import Mapping

from .errors import ConfigError
from .keys import check_keys, check_type

# Top-level keys. The helper variables of the official configs (crop_size, norm_cfg, ...) are allowed too (their
# effect is checked where they are used), as are names starting with "_".
SECTION_KEYS = ("model", "data", "optimizer", "optimizer_config", "lr_config", "runner", "checkpoint_config",
                "evaluation", "log_config", "fp16", "vis")
SCALAR_KEYS = ("load_from", "resume_from", "seed", "work_dir", "global_batch_size")
HELPER_KEYS = ("pretrained", "crop_size", "norm_cfg", "img_norm_cfg", "dataset_type", "data_root", "num_classes",
               "img_scale", "train_pipeline", "test_pipeline")
TOP_LEVEL_KEYS = set(SECTION_KEYS) | set(SCALAR_KEYS) | set(HELPER_KEYS)


# ----------------------------------------------------------------------------------------------- value checkers
def _t(*types, choices=None, minimum=None, exclusive=False):
    def check(value, where):
        value = check_type(value, types, where)
        if choices is not None and value not in choices:
            raise ConfigError(f"recipe: {where}={value!r} is not supported; choose one of {list(choices)}")
        if minimum is not None and value is not None and (value <= minimum if exclusive else value < minimum):
            raise ConfigError(f"recipe: {where} must be {'>' if exclusive else '>='} {minimum}, got {value!r}")
        return value
    return check


def _seq(item, length=None, allow_none=False):
    def check(value, where):
        if value is None and allow_none:
            return value
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
            raise ConfigError(f"recipe: {where} must be a list{f' of {length}' if length else ''}, got {value!r}")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return check


def _dict(spec, allow_none=False):
    def check(value, where):
        if value is None and allow_none:
            return value
        check_section(value, spec, where)
        return value
    return check


def _max_keep(value, where):
    value = check_type(value, (int, type(None)), where)
    if value is not None and value != -1 and value < 1:
        raise ConfigError(f"recipe: {where}={value!r}: use a positive number of checkpoints to keep, or -1 / None "
                          "to keep all (mmcv semantics)")
    return value


def _custom_keys(value, where):
    if not isinstance(value, Mapping):
        raise ConfigError(f"recipe: {where} must be a dict of name -> dict(lr_mult=..., decay_mult=...)")
    for name, mult in value.items():
        check_section(mult, {"lr_mult": _t(float, minimum=0), "decay_mult": _t(float, minimum=0)},
                      f"{where}.{name}")
    return value


def _loss_scale(value, where):
    if isinstance(value, Mapping):
        check_section(value, {"init_scale": _t(float, minimum=0, exclusive=True), "mode": _t(str),
                              "scale_factor": _t(float), "growth_interval": _t(int)}, where)
        return value
    if value == "dynamic":
        return value
    return _t(float, minimum=0, exclusive=True)(value, where)


POS_INT = _t(int, minimum=1)
PAIR = _seq(_t(int, minimum=1), length=2)
METRICS = ("mIoU", "aAcc", "mAcc")
# detection (evaluation/coco.py): '<bbox|segm>_<name>' for the COCO summary names
DET_METRICS = tuple(f"{t}_{n}" for t in ("bbox", "segm")
                    for n in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l"))
EVAL_METRICS = ("mIoU", "bbox", "segm")  # evaluation.metric: 'mIoU' (segmentation) or 'bbox' / 'segm' (detection)


def _metric(value, where):
    """``evaluation.metric``: one name or a non-empty list of names of EVAL_METRICS."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"recipe: {where} must not be empty")
        return [_t(str, choices=EVAL_METRICS)(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _t(str, choices=EVAL_METRICS)(value, where)


def _steps(value, where):
    """``lr_config.step``: a positive period or an increasing list of positive milestones (iterations)."""
    if isinstance(value, (list, tuple)):
        items = [_t(int, minimum=1)(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if not items or items != sorted(items):
            raise ConfigError(f"recipe: {where} must be a non-empty increasing list of iterations, got {value!r}")
        return items
    return _t(int, minimum=1)(value, where)

SECTIONS: dict[str, dict] = {
    "optimizer": {
        "type": _t(str, choices=("AdamW",)), "lr": _t(float, minimum=0, exclusive=True),
        "betas": _seq(_t(float), length=2), "eps": _t(float, minimum=0, exclusive=True),
        "weight_decay": _t(float, minimum=0),
        "constructor": _t(str, type(None), choices=(None, "LayerDecayOptimizerConstructor")),
        "paramwise_cfg": _dict({"num_layers": POS_INT, "layer_decay_rate": _t(float, minimum=0, exclusive=True),
                                "custom_keys": _custom_keys, "official_wd_quirk": _t(bool)}, allow_none=True)},
    "optimizer_config": {
        "grad_clip": _dict({"max_norm": _t(float, minimum=0, exclusive=True), "norm_type": _t(int, float,
                                                                                              choices=(2, 2.0))},
                           allow_none=True),
        "max_nonfinite_steps": _t(int, minimum=0)},  # engine/faults.py: consecutive NaN/Inf steps skipped
    "lr_config": {  # the schedules (engine/schedule.py) implement exactly these; by iteration only
        "policy": _t(str, choices=("poly", "step")), "warmup": _t(str, type(None), choices=(None, "linear")),
        "warmup_iters": _t(int, minimum=0), "warmup_ratio": _t(float, minimum=0), "power": _t(float),
        "min_lr": _t(float, type(None), minimum=0), "by_epoch": _t(bool),  # True: EpochBasedRunner only
        "step": _steps, "gamma": _t(float, minimum=0, exclusive=True)},  # step: milestones (or period) in iterations
    # The engine counts iterations. runner=dict(type='EpochBasedRunner', max_epochs=N) (EPOCH_RUNNER) is accepted for
    # detection recipes only: the detection task rewrites every epoch-based value in iterations before training
    # (tasks/detection.py: epochs_to_iterations).
    "runner": {"type": _t(str, choices=("IterBasedRunner", "EpochBasedRunner")), "max_iters": POS_INT},
    "checkpoint_config": {"by_epoch": _t(bool), "interval": POS_INT, "max_keep_ckpts": _max_keep,
                          "save_last": _t(bool, choices=(True,))},  # the engine always saves the last iteration
    "evaluation": {
        "interval": POS_INT, "metric": _metric,
        "save_best": _t(str, type(None), choices=(None, "auto", *METRICS, *DET_METRICS)),
        "img_scale": _seq(_t(int, minimum=1), length=2, allow_none=True),
        "size_divisor": _t(int, type(None), minimum=1), "img_ratios": _seq(_t(float, minimum=0, exclusive=True),
                                                                           allow_none=True),
        "flip": _t(bool),
        "ms_resize": _dict({"type": _t(str, choices=("Resize", "SETR_Resize")), "crop_size": PAIR,
                            "keep_ratio": _t(bool), "setr_multi_scale": _t(bool)}, allow_none=True),
        "pad_short_side": _dict({"size": POS_INT, "before_normalize": _t(bool)}, allow_none=True)},
    "log_config": {"interval": POS_INT},
    "fp16": {"loss_scale": _loss_scale},
    "vis": {"num_images": _t(int, minimum=0)},
}
EPOCH_RUNNER = {"type": _t(str, choices=("EpochBasedRunner",)), "max_epochs": POS_INT}
SCALARS = {"load_from": _t(str, type(None)), "resume_from": _t(str, type(None)), "seed": _t(int, type(None)),
           "work_dir": _t(str, type(None)), "global_batch_size": _t(int, type(None), minimum=1)}
REQUIRED = ("model", "data", "optimizer", "lr_config", "runner")


# model.type of the detection task (the rest: segmentation)
DETECTOR_TYPES = ("MaskRCNN", "HybridTaskCascade", "HybridTaskCascadeAug")


def _check_metrics(cfg) -> None:
    """``evaluation.metric`` / ``save_best`` must be metrics of the recipe's task (by ``model.type``)."""
    ev = cfg.get("evaluation") or {}
    detection = (cfg.get("model") or {}).get("type") in DETECTOR_TYPES
    names, best = (("bbox", "segm"), DET_METRICS) if detection else (("mIoU",), METRICS)
    metric = ev.get("metric", [])
    for m in [metric] if isinstance(metric, str) else metric:
        if m not in names:
            raise ConfigError(f"recipe: evaluation.metric={metric!r}: a {'detection' if detection else 'segmentation'}"
                              f" recipe evaluates {' / '.join(repr(n) for n in names)}")
    if ev.get("save_best") not in (None, "auto", *best):
        raise ConfigError(f"recipe: evaluation.save_best={ev['save_best']!r} is not a metric of this task; choose "
                          f"'auto' or one of {list(best)}")


def _check_runner(cfg) -> None:
    """``max_iters`` (IterBasedRunner) / ``max_epochs`` (EpochBasedRunner, detection only) is required; ``by_epoch``
    schedules and checkpoints only with an epoch-based runner."""
    runner = cfg["runner"]
    epochs = runner.get("type", "IterBasedRunner") == "EpochBasedRunner"
    need = "max_epochs" if epochs else "max_iters"
    if need not in runner:
        raise ConfigError(f"recipe: runner.{need} is required for runner.type={runner.get('type', 'IterBasedRunner')!r}")
    if epochs and (cfg.get("model") or {}).get("type") not in DETECTOR_TYPES:
        raise ConfigError("recipe: runner.type='EpochBasedRunner' is supported for detection recipes only; use "
                          "runner=dict(type='IterBasedRunner', max_iters=N)")
    for section in ("lr_config", "checkpoint_config"):
        if (cfg.get(section) or {}).get("by_epoch") is True and not epochs:
            raise ConfigError(f"recipe: {section}.by_epoch=True needs runner.type='EpochBasedRunner' (the engine "
                              "counts iterations; give values in iterations with by_epoch=False)")


POLICY_ONLY_KEYS = {"poly": ("power",), "step": ("step", "gamma")}  # lr_config keys only one policy uses


def _check_policy(lr_config) -> None:
    """``lr_config.policy='step'`` needs ``step``; a key of the other policy is refused."""
    policy = lr_config.get("policy", "poly")
    if policy == "step" and "step" not in lr_config:
        raise ConfigError("recipe: lr_config.policy='step' needs lr_config.step (milestones in iterations, or one "
                          "period)")
    for other, keys in POLICY_ONLY_KEYS.items():
        for key in keys:
            if other != policy and key in lr_config:
                raise ConfigError(f"recipe: lr_config.{key} is not a key of policy={policy!r} (it belongs to "
                                  f"policy={other!r})")


def check_section(node, spec: dict, where: str) -> None:
    check_keys(node, spec, where)
    for key, check in spec.items():
        if key in node:
            check(node[key], f"{where}.{key}")


def validate_sections(cfg) -> None:
    """Raise :class:`ConfigError` on an unknown top-level key, or an unknown / ill-typed key of an engine section."""
    unknown = sorted(k for k in cfg if k not in TOP_LEVEL_KEYS and not str(k).startswith("_"))
    if unknown:
        raise ConfigError(f"recipe: unknown top-level key(s) {unknown}; valid keys: "
                          f"{', '.join(sorted(TOP_LEVEL_KEYS))}")
    for required in REQUIRED:
        if cfg.get(required) is None:
            raise ConfigError(f"recipe: missing required section {required!r}")
    for name, spec in SECTIONS.items():
        if name == "runner" and (cfg.get("runner") or {}).get("type") == "EpochBasedRunner":
            spec = EPOCH_RUNNER
        if cfg.get(name) is not None:
            check_section(cfg[name], spec, name)
    _check_runner(cfg)
    for name, check in SCALARS.items():
        if name in cfg:
            check(cfg[name], name)
    _check_policy(cfg["lr_config"])
    _check_metrics(cfg)
    opt = cfg["optimizer"]
    if "lr" not in opt:
        raise ConfigError("recipe: optimizer.lr is required")
    if opt.get("constructor") == "LayerDecayOptimizerConstructor":
        pw = opt.get("paramwise_cfg") or {}
        if "num_layers" not in pw or "layer_decay_rate" not in pw:
            raise ConfigError("recipe: LayerDecayOptimizerConstructor needs optimizer.paramwise_cfg with "
                              "num_layers and layer_decay_rate")
    check_section(cfg["data"], {"samples_per_gpu": POS_INT, "workers_per_gpu": _t(int, minimum=0),
                                "train": _t(Mapping), "val": _t(Mapping, type(None)),
                                "test": _t(Mapping, type(None))}, "data")  # test: launch/eval.py's split
    if "samples_per_gpu" not in cfg["data"]:
        raise ConfigError("recipe: data.samples_per_gpu is required")
    if cfg["data"].get("train") is None:
        raise ConfigError("recipe: data.train is required")
