"""Environments: recognising env families, building vector envs, preprocessing, snapshots, the toy envs."""
