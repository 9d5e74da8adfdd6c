from .beit import BEiTAdapter
from .msdeform_attn import MSDeformAttn
from .vit import ViTAdapter

__all__ = ["ViTAdapter", "BEiTAdapter", "MSDeformAttn"]
