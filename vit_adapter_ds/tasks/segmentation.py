"""Semantic segmentation (UperNet / Mask2Former segmentors): the segmentor, the shard loaders, mIoU evaluation."""
from __future__ import annotations

import timm  # noqa: F401  (timm/torchvision before any DeepSpeed module construction, see the DeepSpeed notes)
import torchvision  # noqa: F401

from ..config.keys import to_plain


class SemanticSegmentation:
    name = "semantic_segmentation"
    best_metric = "mIoU"

    def __init__(self, cfg):
        self.cfg = cfg
        self._num_classes = None

    def _model_cfg(self) -> dict:
        return to_plain(self.cfg.model)

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Build the model on the meta device (every model key checked by its table entry) and check the loader
        arguments; returns the meta model (the engine checks its optimizer groups on it)."""
        from ..data.datasets import dataset_class
        from ..models.registry import build_model

        model = build_model(self._model_cfg(), device="meta")
        self._num_classes = int(model.num_classes)
        data = to_plain(self.cfg.data)
        dataset_class(data, "train").check_config(data)
        return model

    # ------------------------------------------------------------------ parts
    @property
    def num_classes(self) -> int:
        """The segmentor's number of classes (what its head predicts, whatever the head calls it)."""
        if self._num_classes is None:
            from ..models.registry import build_model
            self._num_classes = int(build_model(self._model_cfg(), device="meta").num_classes)
        return self._num_classes

    def build_model(self, load_pretrained: bool = True):
        from ..models.registry import build_model
        return build_model(self._model_cfg(), load_pretrained=load_pretrained)

    def build_train_loader(self, rank: int, world_size: int, seed: int):
        from ..data.datasets import dataset_class
        data = to_plain(self.cfg.data)
        return dataset_class(data, "train").train_loader(data, rank=rank, world_size=world_size, seed=seed,
                                                         num_classes=self.num_classes)

    def build_val_loader(self, rank: int, world_size: int):
        from ..data.datasets import dataset_class
        data = to_plain(self.cfg.data)
        if data.get("val") is None:
            return None
        return dataset_class(data, "val").val_loader(data, rank=rank, world_size=world_size,
                                                     num_classes=self.num_classes)

    def forward_loss(self, model, batch, device, dtype) -> dict:
        img = batch["img"].to(device, non_blocking=True)
        img = img.to(dtype) if img.is_floating_point() else img
        return model(img, batch["gt_semantic_seg"].to(device, non_blocking=True))

    def evaluate(self, model, val_loader, dtype, num_vis: int):
        """mIoU over the validation shards (every sample once over all ranks, per-class areas all-reduced) with the
        recipe's test pipeline."""
        from ..evaluation import evaluate_from_cfg
        return evaluate_from_cfg(model, val_loader, self.cfg, dtype=dtype, num_vis=num_vis,
                                 num_classes=self.num_classes)
