"""The real parts the trainer drives (see ``trainer.Components``): the segmentor, the shard loaders, layer-decay
parameter groups, the poly schedule and mIoU evaluation. Official recipe keys are translated here
(``img_norm_cfg`` -> loader mean/std; heads' ``norm_cfg`` / ``loss_decode`` are read by ``build_segmentor``)."""
from __future__ import annotations

import timm  # noqa: F401  (timm/torchvision before any DeepSpeed module construction, see the DeepSpeed notes)
import torchvision  # noqa: F401

from .trainer import Components


def _mean_std(section) -> dict:
    norm = section.get("img_norm_cfg")
    return {"mean": tuple(norm["mean"]), "std": tuple(norm["std"])} if norm else {}


def build_model(cfg):
    from ..models.segmentor import build_segmentor
    return build_segmentor(cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model))


def num_classes(cfg) -> int:
    return int(cfg.model.decode_head.num_classes)


def build_loaders(cfg, rank, world_size, seed):
    from ..data import build_train_loader, build_val_loader

    train_cfg = {k: v for k, v in dict(cfg.data.train).items() if k != "img_norm_cfg"}
    train = build_train_loader(batch_size=cfg.data.samples_per_gpu, num_workers=cfg.data.get("workers_per_gpu", 0),
                               seed=seed, rank=rank, world_size=world_size, num_classes=num_classes(cfg),
                               **_mean_std(cfg.data.train), **train_cfg)
    val = None
    if cfg.data.get("val"):
        val_cfg = {k: v for k, v in dict(cfg.data.val).items() if k != "img_norm_cfg"}
        val = build_val_loader(rank=rank, world_size=world_size, num_workers=0, num_classes=num_classes(cfg),
                               **_mean_std(cfg.data.val), **val_cfg)
    return iter(_Resumable(train)), val


class _Resumable:
    """``iter(TrainLoader)`` as an iterator that keeps ``state_dict()`` / ``load_state_dict()`` (a loaded state takes
    effect at the next batch: the underlying generator is restarted). The loader never draws from the global torch
    RNG (its DataLoader has a private generator), so restarting it does not shift the model's dropout stream."""

    def __init__(self, loader):
        self.loader = loader
        self._it = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = iter(self.loader)
        return next(self._it)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)
        self._it = None


def build_param_groups(model, cfg):
    """Layer-decay (or custom_keys) groups of the recipe; ``optimizer.paramwise_cfg.official_wd_quirk`` (default
    True) keeps the official weight decay on pos_embed/cls_token/level_embed/rel-pos tables."""
    from .optim import param_groups_from_cfg
    opt = cfg.optimizer.to_dict() if hasattr(cfg.optimizer, "to_dict") else dict(cfg.optimizer)
    pw = dict(opt.get("paramwise_cfg") or {})
    quirk = bool(pw.pop("official_wd_quirk", True))
    opt["paramwise_cfg"] = pw
    return param_groups_from_cfg(model, {"optimizer": opt}, official_wd_quirk=quirk)


def lr_at(cfg, iteration: int) -> float:
    from .schedule import lr_from_cfg
    return lr_from_cfg(cfg, iteration)


def evaluate(model, val_loader, cfg, dtype, num_vis):
    """mIoU over the validation shards (every sample once over all ranks, per-class areas all-reduced) with the
    recipe's test pipeline; the evaluation package's hook."""
    from ..evaluation import evaluate_from_cfg
    return evaluate_from_cfg(model, val_loader, cfg, dtype=dtype, num_vis=num_vis)


def default_components() -> Components:
    return Components(build_model=build_model, build_loaders=build_loaders, build_param_groups=build_param_groups,
                      lr_at=lr_at, evaluate=evaluate)
