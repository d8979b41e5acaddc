"""clippo: Proximal Policy Optimization, correct to the paper, fast on a CPU, easy to read."""

import clippo.envs.toy  # noqa: F401  (registers the clippo/... env ids with Gymnasium)
from clippo.agent import PPO
from clippo.config.ppo_config import PPOConfig
from clippo.core.version import __version__

__all__ = ["PPO", "PPOConfig", "__version__"]
