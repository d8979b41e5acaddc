"""Multi-agent PPO on PettingZoo envs (issue #33): ``PPO(make_env)`` with a PettingZoo env.

One module per concept: ``pettingzoo`` (telling PettingZoo envs apart, importing them by module
path, the Parallel and AEC adapters), ``groups`` (which agents share a policy), ``critic``
(local or centralized critics), ``buffer`` (per-agent rollout storage), ``runner`` (the
vectorized rollout), ``selfplay`` (opponent pool, seats, Elo), ``evaluation`` (team returns;
games against a random player or another agent), ``play`` (a person against the agent),
``agent`` (``MultiAgentPPO``: training, acting, checkpoints), ``toy_envs`` (tiny envs for the
tests).
"""

from clippo.multiagent.pettingzoo import import_env_module, multiagent_source

__all__ = ["import_env_module", "multiagent_source"]
