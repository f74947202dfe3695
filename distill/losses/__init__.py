"""Losses of the distill stage, one per file."""
