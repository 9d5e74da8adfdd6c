"""Stand-in for mmdet (official backbone imports only)."""
