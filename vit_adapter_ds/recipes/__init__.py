"""Training recipes (mmseg-style Python config files, loaded with ``vit_adapter_ds.config.load_recipe``).

Each file reproduces one official ViT-Adapter configuration field for field (docs/official-architecture.md §4); ``synthetic_quickstart.py``
is the tiny built-in recipe used when ``launch/train.py`` gets no ``--config``. ``RECIPES`` maps a short name to a
file so ``--config upernet_deit_adapter_tiny_512_160k_ade20k`` works without a path.

``PAPER_RECIPES`` are the recipes of results the paper reports without an official config (Semantic FPN + ViT-Adapter
T/S/B, arXiv 2205.08534 Table 3): each header says which value comes from the paper and which from the settings it
refers to. They are in ``RECIPES`` but are no official configuration.
"""
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent
RECIPES = {p.stem: p for p in sorted(RECIPE_DIR.glob("*.py")) if not p.name.startswith("_")}
QUICKSTART = RECIPE_DIR / "synthetic_quickstart.py"
PAPER_RECIPES = frozenset({"fpn_deit_adapter_tiny_512_80k_ade20k", "fpn_deit_adapter_small_512_80k_ade20k",
                           "fpn_deit_adapter_base_512_80k_ade20k"})
