"""Stand-in for mmseg (official backbone imports only)."""
