"""Evaluation: exact (distributed) mIoU with mmseg semantics, dataset evaluation, prediction PNGs."""
from .evaluator import evaluate, evaluate_from_cfg
from .miou import IoUAccumulator, format_table, intersect_and_union, summarize
from .visualize import colorize, overlay, save_mask_png

__all__ = ["evaluate", "evaluate_from_cfg", "IoUAccumulator", "intersect_and_union", "summarize", "format_table",
           "colorize", "overlay", "save_mask_png"]
