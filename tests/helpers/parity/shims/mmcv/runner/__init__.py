"""Stand-in for ``mmcv.runner``: ``BaseModule`` is ``nn.Module``; checkpoint loading is refused (the goldens are
generated with ``pretrained=None`` and seeded weights)."""
from torch import nn

BaseModule = nn.Module


def load_checkpoint(*args, **kwargs):
    raise RuntimeError("parity shims: load_checkpoint is not available (use pretrained=None)")
