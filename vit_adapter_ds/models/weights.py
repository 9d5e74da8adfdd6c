"""Compatibility names for pretrained-weight loading, which now lives where it belongs:

* reading any checkpoint safely, the load report and the error classes: :mod:`vit_adapter_ds.checkpoint_io`;
* each family's ``checkpoint_filter_fn`` next to its model: :mod:`vit_adapter_ds.models.backbones.vit`
  (:func:`vit_checkpoint_filter_fn`) and :mod:`vit_adapter_ds.models.backbones.beit`
  (:func:`beit_checkpoint_filter_fn`, :func:`resize_rel_pos_table`, :func:`geometric_source_coordinates`);
* recognising a checkpoint and loading it into a built backbone: :mod:`vit_adapter_ds.models.factory`
  (:func:`load_pretrained`, :func:`detect_checkpoint_kind`, :func:`split_segmentor_state_dict`).

New code should import from those modules.
"""
from ..checkpoint_io import CheckpointError, LoadReport, UnsafeCheckpointError, read_checkpoint
from ..checkpoint_io import read_state_dict as load_checkpoint_file
from .backbones.beit import (NUM_CLS_ROWS, beit_checkpoint_filter_fn, geometric_source_coordinates,
                             resize_rel_pos_table)
from .backbones.vit import vit_checkpoint_filter_fn
from .factory import detect_checkpoint_kind, load_pretrained, split_segmentor_state_dict

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "LoadReport", "read_checkpoint", "load_checkpoint_file",
    "detect_checkpoint_kind", "split_segmentor_state_dict", "geometric_source_coordinates", "resize_rel_pos_table",
    "vit_checkpoint_filter_fn", "beit_checkpoint_filter_fn", "load_pretrained", "NUM_CLS_ROWS",
]
