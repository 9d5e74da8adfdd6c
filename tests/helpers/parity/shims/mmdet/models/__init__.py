"""Stand-in for mmdet.models."""
