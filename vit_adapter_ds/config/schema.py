"""What a recipe may contain. Unknown keys are rejected with the list of valid ones.

Fixed sections (optimizer, lr_config, runner, ...) are checked against the tables below; sections that are
constructor arguments (``model.backbone``, heads, data loaders) are checked against the signature of the class or
function that will receive them, when that code is importable.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping

from .errors import ConfigError

# Top-level keys. The helper variables of the official configs (crop_size, norm_cfg, ...) are allowed too, as are
# names starting with "_".
TOP_LEVEL_KEYS = {
    "model", "data", "optimizer", "optimizer_config", "lr_config", "runner", "checkpoint_config", "evaluation",
    "log_config", "fp16", "load_from", "resume_from", "seed", "work_dir", "global_batch_size", "vis", "sync_bn",
    # helper variables of the official configs
    "pretrained", "crop_size", "norm_cfg", "img_norm_cfg", "dataset_type", "data_root", "num_classes",
}

SECTIONS = {
    "optimizer": {"type", "lr", "betas", "eps", "weight_decay", "constructor", "paramwise_cfg"},
    "optimizer.paramwise_cfg": {"num_layers", "layer_decay_rate", "custom_keys", "official_wd_quirk"},
    "optimizer_config": {"grad_clip"},
    "optimizer_config.grad_clip": {"max_norm", "norm_type"},
    "lr_config": {"policy", "warmup", "warmup_iters", "warmup_ratio", "power", "min_lr", "by_epoch"},
    "runner": {"type", "max_iters"},
    "checkpoint_config": {"by_epoch", "interval", "max_keep_ckpts"},
    "evaluation": {"interval", "metric", "save_best", "img_scale", "size_divisor", "img_ratios", "flip", "ms_resize"},
    "evaluation.ms_resize": {"type", "crop_size", "keep_ratio", "setr_multi_scale"},
    "log_config": {"interval"},
    "fp16": {"loss_scale"},
    "vis": {"num_images"},
    "data": {"samples_per_gpu", "workers_per_gpu", "train", "val"},
    "model": {"type", "pretrained", "backbone", "decode_head", "auxiliary_head", "train_cfg", "test_cfg", "init_cfg"},
    "model.test_cfg": {"mode", "crop_size", "stride", "panoptic_on", "semantic_on", "instance_on", "max_per_image",
                       "iou_thr", "filter_low_score"},
}
CHOICES = {
    "optimizer.type": ("AdamW",),
    "optimizer.constructor": (None, "LayerDecayOptimizerConstructor"),
    "lr_config.policy": ("poly",),
    "lr_config.warmup": (None, "linear"),
    "lr_config.by_epoch": (False,),
    "runner.type": ("IterBasedRunner",),
    "checkpoint_config.by_epoch": (False,),
    "evaluation.metric": ("mIoU",),
    "evaluation.ms_resize.type": ("Resize", "SETR_Resize"),
    "model.type": ("EncoderDecoder", "EncoderDecoderMask2Former"),
    "model.backbone.type": ("ViTAdapter", "BEiTAdapter"),
    "model.test_cfg.mode": ("whole", "slide"),
}
POSITIVE_INTS = ("runner.max_iters", "checkpoint_config.interval", "evaluation.interval", "log_config.interval",
                 "data.samples_per_gpu")
# Official head keys the engine translates before building (norm_cfg -> norm, loss_decode -> segmentor losses).
HEAD_TRANSLATED = {"norm_cfg", "loss_decode"}
# Official data keys the engine translates (img_norm_cfg -> mean/std).
DATA_TRANSLATED = {"img_norm_cfg"}
# Keys supplied by the engine itself (not by the recipe) when it calls the data loader builders.
LOADER_ENGINE_ARGS = {"shard_dir", "batch_size", "num_workers", "seed", "rank", "world_size"}
PENDING_HEADS = {"EncoderDecoderMask2Former": "Mask2Former (its own issue)"}


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


class _AttrDict(dict):
    """dict with attribute access (validation helpers use ``cfg.model`` like on an mmengine Config)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    @classmethod
    def wrap(cls, d):
        if isinstance(d, dict):
            return cls({k: cls.wrap(v) for k, v in d.items()})
        return d


def _check_keys(where: str, node, allowed: set) -> None:
    if node is None:
        return
    if not isinstance(node, Mapping):
        raise ConfigError(f"recipe: {where} must be a dict, got {type(node).__name__}")
    unknown = sorted(k for k in node if k not in allowed and k != "_delete_")
    if unknown:
        raise ConfigError(f"recipe: unknown key(s) {unknown} in {where}; valid keys: {', '.join(sorted(allowed))}")


