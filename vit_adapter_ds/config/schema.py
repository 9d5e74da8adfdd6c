"""What the engine-level sections of a recipe may contain: every key of every section, its type and its range.

The ``model`` and ``data`` sections are not described here: the task validates them by building the model on the
meta device (each table entry's ``from_config`` checks its own keys) and by checking the loader arguments
(:mod:`vit_adapter_ds.tasks`), so the validator and the builder can never disagree. This module imports no model
code.
"""
from __future__ import annotations

from collections.abc import Mapping

from .errors import ConfigError
from .keys import Check, Section, check_type, check_value, parse, seq

# Top-level keys. The helper variables of the official configs (crop_size, norm_cfg, ...) are allowed too (their
# effect is checked where they are used), as are names starting with "_".
SECTION_KEYS = ("model", "data", "optimizer", "optimizer_config", "lr_config", "runner", "checkpoint_config",
                "evaluation", "log_config", "fp16", "vis")
SCALAR_KEYS = ("load_from", "resume_from", "seed", "work_dir", "global_batch_size", "custom_hooks", "workflow")
HELPER_KEYS = ("pretrained", "crop_size", "norm_cfg", "img_norm_cfg", "dataset_type", "data_root", "num_classes",
               "img_scale", "train_pipeline", "test_pipeline",
               "num_stages", "num_proposals", "NUM_CLASSES", "drop_path_rate", "file_client_args",
               # the Mask2Former panoptic recipe's: used in model / runner / checkpoint_config / evaluation
               "num_things_classes", "num_stuff_classes", "max_iters", "interval", "dynamic_intervals")
TOP_LEVEL_KEYS = set(SECTION_KEYS) | set(SCALAR_KEYS) | set(HELPER_KEYS)
TOP_LEVEL_KEYS.add("find_unused_parameters")  # mmdet's DDP flag (ATSS / GFL): a bool, see SCALARS


# ----------------------------------------------------------------------------------------------- value checkers
# The rules are those of :mod:`.keys`, the vocabulary every family uses (Check: a checked optional value; seq: a
# list; Section: a nested dict, here one that may be None); the custom checks below are rules ``(value, where)``.
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
        parse(mult, {"lr_mult": Check(float, minimum=0), "decay_mult": Check(float, minimum=0)}, f"{where}.{name}")
    return value


def _loss_scale(value, where):
    if isinstance(value, Mapping):
        parse(value, {"init_scale": Check(float, minimum=0, exclusive=True), "mode": Check(str),
                      "scale_factor": Check(float), "growth_interval": Check(int)}, where)
        return value
    if value == "dynamic":
        return value
    return check_value(value, float, where, minimum=0, exclusive=True)


def _custom_hooks(value, where):
    """``custom_hooks``: a list of ``dict(type=...)``; which hooks and keys the engine runs is checked by
    :func:`vit_adapter_ds.engine.ema.check_custom_hooks` (``launch/train.py``, before any process starts)."""
    if value is None:
        return value
    if not isinstance(value, (list, tuple)) or not all(isinstance(h, Mapping) and isinstance(h.get("type"), str)
                                                       for h in value):
        raise ConfigError(f"recipe: {where} must be a list of dict(type=...) hooks, got {value!r}")
    return value


POS_INT = Check(int, minimum=1)
PAIR = seq(Check(int, minimum=1), length=2)
METRICS = ("mIoU", "aAcc", "mAcc", "mDice")  # segmentation (evaluation/miou.py); mDice: mmseg's, CHASE_DB1 recipes
# detection (evaluation/coco.py): '<bbox|segm>_<name>' for the COCO summary names
DET_METRICS = tuple(f"{t}_{n}" for t in ("bbox", "segm")
                    for n in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l"))
# evaluation.metric: 'mIoU' / 'mDice' (segmentation: both are always computed) or 'bbox' / 'segm' (detection)
# panoptic (evaluation/panoptic.py, mmdet's CocoPanopticDataset.evaluate_pan_json): all / things / stuff
PAN_METRICS = tuple(f"{m}{s}" for s in ("", "_th", "_st") for m in ("PQ", "SQ", "RQ"))
EVAL_METRICS = ("mIoU", "mDice", "bbox", "segm", "PQ")


def _dynamic_intervals(value, where):
    """``evaluation.dynamic_intervals`` (mmdet's EvalHook): a list of ``(milestone, interval)`` pairs of positive
    iterations, milestones increasing; from iteration ``milestone`` on (1-based count of finished iterations) the
    evaluation interval is ``interval`` (:func:`eval_interval_at`)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"recipe: {where} must be a list of (milestone, interval) pairs, got {value!r}")
    pairs = []
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(f"recipe: {where}[{i}] must be a (milestone, interval) pair, got {pair!r}")
        pairs.append((check_value(pair[0], int, f"{where}[{i}][0]", minimum=1),
                      check_value(pair[1], int, f"{where}[{i}][1]", minimum=1)))
    milestones = [m for m, _ in pairs]
    if milestones != sorted(set(milestones)):
        raise ConfigError(f"recipe: {where} milestones must be strictly increasing, got {value!r}")
    return pairs


def eval_interval_at(done: int, interval: int, dynamic_intervals=()) -> int:
    """The evaluation interval after ``done`` finished iterations: mmdet's ``EvalHook._decide_interval`` (the
    interval of the last ``(milestone, interval)`` pair with ``milestone <= done``, else ``interval``)."""
    current = int(interval)
    for milestone, value in dynamic_intervals or ():
        if int(milestone) <= done:
            current = int(value)
    return current


def _log_hooks(value, where):
    """``log_config.hooks``: mmcv's logger hooks; the engine writes its text log (and JSON lines) itself, so only
    ``TextLoggerHook`` (by iteration) is accepted."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"recipe: {where} must be a list of dict(type=...) logger hooks, got {value!r}")
    for i, hook in enumerate(value):
        parse(hook, {"type": Check(str, choices=("TextLoggerHook",)), "by_epoch": Check(bool, choices=(False,))},
              f"{where}[{i}]")
    return value


