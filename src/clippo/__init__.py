"""clippo: Proximal Policy Optimization, correct to the paper, fast on a CPU, easy to read."""

__version__ = "0.1.0"

from clippo.config.ppo_config import PPOConfig  # noqa: E402
from clippo.agent import PPO  # noqa: E402
import clippo.envs.toy  # noqa: E402, F401  (registers the clippo/... env ids with Gymnasium)

__all__ = ["PPO", "PPOConfig", "__version__"]
