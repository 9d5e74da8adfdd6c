"""mmdet 2.22's ExpMomentumEMAHook as engine/ema.py implements it: the update against mmdet's rule re-derived here in
float64, what is averaged, when evaluation sees the average (never under IterBasedRunner, at epoch ends of an
epoch-based recipe), the checkpoint state, and the recipe checks (custom_hooks, priority, ZeRO-3, step=[])."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.engine.ema import ExpMomentumEMAHook, build_hooks, check_custom_hooks

OFFICIAL = dict(type='ExpMomentumEMAHook', resume_from=None, momentum=0.0001, priority=49)  # the o365 recipes


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _perturb(model, k):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        model[1].running_mean.add_(0.25 * k)
        model[1].running_var.mul_(1.5)
        model[1].num_batches_tracked.add_(1)


def test_update_is_mmdets_rule_in_float64():
    """ema_{i+1} = (1 - m_i) ema_i + m_i w_{i+1}, m_i = (1 - 1e-4) exp(-(1 + i) / total_iter) + 1e-4, over every
    floating-point state-dict entry (BatchNorm statistics included, num_batches_tracked not)."""
    model = _model()
    hook = ExpMomentumEMAHook.from_config(dict(OFFICIAL, total_iter=3), "custom_hooks[0]")  # a fast decay
    hook.attach(model)
    ref = {k: v.double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    assert set(hook.names) == set(ref) and "1.num_batches_tracked" not in hook.names
    for i in range(4):
        _perturb(model, i)
        hook.after_train_iter(model, i)
        m = (1 - 0.0001) * math.exp(-(1 + i) / 3) + 0.0001
        for k in ref:
            ref[k] = (1 - m) * ref[k] + m * model.state_dict()[k].double()
    got = hook.state_dict()
    assert set(got) == {"ema_0_weight", "ema_0_bias", "ema_1_weight", "ema_1_bias", "ema_1_running_mean",
                        "ema_1_running_var"}  # mmdet's buffer names
    for k, v in ref.items():
        assert torch.allclose(got["ema_" + k.replace(".", "_")].double(), v, rtol=1e-6, atol=1e-7), k
        assert not torch.allclose(v, model.state_dict()[k].double()), k  # the average is not the weights
    assert hook.momentum_at(0) == pytest.approx(0.9999 * math.exp(-1 / 3) + 0.0001, rel=1e-15)


def test_interval_and_skip_buffers():
    model = _model()
    hook = ExpMomentumEMAHook(momentum=0.5, interval=2, skip_buffers=True)
    hook.attach(model)
    assert hook.names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    start = hook.state_dict()
    _perturb(model, 0)
    hook.after_train_iter(model, 0)  # (0 + 1) % 2 != 0: no update
    assert all(torch.equal(v, start[k]) for k, v in hook.state_dict().items())
    hook.after_train_iter(model, 1)
    m = 0.5 * math.exp(-2 / 2000) + 0.5
    w = model[0].weight.detach().double()
    assert torch.allclose(hook.state_dict()["ema_0_weight"].double(), (1 - m) * start["ema_0_weight"].double()
                          + m * w, rtol=1e-6)


def test_evaluation_weights_swap_only_at_epoch_ends():
    model = _model()
    iter_based = ExpMomentumEMAHook(momentum=0.3)
    epoch_based = ExpMomentumEMAHook(momentum=0.3, iters_per_epoch=3)
    for h in (iter_based, epoch_based):
        h.attach(model)
    for i in range(3):
        _perturb(model, i)
        for h in (iter_based, epoch_based):
            h.after_train_iter(model, i)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    avg = epoch_based.state_dict()
    # IterBasedRunner (the official recipes): mmcv never calls the hook's *_train_epoch swaps
    for done in (1, 2, 3, 500):
        with iter_based.evaluation_weights(model, done):
            assert all(torch.equal(v, raw[k]) for k, v in model.state_dict().items())
    with epoch_based.evaluation_weights(model, 2):  # mid-epoch
        assert all(torch.equal(v, raw[k]) for k, v in model.state_dict().items())
    with epoch_based.evaluation_weights(model, 3):  # end of epoch 1: the model is the average
        now = model.state_dict()
        for k in epoch_based.names:
            assert torch.equal(now[k], avg["ema_" + k.replace(".", "_")]), k
        assert torch.equal(now["1.num_batches_tracked"], raw["1.num_batches_tracked"])
    assert all(torch.equal(v, raw[k]) for k, v in model.state_dict().items())  # trained weights back, exactly
    assert all(torch.equal(v, avg[k]) for k, v in epoch_based.state_dict().items())  # the average untouched


def test_state_round_trip_and_mismatch():
    model = _model()
    a = ExpMomentumEMAHook(momentum=0.2)
    a.attach(model)
    _perturb(model, 1)
    a.after_train_iter(model, 0)
    b = ExpMomentumEMAHook(momentum=0.2)
    b.attach(model)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in b.state_dict().items())
    _perturb(model, 2)
    a.after_train_iter(model, 1)
    b.after_train_iter(model, 1)
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in b.state_dict().items())  # continues bitwise
    bad = dict(a.state_dict())
    bad.pop("ema_0_bias")
    with pytest.raises(RuntimeError, match="missing.*ema_0_bias"):
        b.load_state_dict(bad)


@pytest.mark.parametrize("hooks,msg", [
    ([dict(type='NumClassCheckHook')], "NumClassCheckHook.*not supported"),
    ([dict(OFFICIAL, priority=50)], r"custom_hooks\[0\].priority=50"),
    ([dict(OFFICIAL, priority='LOW')], "priority='LOW'"),
    ([dict(OFFICIAL, resume_from='x.pth')], r"custom_hooks\[0\].resume_from"),
    ([dict(OFFICIAL, momentum=1.5)], "momentum"),
    ([dict(OFFICIAL, warm_up=100)], r"custom_hooks\[0\].warm_up"),
    (dict(OFFICIAL), "must be a list"),
])
def test_bad_custom_hooks_are_refused(hooks, msg):
    with pytest.raises(ConfigError, match=msg):
        check_custom_hooks(hooks)


def test_zero3_is_refused_and_epoch_length_is_read():
    with pytest.raises(ConfigError, match="ZeRO stage 0, 1 or 2"):
        build_hooks({"custom_hooks": [OFFICIAL]}, 3)
    (hook,) = build_hooks({"custom_hooks": [OFFICIAL], "_epoch_conversion": {"iters_per_epoch": 7}}, 2)
    assert hook.momentum == 0.0001 and hook.total_iter == 2000 and hook.iters_per_epoch == 7
    assert build_hooks({}, 3) == []


def test_empty_step_list_is_mmcvs_constant_rate_after_warmup():
    from vit_adapter_ds.engine.schedule import step_lr_at

    for i in (0, 250, 499):  # mmcv linear warm-up: lr * (1 - (1 - i / 500) * (1 - 0.001))
        assert step_lr_at(i, 1e-4, [], warmup_iters=500, warmup_ratio=0.001) == pytest.approx(
            1e-4 * (1 - (1 - i / 500) * 0.999), rel=1e-12)
    assert step_lr_at(500, 1e-4, [], warmup_iters=500, warmup_ratio=0.001) == 1e-4
    assert step_lr_at(19999, 1e-4, [], warmup_iters=500, warmup_ratio=0.001) == 1e-4