def _workflow(value, where):
    """``workflow`` (mmcv's runner phases): only ``[('train', n)]``; with one train phase the IterBasedRunner just
    trains ``runner.max_iters`` iterations (``n`` changes nothing). A ``('val', n)`` phase (validation losses) is
    not run by the engine: it evaluates the metrics of ``evaluation`` instead."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"recipe: {where} must be a list of (phase, iterations) pairs, got {value!r}")
    for i, phase in enumerate(value):
        if not isinstance(phase, (list, tuple)) or len(phase) != 2:
            raise ConfigError(f"recipe: {where}[{i}] must be a (phase, iterations) pair, got {phase!r}")
        check_value(phase[1], int, f"{where}[{i}][1]", minimum=1)
    if len(value) != 1 or value[0][0] != "train":
        raise ConfigError(f"recipe: {where}={value!r} is not supported: only [('train', n)] (the engine has no "
                          "validation-loss phase; its evaluation is the `evaluation` section's metrics)")
    return value


def _metric(value, where):
    """``evaluation.metric``: one name or a non-empty list of names of EVAL_METRICS."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"recipe: {where} must not be empty")
        return [check_value(v, str, f"{where}[{i}]", choices=EVAL_METRICS) for i, v in enumerate(value)]
    return check_value(value, str, where, choices=EVAL_METRICS)


def _steps(value, where):
    """``lr_config.step``: a positive period or an increasing list of positive milestones (iterations); an empty
    list is mmcv's constant rate after the warm-up (the HTC++ Objects365 -> COCO recipes' ``step=[]``)."""
    if isinstance(value, (list, tuple)):
        items = [check_value(v, int, f"{where}[{i}]", minimum=1) for i, v in enumerate(value)]
        if items != sorted(items):
            raise ConfigError(f"recipe: {where} must be an increasing list of iterations, got {value!r}")
        return items
    return check_value(value, int, where, minimum=1)

SECTIONS: dict[str, dict] = {
    "optimizer": {
        "type": Check(str, choices=("AdamW",)), "lr": Check(float, minimum=0, exclusive=True),
        "betas": seq(Check(float), length=2), "eps": Check(float, minimum=0, exclusive=True),
        "weight_decay": Check(float, minimum=0),
        "constructor": Check(str, type(None), choices=(None, "LayerDecayOptimizerConstructor")),
        "paramwise_cfg": Section({"num_layers": POS_INT, "layer_decay_rate": Check(float, minimum=0, exclusive=True),
                                  "custom_keys": _custom_keys, "official_wd_quirk": Check(bool)}, allow_none=True)},
    "optimizer_config": {
        "grad_clip": Section({"max_norm": Check(float, minimum=0, exclusive=True),
                              "norm_type": Check(int, float, choices=(2, 2.0))}, allow_none=True),
        "max_nonfinite_steps": Check(int, minimum=0)},  # engine/faults.py: consecutive NaN/Inf steps skipped
    "lr_config": {  # the schedules (engine/schedule.py) implement exactly these; by iteration only
        "policy": Check(str, choices=("poly", "step", "CosineAnnealing")),
        "warmup": Check(str, type(None), choices=(None, "linear")), "min_lr_ratio": Check(float, minimum=0),
        "warmup_iters": Check(int, minimum=0),
        "warmup_ratio": Check(float, minimum=0), "power": Check(float),
        "warmup_by_epoch": Check(bool, choices=(False,)),  # mmcv's; the engine warms up by iteration
        "min_lr": Check(float, type(None), minimum=0), "by_epoch": Check(bool),  # True: EpochBasedRunner only
        "step": _steps, "gamma": Check(float, minimum=0, exclusive=True)},  # step: milestones (or period), iterations
    # The engine counts iterations. runner=dict(type='EpochBasedRunner', max_epochs=N) (EPOCH_RUNNER) is accepted for
    # detection recipes only: the detection task rewrites every epoch-based value in iterations before training
    # (tasks/detection.py: epochs_to_iterations).
    "runner": {"type": Check(str, choices=("IterBasedRunner", "EpochBasedRunner")), "max_iters": POS_INT},
    "checkpoint_config": {"by_epoch": Check(bool), "interval": POS_INT, "max_keep_ckpts": _max_keep,
                          "save_last": Check(bool, choices=(True,))},  # the engine always saves the last iteration
    "evaluation": {
        "interval": POS_INT, "metric": _metric, "dynamic_intervals": _dynamic_intervals,
        "save_best": Check(str, type(None), choices=(None, "auto", *METRICS, *DET_METRICS, *PAN_METRICS)),
        # the resize rule of a multi-scale test asked for on the command line (launch/eval.py --aug-test) when the
        # test pipeline has none; every other test setting is the test pipeline's (data.val / data.test.pipeline)
        "ms_resize": Section({"type": Check(str, choices=("Resize", "SETR_Resize")), "crop_size": PAIR,
                              "keep_ratio": Check(bool), "setr_multi_scale": Check(bool)}, allow_none=True)},
    "log_config": {"interval": POS_INT, "hooks": _log_hooks},
    "fp16": {"loss_scale": _loss_scale},
    "vis": {"num_images": Check(int, minimum=0)},
}
EPOCH_RUNNER = {"type": Check(str, choices=("EpochBasedRunner",)), "max_epochs": POS_INT}
SCALARS = {"load_from": Check(str, type(None)), "resume_from": Check(str, type(None)),
           "seed": Check(int, type(None)), "work_dir": Check(str, type(None)),
           # DDP's flag for parameters without a gradient; DeepSpeed reduces every parameter (zeros for those)
           "find_unused_parameters": Check(bool),
           "global_batch_size": Check(int, type(None), minimum=1),
           "custom_hooks": _custom_hooks, "workflow": _workflow}
