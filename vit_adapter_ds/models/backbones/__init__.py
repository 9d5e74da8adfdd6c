from .beit import BEiTAdapter
from .beit_baseline import BEiTBaseline
from .msdeform_attn import MSDeformAttn
from .uniperceiver import UniPerceiverAdapter
from .vit import ViTAdapter
from .vit_baseline import ViTBaseline

__all__ = ["ViTAdapter", "BEiTAdapter", "BEiTBaseline", "ViTBaseline", "UniPerceiverAdapter", "MSDeformAttn"]
