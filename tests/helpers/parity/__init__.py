"""Fidelity against the official ViT-Adapter code: seeded weights, variant table, golden generation."""
