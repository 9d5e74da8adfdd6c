"""Detection recipes: Mask R-CNN 1x / 3x, HTC++ and Cascade Mask R-CNN (field for field the official mmdet configs,
the ``_ms`` files with the official test-time augmentation); ``synthetic_mask_rcnn.py`` / ``synthetic_htc.py`` /
``synthetic_cascade_mask_rcnn.py`` are the tiny CPU recipes.
``DETECTION_RECIPES`` maps a stem to a file; ``--config <stem>`` finds them like the segmentation recipes."""
from pathlib import Path

DETECTION_RECIPE_DIR = Path(__file__).resolve().parent
DETECTION_RECIPES = {p.stem: p for p in sorted(DETECTION_RECIPE_DIR.glob("*.py")) if not p.name.startswith("_")}
