#!/usr/bin/env python
"""Recurrent PPO: clippo against sb3-contrib's RecurrentPPO, and clippo's built-in recurrent presets.

    python benchmarks/bench_recurrent.py speed --seeds 1 2 3     # clippo vs RecurrentPPO, alternating
    python benchmarks/bench_recurrent.py presets --seeds 1 2 3 --jobs 2   # the presets, with and without memory
    python benchmarks/bench_recurrent.py bptt --seeds 1 2 3 --jobs 2      # whole rollouts vs truncated BPTT chunks
    python benchmarks/bench_recurrent.py zoo --seeds 1000 1001 --jobs 1   # the reference: RecurrentPPO, RL-Zoo's recipe

Each writes ``<part>.json`` into --out (benchmarks/results/recurrent/), and ``results.md`` is
rewritten from every part's JSON there.

speed: on ``clippo/CartPoleNoVel-v1`` (CartPole without its two velocities), both libraries train
with RL-Zoo's RecurrentPPO hyperparameters for that task (``ZOO`` below: 8 envs x 32 steps, one
minibatch of 256, 20 epochs, lr 1e-3 and clip range 0.2 annealed linearly, gamma 0.98, lambda 0.8, observation and
reward normalization, an LSTM of 64 units for the actor and another for the critic, a 64-unit
ReLU layer each). Each run is a child process of its own with one torch thread, alternating
clippo / RecurrentPPO in seed-major order. Reported: ``learn()`` wall time and steps/s, and the
deterministic evaluation of the final policy (20 episodes, each library's own evaluation loop).

One difference in the networks: RecurrentPPO puts its 64-unit layer after the LSTM, clippo's
encoder comes before its core (observation -> 64 -> LSTM 64 -> heads); the LSTM's work, which
dominates, is the same. Both anneal the learning rate and the clip range linearly to 0 (RL-Zoo's
``lin_1e-3`` and ``lin_0.2``; clippo's ``anneal_lr`` and ``anneal_clip``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_OUT,
    command_line,
    emit_result,
    fmt,
    machine_info,
    machine_markdown,
    md_table,
    mean_std,
    median,
    now,
    ratio,
    run_child_script,
    write_json,
)

OUT = DEFAULT_OUT / "recurrent"
ENV = "clippo/CartPoleNoVel-v1"
EVAL_SEED = 10_000
LIB_NAMES = {"clippo": "clippo", "recurrentppo": "RecurrentPPO"}

#: RL-Zoo's RecurrentPPO hyperparameters for CartPoleNoVel-v1 (rl-baselines3-zoo, ppo_lstm.yml).
ZOO = {"n_envs": 8, "n_steps": 32, "batch_size": 256, "n_epochs": 20, "learning_rate": 1e-3, "gamma": 0.98,
       "gae_lambda": 0.8, "clip_range": 0.2, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5,
       "lstm_hidden_size": 64, "net_arch": 64, "anneal": True, "use_sde": False, "sde_sample_freq": -1,
       "norm_reward": True, "total_steps": 100_000}  # fmt: skip

#: RL-Zoo's own RecurrentPPO recipe per partially observed task (ppo_lstm.yml; for PendulumNoVel-v1
#: as its published agent lists it: constant lr and clip, gSDE every 4 steps, observations
#: normalized but not rewards, RecurrentPPO's default minibatch of 128 rows).
ZOO_RECIPES = {
    "clippo/CartPoleNoVel-v1": ZOO,
    "clippo/PendulumNoVel-v1": {
        "n_envs": 4, "n_steps": 1024, "batch_size": 128, "n_epochs": 10, "learning_rate": 1e-3, "gamma": 0.9,
        "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5,
        "lstm_hidden_size": 64, "net_arch": 64, "anneal": False, "use_sde": True, "sde_sample_freq": 4,
        "norm_reward": False, "total_steps": 100_000},
}  # fmt: skip

#: The partially observed tasks and the figure each must reach (RL-Zoo's RecurrentPPO at 100k steps).
PRESET_TARGETS = {"clippo/CartPoleNoVel-v1": 475.0, "clippo/PendulumNoVel-v1": -218.0}


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def zoo_hyperparameters_for_clippo(seed: int) -> dict[str, Any]:
    z = ZOO
    return {
        "seed": seed, "num_envs": z["n_envs"], "num_steps": z["n_steps"],
        "num_minibatches": z["n_envs"] * z["n_steps"] // z["batch_size"], "update_epochs": z["n_epochs"],
        "learning_rate": z["learning_rate"], "anneal_lr": True, "anneal_clip": True, "gamma": z["gamma"],
        "gae_lambda": z["gae_lambda"], "clip_epsilon": z["clip_range"], "ent_coef": z["ent_coef"],
        "vf_coef": z["vf_coef"], "max_grad_norm": z["max_grad_norm"], "target_kl": None, "normalize_advantages": True,
        "network": "separate", "hidden_sizes": [z["net_arch"]], "activation": "relu", "recurrent": "lstm",
        "recurrent_hidden_size": z["lstm_hidden_size"], "bptt_length": 0, "normalize_observations": True,
        "normalize_rewards": True, "vector_env": "sync", "torch_threads": 1, "checkpoint_every": 0,
        "tensorboard": False,
    }  # fmt: skip


def child_speed_clippo(spec: dict[str, Any]) -> dict[str, Any]:
    _single_thread()
    from clippo import PPO

    agent = PPO(ENV, preset="default", total_steps=spec["total_steps"], **zoo_hyperparameters_for_clippo(spec["seed"]))
    t0 = time.perf_counter()
    agent.learn(progress=False)
    learn_s = time.perf_counter() - t0
    result = agent.evaluate(episodes=spec["eval_episodes"], seed=spec["eval_seed"])
    agent.close()
    return {"learn_s": learn_s, "steps": agent.global_step, "eval_returns": result["returns"]}


def train_recurrentppo(
    env_id: str, z: dict[str, Any], seed: int, total_steps: int, spec: dict[str, Any]
) -> dict[str, Any]:
    """sb3-contrib's RecurrentPPO on ``env_id`` with the RL-Zoo recipe ``z``, then its deterministic
    evaluation (VecNormalize's observation statistics frozen, raw rewards)."""
    _single_thread()
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize
    from torch import nn

    import clippo  # noqa: F401  (registers the clippo/... tasks)

    venv = make_vec_env(env_id, n_envs=z["n_envs"], seed=seed)
    venv = VecNormalize(venv, gamma=z["gamma"], norm_reward=z["norm_reward"])
    # RL-Zoo's lin_<start>, or a constant
    schedule = lambda start: (lambda progress: progress * start) if z["anneal"] else start  # noqa: E731
    model = RecurrentPPO(
        "MlpLstmPolicy", venv, n_steps=z["n_steps"], batch_size=z["batch_size"], n_epochs=z["n_epochs"],
        learning_rate=schedule(z["learning_rate"]), clip_range=schedule(z["clip_range"]), gamma=z["gamma"],
        gae_lambda=z["gae_lambda"], ent_coef=z["ent_coef"], vf_coef=z["vf_coef"], max_grad_norm=z["max_grad_norm"],
        use_sde=z["use_sde"], sde_sample_freq=z["sde_sample_freq"],
        policy_kwargs=dict(ortho_init=False, activation_fn=nn.ReLU, lstm_hidden_size=z["lstm_hidden_size"],
                           enable_critic_lstm=True, net_arch=dict(pi=[z["net_arch"]], vf=[z["net_arch"]])),
        seed=seed, device="cpu", verbose=0,
    )  # fmt: skip
    t0 = time.perf_counter()
    model.learn(total_timesteps=total_steps)
    learn_s = time.perf_counter() - t0
    eval_env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=spec["eval_seed"]), training=False, norm_reward=False)
    eval_env.obs_rms = venv.obs_rms
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=spec["eval_episodes"], deterministic=True,
                                 return_episode_rewards=True)  # fmt: skip
    return {"learn_s": learn_s, "steps": int(model.num_timesteps), "eval_returns": [float(r) for r in returns]}


