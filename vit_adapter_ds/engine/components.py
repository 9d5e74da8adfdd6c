"""The real parts the trainer drives (see ``trainer.Components``): the segmentor, the shard loaders, layer-decay
parameter groups, the poly schedule and mIoU evaluation. Official recipe keys are translated here
(``img_norm_cfg`` -> loader mean/std; heads' ``norm_cfg`` / ``loss_decode`` are read by ``build_segmentor``)."""
from __future__ import annotations

import timm  # noqa: F401  (timm/torchvision before any DeepSpeed module construction, see the DeepSpeed notes)
import torch
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
    effect at the next batch: the underlying generator is restarted)."""

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
    from .optim import build_param_groups as groups
    opt = cfg.optimizer
    pw = opt.get("paramwise_cfg") or {}
    layer_decay = opt.get("constructor") == "LayerDecayOptimizerConstructor"
    return groups(model, base_lr=opt.lr, weight_decay=opt.weight_decay,
                  layer_decay_rate=pw.get("layer_decay_rate", 1.0) if layer_decay else 1.0,
                  num_layers=pw.get("num_layers", 0) if layer_decay else 0,
                  custom_keys=pw.get("custom_keys"), official_wd_quirk=pw.get("official_wd_quirk", True))


def lr_at(cfg, iteration: int) -> float:
    from .schedule import lr_at as schedule_lr
    lc = cfg.lr_config
    return schedule_lr(iteration, base_lr=cfg.optimizer.lr, max_iters=cfg.runner.max_iters, power=lc.power,
                       min_lr=lc.min_lr, warmup_iters=lc.warmup_iters if lc.get("warmup") else 0,
                       warmup_ratio=lc.warmup_ratio)


def evaluate(model, val_loader, cfg, dtype, num_vis):
    """mIoU over the validation shards (every sample once over all ranks; per-class areas all-reduced), with the
    recipe's test pipeline (keep-ratio resize to ``evaluation.img_scale``, ``size_divisor``) and ``test_cfg``."""
    from ..evaluation import IoUAccumulator
    from ..utils.vis import denormalize, triptych

    ev = cfg.get("evaluation") or {}
    norm = (cfg.data.val.get("img_norm_cfg") or {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]})
    acc = IoUAccumulator(num_classes(cfg), ignore_index=255)
    device = next(model.parameters()).device
    vis = []
    for batch in val_loader:
        img = batch["img"].to(device)
        img = img.to(dtype)
        gt = batch["gt_semantic_seg"].to(device)
        prob = model.aug_test(img, scales=[ev.get("img_scale")], flip=False, size_divisor=ev.get("size_divisor"),
                              out_size=tuple(gt.shape[-2:]))
        pred = prob.argmax(1)
        acc.update(pred, gt)
        if len(vis) < num_vis:
            vis.append(triptych(denormalize(batch["img"][0], norm["mean"], norm["std"]), gt[0].cpu().numpy(),
                                pred[0].cpu().numpy(), num_classes(cfg)))
    metrics = acc.compute()  # all-reduced over ranks
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) or torch.is_tensor(v) and v.numel() == 1}, vis


def default_components() -> Components:
    return Components(build_model=build_model, build_loaders=build_loaders, build_param_groups=build_param_groups,
                      lr_at=lr_at, evaluate=evaluate)
