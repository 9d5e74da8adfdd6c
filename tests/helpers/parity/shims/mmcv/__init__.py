"""Stand-in for mmcv 1.x: only ``mmcv.runner`` is used by the official backbone files."""