def child_speed_recurrentppo(spec: dict[str, Any]) -> dict[str, Any]:
    return train_recurrentppo(ENV, ZOO, spec["seed"], spec["total_steps"], spec)


def child_zoo_recurrentppo(spec: dict[str, Any]) -> dict[str, Any]:
    """The reference itself on the seed benchmark's seeds: RecurrentPPO with RL-Zoo's recipe."""
    z = ZOO_RECIPES[spec["env"]]
    return {**train_recurrentppo(spec["env"], z, spec["seed"], z["total_steps"], spec), "curve": []}


def child_preset_clippo(spec: dict[str, Any]) -> dict[str, Any]:
    """``clippo train ENV`` as the built-in preset has it, or that preset without the core."""
    _single_thread()
    from clippo import PPO

    extra = {"recurrent": "none"} if spec["variant"] == "feed-forward" else {}
    extra.update(spec.get("overrides", {}))
    agent = PPO(spec["env"], seed=spec["seed"], checkpoint_every=0, tensorboard=False, **extra)
    curve, eval_s = [], [0.0]

    def on_update(agent_, metrics):
        step, every = agent_.global_step, spec["curve_every_steps"]
        if step // every > (step - agent_.global_batch_size) // every or agent_.finished:
            t = time.perf_counter()
            curve.append((step, agent_.evaluate(episodes=5, seed=spec["eval_seed"] + 1)["mean_return"]))
            eval_s[0] += time.perf_counter() - t

    t0 = time.perf_counter()
    agent.learn(progress=False, callback=on_update)
    learn_s = time.perf_counter() - t0 - eval_s[0]  # training alone: the curve's evaluations taken out
    result = agent.evaluate(episodes=spec["eval_episodes"], seed=spec["eval_seed"])
    agent.close()
    return {
        "learn_s": learn_s,
        "steps": agent.global_step,
        "eval_returns": result["returns"],
        "curve": curve,
        "config": {k: v for k, v in agent.config.to_dict().items() if k in ("recurrent", "bptt_length", "total_steps")},
    }


