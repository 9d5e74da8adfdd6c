"""Stand-in for the official ``mmcv_custom`` package: checkpoint loading is refused (``pretrained=None``)."""


def load_checkpoint(*args, **kwargs):
    raise RuntimeError("parity shims: load_checkpoint is not available (use pretrained=None)")


my_load_checkpoint = load_checkpoint
