"""clippo: Proximal Policy Optimization, correct to the paper, fast on a CPU, easy to read."""

import clippo.envs.toy
import clippo.multiagent  # noqa: F401  (registers multi-agent PPO behind PPO: PettingZoo envs)
from clippo.agent import PPO
from clippo.config.ppo_config import PPOConfig
from clippo.core.version import __version__

__all__ = ["PPO", "PPOConfig", "__version__"]