CHILDREN = {"speed-clippo": child_speed_clippo, "speed-recurrentppo": child_speed_recurrentppo,
            "presets-clippo": child_preset_clippo, "bptt-clippo": child_preset_clippo,
            "zoo-recurrentppo": child_zoo_recurrentppo}  # fmt: skip


def run_child(spec: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """One measurement in a fresh interpreter; its output goes to log_path."""
    return run_child_script(__file__, spec, log_path, ("part", "lib", "env", "seed", "variant"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def meta() -> dict[str, Any]:
    return {"command": command_line(), "date": now(), "machine": machine_info()}


def run_specs(
    name: str, specs: list[dict[str, Any]], out: Path, extra: dict[str, Any], jobs: int = 1
) -> dict[str, Any]:
    """Run the children (``jobs`` at a time: learning comparisons only; speed runs take one)."""
    results = {"meta": {**meta(), "jobs": jobs}, **extra, "runs": []}

    def one(spec: dict[str, Any]) -> dict[str, Any]:
        label = "-".join(str(spec[k]) for k in ("lib", "env", "variant", "seed") if k in spec).replace("/", "_")
        r = run_child(spec, out / "runs" / "logs" / f"{name}-{label}.log")
        if r["ok"]:
            log(
                f"{label}: {r['steps'] / r['learn_s']:,.0f} steps/s, {r['learn_s']:.0f} s, "
                f"eval {mean_std(r['eval_returns'])[0]:.1f}"
            )
        else:
            log(f"{label}: FAILED {r['error']}")
        return r

    with ThreadPoolExecutor(jobs) as pool:
        for r in pool.map(one, specs):
            results["runs"].append(r)
            write_json(out / f"{name}.json", results)
    results["meta"]["finished"] = now()
    write_json(out / f"{name}.json", results)
    return results


def run_speed(args, out: Path) -> dict[str, Any]:
    specs = [{"part": "speed", "lib": lib, "env": ENV, "seed": seed, "total_steps": args.total_steps,
              "eval_episodes": args.eval_episodes, "eval_seed": EVAL_SEED}
             for seed in args.seeds for lib in ("clippo", "recurrentppo")]  # fmt: skip
    return run_specs(
        "speed", specs, out, {"recipe": ZOO, "total_steps": args.total_steps, "eval_episodes": args.eval_episodes}
    )


def run_presets(args, out: Path) -> dict[str, Any]:
    specs = [{"part": "presets", "lib": "clippo", "env": env, "variant": variant, "seed": seed,
              "eval_episodes": args.eval_episodes, "eval_seed": EVAL_SEED, "curve_every_steps": args.curve_every}
             for seed in args.seeds for env in args.envs for variant in ("recurrent", "feed-forward")]  # fmt: skip
    return run_specs("presets", specs, out, {"eval_episodes": args.eval_episodes}, args.jobs)


#: The BPTT comparison: per env, sequence lengths at one minibatch size (the preset's otherwise).
#: CartPoleNoVel's rollouts are 32 steps (one minibatch of all 256 steps); PendulumNoVel's are 1024
#: steps in 4 envs, so 4 minibatches of 1024 steps each: one env's whole rollout, or 8 or 32 chunks.
BPTT_RUNS = {
    "clippo/CartPoleNoVel-v1": [("whole32", {"bptt_length": 0}), ("bptt16", {"bptt_length": 16}),
                                ("bptt8", {"bptt_length": 8})],
    "clippo/PendulumNoVel-v1": [("whole1024", {"bptt_length": 0, "num_minibatches": 4}),
                                ("bptt128", {"bptt_length": 128, "num_minibatches": 4}),
                                ("bptt32", {"bptt_length": 32, "num_minibatches": 4})],
}  # fmt: skip


def run_bptt(args, out: Path) -> dict[str, Any]:
    specs = [{"part": "bptt", "lib": "clippo", "env": env, "variant": variant, "seed": seed, "overrides": overrides,
              "eval_episodes": args.eval_episodes, "eval_seed": EVAL_SEED, "curve_every_steps": args.curve_every}
             for seed in args.seeds for env in args.envs for variant, overrides in BPTT_RUNS[env]]  # fmt: skip
    return run_specs("bptt", specs, out, {"eval_episodes": args.eval_episodes, "runs_per_env": BPTT_RUNS}, args.jobs)


def run_zoo(args, out: Path) -> dict[str, Any]:
    specs = [{"part": "zoo", "lib": "recurrentppo", "env": env, "variant": "rl-zoo", "seed": seed,
              "eval_episodes": args.eval_episodes, "eval_seed": EVAL_SEED}
             for seed in args.seeds for env in args.envs]  # fmt: skip
    recipes = {env: ZOO_RECIPES[env] for env in args.envs}
    return run_specs("zoo", specs, out, {"eval_episodes": args.eval_episodes, "recipes": recipes}, args.jobs)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def summary_rows(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    summary = {}
    for key, group in groups.items():
        ok = [r for r in group if r["ok"]]
        evals = [mean_std(r["eval_returns"])[0] for r in ok]
        summary[key] = {"runs": len(ok), "failed": len(group) - len(ok), "evals": evals, "median_eval": median(evals),
                        "median_sps": median(r["steps"] / r["learn_s"] for r in ok),
                        "median_learn_s": median(r["learn_s"] for r in ok)}  # fmt: skip
    return summary


def plot_curves(results: dict[str, Any], path: Path) -> bool:
    """One panel per env: each variant's evaluation curve per seed (False without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    envs = sorted({r["env"] for r in results["runs"] if r["ok"]})
    variants = sorted({r["variant"] for r in results["runs"] if r["ok"]})
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=False):
        for color, variant in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], variants, strict=False):
            runs = [r for r in results["runs"] if r["ok"] and r["env"] == env and r["variant"] == variant]
            for i, r in enumerate(runs):
                steps, returns = zip(*r["curve"], strict=False) if r["curve"] else ((), ())
                ax.plot(steps, returns, color=color, alpha=0.8, label=variant if i == 0 else None)
        ax.set(title=env, xlabel="environment steps", ylabel="evaluation return (5 episodes, deterministic)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_markdown(out: Path) -> None:
    lines = ["# Recurrent PPO: clippo vs sb3-contrib's RecurrentPPO, the recurrent presets, BPTT length", ""]
    path = out / "speed.json"
    if path.exists():
        results = json.loads(path.read_text())
        s = summary_rows(results["runs"], ("lib",))
        c, r = s.get(("clippo",), {}), s.get(("recurrentppo",), {})
        lines += ["## Speed: clippo vs RecurrentPPO on clippo/CartPoleNoVel-v1", "",
                  *machine_markdown(results["meta"]), "",
                  f"RL-Zoo's RecurrentPPO hyperparameters for both ({json.dumps(results['recipe'])}), "
                  f"{results['total_steps']:,} steps per run, one torch thread, each run a child process, alternating "
                  f"clippo / RecurrentPPO. Evaluation: deterministic, {results['eval_episodes']} episodes.",
                  ""]  # fmt: skip
        lines += md_table(["library", "runs", "median steps/s", "median learn s", "eval per seed", "median eval"], [
            [LIB_NAMES[lib], g.get("runs"), fmt(g.get("median_sps"), 0), fmt(g.get("median_learn_s"), 1),
             ", ".join(f"{e:.1f}" for e in g.get("evals", [])), fmt(g.get("median_eval"), 1)]
            for lib, g in (("clippo", c), ("recurrentppo", r))])  # fmt: skip
        lines += [
            "",
            "clippo / RecurrentPPO steps/s (medians): "
            f"**{fmt(ratio(c.get('median_sps'), r.get('median_sps')), 2, 'x')}**",
            "",
        ]
    for name, title, keys in (
        ("presets", "Built-in presets: with and without memory", ("env", "variant")),
        ("zoo", "The reference: RecurrentPPO with RL-Zoo's own recipe per task", ("env", "variant")),
        ("bptt", "Whole-rollout sequences vs truncated BPTT chunks", ("env", "variant")),
    ):
        path = out / f"{name}.json"
        if not path.exists():
            continue
        results = json.loads(path.read_text())
        s = summary_rows(results["runs"], keys)
        runs_what = {
            "presets": "`clippo train ENV --seed S` (the built-in preset; feed-forward: with --recurrent none)",
            "bptt": "`clippo train ENV --seed S` (the built-in preset; with --bptt-length N)",
            "zoo": f"sb3-contrib's RecurrentPPO with RL-Zoo's recipe ({json.dumps(results.get('recipes'))})",
        }[name]
        lines += [f"## {title}", "", *machine_markdown(results["meta"]), "",
                  f"{runs_what}, seeds {sorted({r['seed'] for r in results['runs']})}, one torch thread; "
                  f"eval: deterministic, {results['eval_episodes']} episodes on env seed {EVAL_SEED}.", ""]  # fmt: skip
        rows = []
        for (env, variant), g in sorted(s.items()):
            target = PRESET_TARGETS.get(env)
            hit = sum(e >= target for e in g["evals"]) if target is not None else None
            rows.append([env, variant, ", ".join(f"{e:.1f}" for e in g["evals"]), fmt(g["median_eval"], 1),
                         fmt(target, 0) if target is not None else "-",
                         f"{hit} of {g['runs']}" if hit is not None else "-",
                         fmt(g["median_learn_s"], 1), fmt(g["median_sps"], 0)])  # fmt: skip
        lines += md_table(["env", "variant", "eval per seed", "median", "target", "seeds at target", "median learn s",
                           "median steps/s"], rows)  # fmt: skip
        if name != "zoo" and plot_curves(results, out / f"{name}_curves.png"):
            lines += [
                "",
                f"Curves (one line per seed; `learn s` leaves out these evaluations): ![{name}]({name}_curves.png)",
            ]
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("part", choices=["speed", "presets", "bptt", "zoo", "report", "_child"])
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--envs", nargs="+", default=list(PRESET_TARGETS), help="presets/bptt/zoo envs")
    parser.add_argument("--jobs", type=int, default=1, help="presets/bptt/zoo: runs at a time")
    parser.add_argument("--total-steps", type=int, default=100_000, help="steps per speed run")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument(
        "--curve-every", type=int, default=10_000, help="presets/bptt: a 5-episode evaluation every this many steps"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.part == "_child":
        spec = json.loads(args.spec)
        emit_result(CHILDREN[f"{spec['part']}-{spec['lib']}"](spec))
        return 0
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.part != "report":
        {"speed": run_speed, "presets": run_presets, "bptt": run_bptt, "zoo": run_zoo}[args.part](args, out)
    write_markdown(out)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
