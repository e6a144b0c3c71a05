"""Reproduce "RL fine-tuning heals OOD forgetting in SFT" on the GeneralPoints card game."""

__version__ = "0.1.0"
