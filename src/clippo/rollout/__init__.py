"""Collecting trajectories: rollout buffers and env runners, action masks, normalization, evaluation episodes."""
