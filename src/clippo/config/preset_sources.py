"""Where each preset's values come from, and what was measured with them.

``PRESETS`` and ``ENV_PRESETS`` (``clippo.config.ppo_config``) hold the values; this module holds
their provenance as data: a one-line source (a published recipe, or clippo's own tuning), a note
on why the values differ from that source and what was measured (numbers, seeds, the commands'
results), and the result files of those measurements. ``clippo presets`` renders both into
docs/presets.md; the tests require an entry for every preset and check that every result file
exists.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the RL Baselines3 Zoo's tuned PPO hyperparameters (file of that repository)
RL_ZOO = "RL-Zoo `hyperparams/ppo.yml`"
RL_ZOO_RECURRENT = "RL-Zoo `hyperparams/ppo_lstm.yml` (RecurrentPPO)"


@dataclass(frozen=True)
class PresetSource:
    """The provenance of one preset.

    Attributes:
        source: Where the values come from, one line (a published recipe, or "own tuning").
        note: Why these values, and what was measured with them (Markdown; numbers and seeds).
        results: Repository paths of result files measured with these values (or the runs the
            note quotes).
    """

    source: str
    note: str = ""
    results: tuple[str, ...] = ()


#: Provenance of the named presets (``--preset NAME``), by preset name.
PRESET_SOURCES: dict[str, PresetSource] = {
    "default": PresetSource(
        "the dataclass defaults: a generic recipe in the manner of CleanRL's and SB3's PPO",
        "For discrete and continuous tasks alike; not tuned for any one task.",
    ),
    "spinningup": PresetSource(
        "OpenAI Spinning Up's reference PPO",
        "4000 steps per update, full-batch steps, up to 80 of them stopped early at KL 0.01, "
        "lambda 0.97, no annealing, no entropy bonus.",
    ),
    "atari": PresetSource(
        "the PPO paper's Atari recipe (Schulman et al. 2017, Table 5)",
        "8 envs x 128 steps, 4 epochs of 4 minibatches, lr 2.5e-4 annealed, clip 0.1, entropy 0.01, "
        "10M steps; the Nature CNN shared by both heads (as SB3's CnnPolicy), rewards clipped to their "
        "sign, a lost life terminal for learning (the whole game's score is logged and evaluated). "
        "`precision: auto` (clippo's own): bf16 mixed precision where the CPU or GPU computes it natively, "
        "else fp32. In bf16 Breakout-v5 trained at 610 steps/s against 363 in fp32 (one thread, SB3 256), "
        "and the training returns of three seeds per precision overlapped at 1M steps on Breakout-v5 "
        "(fp32 19.7-23.0, bf16 16.5-21.5) and on Pong-v5 (fp32 -12.9 to -11.9, bf16 -14.6 to -9.8); "
        "the runs of the first result file are fp32.",
        (
            "benchmarks/results/atari/results.md",
            "benchmarks/results/precision_parity/results.md",
            "benchmarks/results/precision_parity/pong_seed3.md",
            "benchmarks/results/atari_speed/atari_speed.md",
        ),
    ),
    "minatar": PresetSource(
        "gymnax's published PPO recipe for MinAtar (gymnax-blines, the same for every game), "
        "with an entropy bonus of 0.03 from own tuning",
        "MinAtar (Young & Tian 2019) at 10M steps: 64 envs x 128 steps, 4 epochs of 8 minibatches, "
        "constant lr 5e-4, gamma 0.999, separate 256-256 ReLU MLPs on the flattened 10x10xC grid. "
        "The entropy bonus is 0.03 instead of gymnax's 0.01: with 0.01 the policy's entropy fell to "
        "~0.25 nats within 0.6M steps and Breakout crept from a plateau (20.2 at 10M, seed 1); with "
        "0.03 it reached 38.9 (Asterix 6.1). The small MinAtar CNN shared by both heads plateaued on "
        "Breakout (6.3 at 1.4M steps against 13.2 for the MLP), hence the MLP. `precision: auto` "
        "(clippo's own): MinAtar's observations are bool grids, so the MLP runs on the torch path, in bf16 "
        "where the hardware computes it natively: 1.6-1.7x fp32's steps/s; on Breakout at 10M steps the "
        "training returns of seeds 1-3 were fp32 21.8 / 21.0 / 21.9, bf16 28.2 / 22.7 / 17.3, final "
        "evaluations fp32 107.1 / 25.2 / 32.2, bf16 53.2 / 23.8 / 29.4 (the runs of the first result "
        "file are fp32).",
        (
            "benchmarks/results/minatar/results.md",
            "benchmarks/results/minatar/encoder_probes.md",
            "benchmarks/results/precision_parity/minatar_mlp/README.md",
        ),
    ),
    "mujoco": PresetSource(
        "the PPO paper's MuJoCo recipe (Schulman et al. 2017, Table 3), with observation and reward normalization",
        "Continuous-control locomotion at 1M steps: one env x 2048 steps, minibatches of 64, 10 "
        "epochs, lr 3e-4, gamma 0.99, lambda 0.95, plus running observation normalization and reward "
        "scaling. The per-env MuJoCo values build on it.",
        ("benchmarks/results/mujoco/results.md",),
    ),
}

#: Provenance of the built-in values per environment (``clippo train ENV_ID``), by env id.
ENV_PRESET_SOURCES: dict[str, PresetSource] = {
    "CartPole-v1": PresetSource(
        "own tuning, for wall-clock time to solve (lambda 0.8 as RL-Zoo's CartPole values)",
        "Many cheap (natively vectorized) envs and few large minibatches. gamma 0.99, not RL-Zoo's "
        "0.98: with 0.98 seeds 16 and 17 of 1-19 ended at 327.5 and 435.0, their policies balancing "
        "the pole while the cart drifted off the track (x = -2.4 at every evaluation episode's end, "
        "after ~300 steps, beyond 0.98's ~50-step horizon); with 0.99 all 20 of seeds 1-20 reached 500.",
        (
            "benchmarks/results/seed_robustness/gamma_evidence.md",
            "benchmarks/results/cartpole_seeds_1-20/results.md",
            "benchmarks/results/seed_robustness/results.md",
        ),
    ),
    "Acrobot-v1": PresetSource(
        "own values (in clippo since its first version; their origin is not recorded), "
        "with reward scaling from own tuning",
        "Without reward scaling 2 of 5 seeds never reached the goal (-500 throughout); with it seeds "
        "2, 3 and 4 reach -77 to -85.",
        (
            "benchmarks/results/shared_vs_separate/results.md",
            "benchmarks/results/seed_robustness/results.md",
        ),
    ),
    "Pendulum-v1": PresetSource(
        f"{RL_ZOO}, Pendulum-v1, with the learning rate annealed",
        "4 envs x 1024 steps, minibatches of 64, 10 epochs, lr 1e-3, gamma 0.9, lambda 0.95, gSDE "
        "resampled every 4 steps, no normalization, 100k steps (RL-Zoo's budget); its benchmark table "
        "gives -172 +- 104. With RL-Zoo's constant rate 7 of tuning seeds 1-10 ended at or above -200 "
        "(each failure one evaluation episode that never swung up); annealed, 10 of 10, and 10 of 10 "
        "unseen seeds 1000-1009 (median -177.9, worst -193.0). The former own preset (200k steps, "
        "512-step rollouts, observation and reward normalization) reached 3 of 10 unseen seeds.",
        (
            "benchmarks/results/seed_robustness/pendulum_tuning.md",
            "benchmarks/results/seed_robustness/results.md",
        ),
    ),
    "LunarLander-v3": PresetSource(
        f"{RL_ZOO}, LunarLander-v2 (v3 has the same dynamics)",
        "16 envs x 1024 steps, minibatches of 64, 4 epochs, constant lr 3e-4, gamma 0.999, lambda "
        "0.98, entropy 0.01; RL-Zoo's benchmark table gives 242 +- 32 at 1M steps.",
        ("benchmarks/results/box2d/results.md",),
    ),
    "LunarLanderContinuous-v3": PresetSource(
        f"{RL_ZOO}: the same values as LunarLander-v3",
        "RL-Zoo tunes the continuous-action lander with the same values (271 +- 32 at 1M steps).",
        ("benchmarks/results/box2d_more/results.md",),
    ),
    "MountainCar-v0": PresetSource(
        f"{RL_ZOO}, with 10 epochs and gamma 0.999 from own tuning",
        "RL-Zoo's values: 16 envs x 16 steps, minibatches of 64, lambda 0.98, observation and reward "
        "normalization (-110.4 at 1M steps in its benchmark table); clippo uses 10 epochs instead of 4 "
        "and gamma 0.999 instead of 0.99. With RL-Zoo's values clippo's final policies went left first "
        "from part of the start positions and needed another swing (-115.9, -118.4, -110.1 on seeds "
        "1-3, 50 episodes each); gamma 0.999 alone gave -111.2 on average, with 10 epochs -99.5, "
        "-105.1, -101.5.",
        ("benchmarks/results/mountaincar/results.md",),
    ),
    "MountainCarContinuous-v0": PresetSource(
        RL_ZOO,
        "One env x 8 steps, one minibatch, 10 epochs, constant lr 7.77e-5, gamma 0.9999, lambda 0.9, "
        "clip 0.1, gSDE with log-std -3.29, PyTorch's default init, observation and reward "
        "normalization; 88.3 +- 2.6 at 20k steps in RL-Zoo's benchmark table. Without gSDE the same "
        "values ended seed 1 at -0.01: white noise at every step does not rock the car up the hill. "
        "With clippo's usual orthogonal init seeds 2 and 3 reached the flag a few times and then stood "
        "still (-0.1, -0.8; SB3 with that init: 2 of 3 seeds stood still too); with the default init "
        "all three reached it (88.7-95.0).",
        ("benchmarks/results/mountaincar_continuous/results.md",),
    ),
    "BipedalWalker-v3": PresetSource(
        RL_ZOO,
        "32 envs x 2048 steps, minibatches of 64, 10 epochs, constant lr 3e-4, clip 0.18, gamma "
        "0.999, lambda 0.95, observation and reward normalization; 213 +- 129 at 5M steps in RL-Zoo's "
        "benchmark table.",
        ("benchmarks/results/bipedal/results.md",),
    ),
    "CarRacing-v3": PresetSource(
        f"{RL_ZOO}, CarRacing-v0",
        "Each action repeated twice, frames resized to 64x64 and grayscale, the last 2 stacked; 8 envs "
        "x 512 steps, minibatches of 128, 10 epochs, lr 1e-4 annealed to 0, gSDE (new noise every 4 "
        "steps, log-std -2), PyTorch's default init, the Nature CNN shared by both heads with one "
        "256-unit GELU layer in each, rewards scaled (observations are pixels); 153.9 +- 74.5 at 4M "
        "steps in RL-Zoo's benchmark table (CarRacing-v0). Not yet measured with clippo: the env "
        "alone steps at 100-200 frames/s on this project's 2-core machine.",
    ),
    "clippo/CartPoleNoVel-v1": PresetSource(
        f"{RL_ZOO_RECURRENT}, CartPoleNoVel-v1, with a KL stop at 0.02 and gamma 0.995 from own tuning",
        "A partially observed task (clippo.envs.toy, velocities hidden): an LSTM after a 64-unit ReLU "
        "layer, on RL-Zoo's values (8 envs x 32 steps, one minibatch of whole sequences, 20 epochs, "
        "lr 1e-3 annealed, gamma 0.98, lambda 0.8, normalized observations and rewards). The KL stop: "
        "without it, in tuning runs (10 evaluation episodes), 1 of 3 seeds kept its 500 and the other "
        "two fell from ~400 to 163 and 253 by 100k steps. gamma 0.995, not RL-Zoo's 0.98: with 0.98, "
        "4 of seeds 7-14 ended between 239 and 463, each failing policy checked keeping the pole up "
        "while the cart drifted off the track (x = +-2.4 at the end of each failed episode, after "
        "200-300 steps, far beyond 0.98's ~50-step horizon); on seeds 7-14 gamma 0.99 solved 7 of 8, "
        "0.995 8 of 8. Tried and not taken (20 evaluation episodes each): a 64-unit layer after the "
        "LSTM (head_sizes, RecurrentPPO's layout) solved 2 of 5 (with PyTorch's init too: 1 of 4), an "
        "entropy bonus of 0.01 3 of 4, 10 epochs 2 of 4.",
        (
            "benchmarks/results/recurrent/results.md",
            "benchmarks/results/seed_robustness/gamma_evidence.md",
            "benchmarks/results/seed_robustness/results.md",
        ),
    ),
    "clippo/PendulumNoVel-v1": PresetSource(
        f"{RL_ZOO_RECURRENT}, PendulumNoVel-v1, without gSDE, with 32-step BPTT chunks from own tuning",
        "RL-Zoo's values: 4 envs x 1024 steps, 10 epochs, lr 1e-3, gamma 0.9, lambda 0.95, "
        "normalization (it adds gSDE, which this preset does not use). The update replays "
        "32-step chunks from their stored states, 32 minibatches of 4 chunks (128 steps). In tuning "
        "runs (10 evaluation episodes) the same with 512-step rollouts and 16 minibatches ended at "
        "-195, -222 and -217 on seeds 1-3, these values at -149, -194 and -185.",
        ("benchmarks/results/recurrent/results.md", "benchmarks/results/seed_robustness/results.md"),
    ),
    "clippo/ToolAmount-v0": PresetSource(
        "own tuning (a short horizon for a contextual bandit)",
        "Each step's reward depends on that step's action alone and observations are independent of "
        "the actions, so a short horizon changes no optimum and only cuts the advantages' variance: "
        "with gamma 0.99, 200k steps left the amount's mean 0.08 from its target against 0.014 with "
        "0.5; the default log-std 0, a std as wide as the Box, left it at 0.34.",
        ("benchmarks/results/seed_robustness/results.md",),
    ),
    "clippo/Bits-v0": PresetSource(
        "own tuning (a short horizon for a contextual bandit, as clippo/ToolAmount-v0)",
        "Each step's reward depends on that step's action alone, so gamma and lambda 0.5 change no "
        "optimum and only cut the advantages' variance.",
        ("benchmarks/results/seed_robustness/results.md",),
    ),
    "HalfCheetah-v5": PresetSource(
        f"{RL_ZOO}, HalfCheetah-v3 (Raffin et al.)",
        "One env, 512-step rollouts, small minibatches, many epochs, no annealing, on top of the "
        "`mujoco` preset's running observation normalization and reward scaling.",
        ("benchmarks/results/mujoco/results.md",),
    ),
    "Hopper-v5": PresetSource(
        "the `mujoco` preset with a smaller initial action std (0.6, Andrychowicz et al. 2021)",
        "RL-Zoo's Hopper values (gamma 0.999, 1 x 512 steps, 256-256 ReLU) stood still at ~1000 (the "
        "healthy-reward plateau) with KL spikes on seed 1, so the generic recipe is used instead.",
        ("benchmarks/results/mujoco/results.md",),
    ),
    "Walker2d-v5": PresetSource(
        "the Hopper-v5 recipe (the `mujoco` preset, initial log-std -0.5)",
        "RL-Zoo's Walker2d values (1 x 512 steps, minibatch 32, 20 epochs, lr 5e-5) ended at 2490 on seed 1.",
        ("benchmarks/results/mujoco/results.md",),
    ),
    "Humanoid-v5": PresetSource(
        f"{RL_ZOO}, Humanoid-v3 (Raffin et al.)",
        "On top of the `mujoco` preset; 10M steps, as PPO needs ~10M steps to walk here. Not yet measured with clippo.",
    ),
    "InvertedPendulum-v5": PresetSource(
        f"{RL_ZOO}, InvertedPendulum-v3 (Raffin et al.)",
        "On top of the `mujoco` preset; 200k steps, as it reaches the 1000 cap well before that. Not "
        "yet measured with clippo.",
    ),
    "InvertedDoublePendulum-v5": PresetSource(
        f"{RL_ZOO}, InvertedDoublePendulum-v3 (Raffin et al.)",
        "On top of the `mujoco` preset. Not yet measured with clippo.",
    ),
    "Reacher-v5": PresetSource(
        f"{RL_ZOO}, Reacher-v3 (Raffin et al.)",
        "On top of the `mujoco` preset. Not yet measured with clippo.",
    ),
    "Swimmer-v5": PresetSource(
        "the `mujoco` preset with gamma 0.9999",
        "Swimmer's reward comes from slow forward progress: discount almost nothing away. Not yet "
        "measured with clippo.",
    ),
    "Ant-v5": PresetSource("the `mujoco` preset, unchanged", "Not yet measured with clippo."),
    # Multi-agent envs: first guesses, tuned and measured in later work (issue #33).
    "mpe2.simple_spread_v3": PresetSource(
        "issue #33's speed recipe, not tuned; 1M agent steps (a first guess of 2M before it was measured)",
        "8 env copies x 128 steps = 3072 agent steps per update for 3 agents, 4 epochs of minibatches "
        "of 512 rows, lr 3e-4 annealed, entropy 0.01, one policy shared by the 3 identical agents. "
        "total_steps counts agent steps. Measured on seeds 1000-1002 (used for nothing else), 50 "
        "deterministic episodes each, mean team return: IPPO (this preset) median -57.0 (-58.5, -56.9, "
        "-57.0), MAPPO (`--critic centralized`) -58.5 (-59.0, -57.6, -58.5), SB3 2.9.2 + SuperSuit 3.11 "
        "with the same recipe and agent steps -69.8 (-74.9, -69.2, -69.8); a random policy scores about "
        "-77 (`python benchmarks/multiagent_learning.py --seeds 1000 1001 1002`, docs/multiagent.md).",
        ("benchmarks/results/multiagent_learning/multiagent_learning.md",),
    ),
    "pettingzoo.classic.connect_four_v3": PresetSource(
        "own tuning (seed 0, then seed 1000 on 2026-12-06)",
        "Self-play with the defaults' opponent mix (a quarter of the games against the current policy, a "
        "quarter against a uniformly random player, half against a pool of 50 past snapshots). On seed 1000 at "
        "1.5M agent steps (400 games per seat against random, 200 against the one-move-lookahead player): the "
        "old mix (half current policy, half a 10-snapshot pool) with the small CNN won 92.7% / 84.8% against "
        "random moving first / second and 27% against lookahead; the new mix 96.0% / 92.8% and 35%; without "
        "advantage normalization 98.8% / 94.3% and 35%; the same for 3M steps 99.0% / 96.3% and 38%; with "
        "the CNN widened to 64 channels and 256 units (1.5M steps) 99.3% / 98.3% and 47%. ent_coef 0.05 "
        "(0.01 collapsed the entropy to ~0.02 within 300k steps on seed 0). The budget: 2.5M agent steps.",
        (
            "benchmarks/results/multiagent_selfplay/multiagent_selfplay.md",
            "benchmarks/results/multiagent_selfplay/tuning_2026-12-06.md",
            "benchmarks/results/multiagent_selfplay/tuning_seed0.md",
        ),
    ),
    "pettingzoo.classic.tictactoe_v3": PresetSource(
        "own tuning (seed 0, then seeds 1000-1002 on 2026-12-06)",
        "Self-play with the defaults' opponent mix (see connect four). Measured on seed 1000 at 1M agent "
        "steps (1000 games per seat against random): half the games against random and half against the "
        "current policy lost 80 to random, and every game of the policy against itself was the same line won "
        "by the first mover; with the pool of 50 (half the games) 12 losses and the games against itself all "
        "draws; without advantage normalization as well, no loss, and the policy's move keeps the minimax "
        "value in 94.7% of the game's 4,520 positions (77.1% with it). Normalizing divides by the spread "
        "of advantages that shrinks as self-play games become predictable, so noise is blown up to full-size "
        "updates; the +-1 outcomes already set the scale. Seed 1001 lost 5 games at 1M steps and none at 2M "
        "(96.5% optimal moves): the budget is 2M. With the 128-128 MLP seed 1000 at 2M still lost 6 of 1000 "
        "games moving second (85.2% optimal moves); with 256-256 seeds 1000-1003 lost none of 2000 games "
        "against random and none of 800 against the lookahead player, with 97.3-98.1% optimal moves.",
        (
            "benchmarks/results/multiagent_selfplay/multiagent_selfplay.md",
            "benchmarks/results/multiagent_selfplay/tuning_2026-12-06.md",
        ),
    ),
}
