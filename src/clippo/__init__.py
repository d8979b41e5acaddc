"""clippo: Proximal Policy Optimization, correct to the paper, fast on a CPU, easy to read."""

__version__ = "0.1.0"

import clippo.envs.toy  # noqa: F401  (registers the clippo/... env ids with Gymnasium)
from clippo.agent import PPO
from clippo.config.ppo_config import PPOConfig

__all__ = ["PPO", "PPOConfig", "__version__"]