def _signature_keys(fn) -> tuple[set, bool]:
    """Parameter names of ``fn`` and whether it takes **kwargs."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def check_kwargs(where: str, node: Mapping, fn, skip=("type", "_delete_"), engine_supplied=()) -> None:
    """Reject keys of ``node`` that ``fn`` does not accept (or that the engine supplies itself)."""
    names, has_var_kw = _signature_keys(fn)
    supplied = sorted(k for k in node if k in engine_supplied and k != "shard_dir")
    if supplied:
        raise ConfigError(f"recipe: {where} must not set {supplied}: the engine sets them "
                          "(batch size: data.samples_per_gpu, workers: data.workers_per_gpu, seed: seed)")
    if has_var_kw:
        return
    allowed = names - set(engine_supplied) | {"shard_dir"} if engine_supplied else names
    unknown = sorted(k for k in node if k not in allowed and k not in skip)
    if unknown:
        raise ConfigError(f"recipe: unknown key(s) {unknown} in {where}; valid keys: {', '.join(sorted(allowed))}")


def _backbone_class(name):
    from ..models.backbones import BEiTAdapter, ViTAdapter
    return {"ViTAdapter": ViTAdapter, "BEiTAdapter": BEiTAdapter}[name]


def validate_recipe(cfg) -> None:
    """Raise ``ConfigError`` on unknown keys, bad choices or bad numbers anywhere in the recipe."""
    if hasattr(cfg, "to_dict"):  # mmengine Config -> plain nested dicts
        cfg = _AttrDict.wrap(cfg.to_dict())
    unknown = sorted(k for k in cfg if k not in TOP_LEVEL_KEYS and not k.startswith("_"))
    if unknown:
        raise ConfigError(f"recipe: unknown top-level key(s) {unknown}; valid keys: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    for required in ("model", "data", "optimizer", "lr_config", "runner"):
        if required not in cfg:
            raise ConfigError(f"recipe: missing required section {required!r}")
    for where, allowed in SECTIONS.items():
        node = _get(cfg, where)
        if node is not _MISSING:
            _check_keys(where, node, allowed)
    for where, choices in CHOICES.items():
        value = _get(cfg, where)
        if value is not _MISSING and value not in choices:
            raise ConfigError(f"recipe: {where}={value!r} is not supported; choose one of {list(choices)}")
    for where in POSITIVE_INTS:
        value = _get(cfg, where)
        if value is not _MISSING and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ConfigError(f"recipe: {where} must be a positive integer, got {value!r}")
    lr = _get(cfg, "optimizer.lr")
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ConfigError(f"recipe: optimizer.lr must be a positive number, got {lr!r}")
    gbs = cfg.get("global_batch_size")
    if gbs is not None and (not isinstance(gbs, int) or gbs <= 0):
        raise ConfigError(f"recipe: global_batch_size must be a positive integer or None, got {gbs!r}")
    pw = _get(cfg, "optimizer.paramwise_cfg")
    if _get(cfg, "optimizer.constructor") == "LayerDecayOptimizerConstructor":
        if pw is _MISSING or "num_layers" not in pw or "layer_decay_rate" not in pw:
            raise ConfigError("recipe: LayerDecayOptimizerConstructor needs optimizer.paramwise_cfg with "
                              "num_layers and layer_decay_rate")
    # constructor-argument sections
    backbone = cfg.model.get("backbone")
    if not isinstance(backbone, Mapping) or "type" not in backbone:
        raise ConfigError("recipe: model.backbone must be a dict with a 'type' (ViTAdapter or BEiTAdapter)")
    check_kwargs("model.backbone", backbone, _backbone_class(backbone["type"]))
    if "pretrained" in backbone and cfg.model.get("pretrained"):
        raise ConfigError("recipe: set pretrained weights either in model.pretrained or model.backbone.pretrained")
    _validate_heads(cfg)
    _validate_data(cfg)


def _validate_heads(cfg) -> None:
    if cfg.model.type in PENDING_HEADS:
        return  # head code pending: the keys are the official ones and are not checked further
    try:
        from ..models import heads as heads_pkg
    except ImportError:
        return
    if getattr(heads_pkg, "__file__", None) is None:  # heads not written yet (empty namespace package)
        return
    for section in ("decode_head", "auxiliary_head"):
        node = cfg.model.get(section)
        if node is None:
            continue
        cls = getattr(heads_pkg, str(node.get("type")), None)
        if cls is None:
            known = sorted(n for n in dir(heads_pkg) if n.endswith("Head"))
            raise ConfigError(f"recipe: model.{section}.type={node.get('type')!r} is unknown; available: {known}")
        check_kwargs(f"model.{section}", node, cls, skip=("type", "_delete_", *HEAD_TRANSLATED))


def _validate_data(cfg) -> None:
    try:
        from ..data.loader import TrainLoader, ValLoader
    except ImportError:
        return
    train_fn, val_fn = TrainLoader.__init__, ValLoader.__init__
    for section, fn in (("train", train_fn), ("val", val_fn)):
        node = cfg.data.get(section)
        if node is None:
            raise ConfigError(f"recipe: data.{section} is missing")
        if "shard_dir" not in node:
            raise ConfigError(f"recipe: data.{section}.shard_dir is missing")
        check_kwargs(f"data.{section}", node, fn, skip=("type", "_delete_", *DATA_TRANSLATED),
                     engine_supplied=LOADER_ENGINE_ARGS)
