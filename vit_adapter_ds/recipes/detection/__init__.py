"""Detection recipes (Mask R-CNN 3x, field for field the official mmdet configs; ``synthetic_mask_rcnn.py`` is the
tiny CPU recipe). They live in this sub-folder until the recipe schema / engine know the detection task (the
top-level ``RECIPES`` table is validated as segmentation); ``DETECTION_RECIPES`` maps a stem to a file."""
from pathlib import Path

DETECTION_RECIPE_DIR = Path(__file__).resolve().parent
DETECTION_RECIPES = {p.stem: p for p in sorted(DETECTION_RECIPE_DIR.glob("*.py")) if not p.name.startswith("_")}
