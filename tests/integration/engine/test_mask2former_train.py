"""The tiny Mask2Former recipe (synthetic_mask2former) trains on synthetic samples: the loss falls and the
predictions beat chance on the training images (single process, plain AdamW with the recipe's layer decay)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_adapter_ds.config.keys import to_plain
from vit_adapter_ds.config.loader import load_recipe
from vit_adapter_ds.data.synthetic import generate_sample
from vit_adapter_ds.engine.optim import param_groups_from_cfg
from vit_adapter_ds.models.segmentor_mask2former import EncoderDecoderMask2Former

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def _batch(seed: int, n: int = 4):
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for _ in range(n):
        img, label, _ = generate_sample(rng, size=(128, 128))
        imgs.append(torch.from_numpy((img.astype(np.float32) - MEAN) / STD).permute(2, 0, 1))
        labels.append(torch.from_numpy(label.astype(np.int64)))
    return torch.stack(imgs), torch.stack(labels)


@pytest.mark.slow
def test_tiny_mask2former_trains_on_synthetic_data():
    cfg = load_recipe("synthetic_mask2former")
    torch.manual_seed(0)
    model = EncoderDecoderMask2Former.from_config(to_plain(cfg.model))
    opt = torch.optim.AdamW(param_groups_from_cfg(model, cfg), betas=(0.9, 0.999))
    data = [_batch(i) for i in range(2)]
    model.train()
    history = []
    for step in range(24):
        img, label = data[step % 2]
        losses = model(img, label)
        assert set(losses) >= {"loss", "loss_cls", "loss_mask", "loss_dice", "d0.loss_cls", "d1.loss_dice"}
        assert torch.allclose(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))
        opt.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(losses["loss"].item())
    assert np.isfinite(history).all()
    assert np.mean(history[-4:]) < 0.8 * np.mean(history[:4])
    model.eval()
    img, label = data[0]
    pred = model.predict(img).argmax(1)
    valid = label != 255
    ious = []
    for c in label[valid].unique().tolist():
        inter = ((pred == c) & (label == c) & valid).sum().item()
        union = (((pred == c) | (label == c)) & valid).sum().item()
        ious.append(inter / union)
    # predicting the majority class everywhere gives about 0.6 / (classes present) ~ 0.09; measured: 0.27
    assert np.mean(ious) > 0.18, ious
