"""Hyperparameters: the PPOConfig fields, their validation, presets and config files."""
