"""Stand-in for mmdet.models.builder: the BACKBONES registry."""
from _registry import Registry

BACKBONES = Registry("backbone")
