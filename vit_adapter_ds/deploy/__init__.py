"""Deployment formats built from a recipe and a checkpoint: :mod:`.onnx` (``launch/export.py --format onnx``)."""
from __future__ import annotations

from .onnx import ExportError, VerifyReport, export_onnx, export_recipe, onnx_support, verify_onnx

__all__ = ["ExportError", "VerifyReport", "export_onnx", "export_recipe", "onnx_support", "verify_onnx"]