REQUIRED = ("model", "data", "optimizer", "lr_config", "runner")


def _check_runner(cfg) -> None:
    """``max_iters`` (IterBasedRunner) / ``max_epochs`` (EpochBasedRunner; which tasks support it is the task's
    ``epoch_runner``, checked by ``Task.check_engine_sections``) is required; ``by_epoch`` schedules and checkpoints
    only with an epoch-based runner."""
    runner = cfg["runner"]
    epochs = runner.get("type", "IterBasedRunner") == "EpochBasedRunner"
    need = "max_epochs" if epochs else "max_iters"
    if need not in runner:
        raise ConfigError(f"recipe: runner.{need} is required for runner.type={runner.get('type', 'IterBasedRunner')!r}")
    for section in ("lr_config", "checkpoint_config"):
        if (cfg.get(section) or {}).get("by_epoch") is True and not epochs:
            raise ConfigError(f"recipe: {section}.by_epoch=True needs runner.type='EpochBasedRunner' (the engine "
                              "counts iterations; give values in iterations with by_epoch=False)")


POLICY_ONLY_KEYS = {"poly": ("power",), "step": ("step", "gamma"),  # lr_config keys only one policy uses
                    "CosineAnnealing": ("min_lr_ratio",)}


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


# keys an older dialect of these recipes had, and where their value is now: refused with that pointer
MOVED_KEYS = {
    "evaluation": {k: "data.val.pipeline (and data.test.pipeline): the official test pipeline's MultiScaleFlipAug "
                      "(img_scale, img_ratios, flip), ResizeToMultiple(size_divisor) and PadShortSide(size) steps"
                   for k in ("img_scale", "size_divisor", "img_ratios", "flip", "pad_short_side")},
}


def _check_moved(cfg) -> None:
    for section, keys in MOVED_KEYS.items():
        for key, where in keys.items():
            if isinstance(cfg.get(section), Mapping) and key in cfg[section]:
                raise ConfigError(f"recipe: {section}.{key} is not a recipe key; the setting is in {where}, as in "
                                  "the official configs")


def validate_sections(cfg) -> None:
    """Raise :class:`ConfigError` on an unknown top-level key, or an unknown / ill-typed key of an engine section."""
    _check_moved(cfg)
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
            parse(cfg[name], spec, name)
    _check_runner(cfg)
    for name, rule in SCALARS.items():
        if name in cfg:
            rule(cfg[name], name)
    _check_policy(cfg["lr_config"])
    opt = cfg["optimizer"]
    if "lr" not in opt:
        raise ConfigError("recipe: optimizer.lr is required")
    if opt.get("constructor") == "LayerDecayOptimizerConstructor":
        pw = opt.get("paramwise_cfg") or {}
        if "num_layers" not in pw or "layer_decay_rate" not in pw:
            raise ConfigError("recipe: LayerDecayOptimizerConstructor needs optimizer.paramwise_cfg with "
                              "num_layers and layer_decay_rate")
    parse(cfg["data"], {"samples_per_gpu": POS_INT, "workers_per_gpu": Check(int, minimum=0),
                        "train": Check(Mapping), "val": Check(Mapping, type(None)),
                        "test": Check(Mapping, type(None))}, "data")  # test: launch/eval.py's split
    if "samples_per_gpu" not in cfg["data"]:
        raise ConfigError("recipe: data.samples_per_gpu is required")
    if cfg["data"].get("train") is None:
        raise ConfigError("recipe: data.train is required")
