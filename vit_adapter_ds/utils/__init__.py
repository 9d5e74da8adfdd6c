"""Small helpers shared by the entry points (colour palettes and prediction images)."""
