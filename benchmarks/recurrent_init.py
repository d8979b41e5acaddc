#!/usr/bin/env python
"""How the LSTM's initialization changes learning under RL-Zoo's RecurrentPPO recipe on CartPoleNoVel.

    python benchmarks/recurrent_init.py orthogonal 1 2 3 4 5
    python benchmarks/recurrent_init.py default 1 2 3 4 5 6

Each seed: clippo with ``bench_recurrent.py``'s speed recipe (RL-Zoo's values for
``clippo/CartPoleNoVel-v1``, lr and clip annealed, separate LSTMs of 64 units), 100k steps, one
torch thread, then a deterministic evaluation of 20 episodes on env seed 10000; one line per seed.
``orthogonal``: the LSTMs' weights orthogonal (gain 1) and biases zero, as CleanRL initializes
them; ``default``: uniform in +-1/sqrt(hidden), as PyTorch does (and sb3-contrib's RecurrentPPO
keeps). Both are set explicitly after construction, whatever clippo's own default is.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recurrent import ENV, zoo_hyperparameters_for_clippo


def initialize(core, variant: str) -> None:
    with torch.no_grad():
        for name, param in core.rnn.named_parameters():
            if variant == "default":
                bound = 1.0 / math.sqrt(core.hidden_size)
                param.uniform_(-bound, bound)
            elif name.startswith("weight"):
                torch.nn.init.orthogonal_(param, 1.0)
            else:
                param.zero_()


def main(argv: list[str]) -> int:
    variant, seeds = argv[0], [int(s) for s in argv[1:]]
    if variant not in ("orthogonal", "default"):
        raise SystemExit(f"variant={variant!r} is invalid: choose orthogonal or default")
    torch.set_num_threads(1)
    from clippo import PPO

    for seed in seeds:
        agent = PPO(ENV, preset="default", total_steps=100_000, **zoo_hyperparameters_for_clippo(seed))
        for core in (agent.model.actor_core, agent.model.critic_core):  # in place: the optimizer's flat vector sees it
            initialize(core, variant)
        start = time.perf_counter()
        agent.learn(progress=False)
        learn_s = time.perf_counter() - start
        result = agent.evaluate(episodes=20, seed=10_000)
        agent.close()
        print(f"{variant} seed {seed}: {learn_s:.0f} s, evaluation {result['mean_return']:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
