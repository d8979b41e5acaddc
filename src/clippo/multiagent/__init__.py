"""Multi-agent PPO on PettingZoo envs (issue #33): ``PPO(make_env)`` with a PettingZoo env.

One module per concept: ``pettingzoo`` (telling PettingZoo envs apart, importing them by module
path, the Parallel and AEC adapters), ``groups`` (which agents share a policy), ``critic``
(local or centralized critics), ``buffer`` (per-agent rollout storage), ``runner`` (the
vectorized rollout), ``selfplay`` (opponent pool, seats, Elo), ``evaluation`` (team returns;
games against a random player or another agent), ``play`` (a person against the agent),
``agent`` (``MultiAgentPPO``: training, acting, checkpoints), ``toy_envs`` (tiny envs for the
tests).

Importing this package registers ``MultiAgentPPO`` with ``clippo.agent.PPO`` (``clippo`` does on
import): ``PPO(...)`` with a PettingZoo source, and ``PPO.load`` / ``PPO.from_run`` with a
multi-agent checkpoint, hand off to it.
"""

from clippo.agent import AgentKind, register_agent_kind
from clippo.multiagent.agent import MultiAgentPPO
from clippo.multiagent.pettingzoo import import_env_module, multiagent_source, probe_source

register_agent_kind(
    AgentKind(
        probe=probe_source,
        agent=MultiAgentPPO,
        from_payload=MultiAgentPPO._from_payload,
        from_run=MultiAgentPPO.from_run,
        checkpoint_key="multiagent",
    )
)

__all__ = ["MultiAgentPPO", "import_env_module", "multiagent_source"]
