"""Stand-in for mmseg.models."""
