"""Fidelity against the OFFICIAL ViT-Adapter implementation (github.com/czczup/ViT-Adapter).

The goldens in tests/parity/goldens were produced by running the official backbone code (outside this repo, see
tests/parity/make_goldens.py) with seeded weights on a seeded input, including one backward pass of a fixed scalar
loss. Here our ViTAdapter / BEiTAdapter get the same weights (same key names, same seeded values) and input, and
every output subset, input gradient and parameter gradient must agree to a relative L2 error of 1e-5 (float32, CPU).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from parity.harness import compare, run_case
from parity.seeded_state import load_seeded, named_shapes
from parity.variants import TRAIN_VARIANTS, VARIANTS, grad_keys
from vit_adapter_ds.models.backbones import BEiTAdapter, ViTAdapter

GOLDENS = Path(__file__).parent / "parity" / "goldens"
TOL = 1e-5


def _params():
    for name in list(VARIANTS) + list(TRAIN_VARIANTS):
        slow = VARIANTS[TRAIN_VARIANTS.get(name, name)]["slow"]
        yield pytest.param(name, marks=[pytest.mark.slow] if slow else [], id=name)


def _load_golden(name: str) -> dict:
    path = GOLDENS / f"{name}.pt"
    if not path.exists():
        pytest.fail(f"golden {path} is missing; regenerate it with tests/parity/make_goldens.py")
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", list(_params()))
def test_matches_official(name):
    golden = _load_golden(name)
    base = TRAIN_VARIANTS.get(name, name)
    cfg = VARIANTS[base]
    assert golden["kwargs"] == cfg["kwargs"] and golden["input_shape"] == list(cfg["input"]), \
        "the variant table changed since the golden was generated; regenerate the goldens"
    cls = BEiTAdapter if cfg["official"].endswith("beit") else ViTAdapter
    torch.manual_seed(0)
    model = cls(task=cfg["task"], **cfg["kwargs"])
    ours = [f"{k}:{list(s)}:{str(d).replace('torch.', '')}" for k, (s, d) in named_shapes(model).items()]
    assert sorted(ours) == sorted(golden["state_keys"]), (
        f"state-dict keys differ from the official model: missing {sorted(set(golden['state_keys']) - set(ours))[:5]}, "
        f"unexpected {sorted(set(ours) - set(golden['state_keys']))[:5]}")
    load_seeded(model, golden["seed"])
    model.train(golden["train"])
    result = run_case(model, cfg["input"], golden["seed"], grad_keys(base), golden["subset"])
    errs = compare(result, golden["result"])
    worst = max(errs, key=errs.get)
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v <= TOL}
    assert not bad, f"{name}: relative L2 error above {TOL} for {bad} (worst {worst})"
