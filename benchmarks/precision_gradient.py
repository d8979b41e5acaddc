#!/usr/bin/env python
"""How faithful bf16's update direction is (issue #36): on a checkpoint's own rollout, the PPO
loss gradient of each minibatch computed in bf16 against the same gradient in fp32, set beside
how much two fp32 minibatches of that rollout disagree with each other (the sampling noise
every update already lives with).

For each checkpoint: load it (fp32), collect ``--rollouts`` rollouts with its config (fp32
acting), GAE, then for the first epoch's minibatches (the config's count, shuffled as the
learner shuffles them) the gradient of the learner's own loss on each, in fp32 and in bf16
(parameters and inputs identical; the model's ``compute_dtype`` is the only difference).
``fresh:ENV`` in place of a checkpoint measures a new agent of ENV's preset (the start of a run).
Reported, medians over minibatches: cos(fp32, bf16), |bf16| / |fp32|, and cos between the fp32
gradients of neighbouring minibatches; and per parameter tensor what Adam sees of the difference
that stays the same from minibatch to minibatch (the parameters are fixed during the measurement,
so this includes bf16's rounding of the weights and inputs: the bf16 network is a slightly
different function) against the gradient's own consistent part.

    python benchmarks/precision_gradient.py RUN/checkpoints/step_000001001472.pt ... \\
        --out benchmarks/results/precision_parity/gradient
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, fmt, machine_info, machine_markdown, md_table, now, write_json


def cosine(a: Any, b: Any) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def measure(checkpoint: str, rollouts: int, seed: int) -> dict[str, Any]:
    """``checkpoint``: a checkpoint file, or ``fresh:ENV`` for a new agent of ENV's preset (seed 1)."""
    import torch

    from clippo import PPO
    from clippo.core.advantages import compute_gae
    from clippo.training.update import normalized_advantages, shuffled_minibatches

    if checkpoint.startswith("fresh:"):
        agent = PPO(checkpoint.removeprefix("fresh:"), seed=1, precision="fp32", tensorboard=False)
    else:
        agent = PPO.load(checkpoint, precision="fp32")
    cfg = agent.config
    runner, buffer = agent.env_runner(), agent.new_rollout_buffer()
    runner.start(seed=seed)
    rows: dict[str, list[float]] = {"cos_bf16": [], "norm_ratio": [], "cos_neighbour": []}
    bf16 = torch.bfloat16
    params = dict(agent.model.named_parameters())
    # per coordinate, over every minibatch: sums of the bf16 - fp32 difference, of the fp32
    # gradient and of its square (Adam scales each coordinate by the root of the last)
    sums = {name: torch.zeros(3, p.numel(), dtype=torch.float64) for name, p in params.items()}
    for _ in range(rollouts):
        runner.collect(agent.model, buffer, agent.generator)
        buffer.estimate_values(agent.model)
        advantages, returns = compute_gae(
            buffer.tensor("rewards"),
            buffer.tensor("values"),
            buffer.tensor("terminated"),
            buffer.tensor("truncated"),
            buffer.tensor("last_value"),
            gamma=cfg.gamma,
            gae_lambda=cfg.gae_lambda,
        )
        batch = buffer.flatten(advantages, returns)
        plan = agent.learner.plan_update(len(batch))
        indices = plan.epochs[0]
        minibatches = [batch] if indices is None else shuffled_minibatches(batch, indices)
        fp32_grads = []
        for index, minibatch in enumerate(minibatches):
            adv = minibatch.samples("advantages")
            if cfg.normalize_advantages:
                adv = normalized_advantages(adv, plan, 0, index)
            grads, per_param = [], []
            for dtype in (None, bf16):
                agent.model.compute_dtype = dtype
                agent.learner.loss_and_gradient(minibatch, adv)
                grads.append(agent.optimizer.grad.detach().double().clone())
                per_param.append({n: p.grad.detach().double().flatten().clone() for n, p in params.items()})
            agent.model.compute_dtype = None
            for name, acc in sums.items():
                g32, g16 = per_param[0][name], per_param[1][name]
                acc[0] += g16 - g32
                acc[1] += g32
                acc[2] += g32 * g32
            rows["cos_bf16"].append(cosine(*grads))
            rows["norm_ratio"].append(float(grads[1].norm() / grads[0].norm()))
            fp32_grads.append(grads[0])
        rows["cos_neighbour"] += [cosine(a, b) for a, b in itertools.pairwise(fp32_grads)]
    agent.close()
    count = len(rows["cos_bf16"])
    layers = []
    for name, (difference, gradient, square) in sums.items():
        rms = (square / count).sqrt().clamp_min(1e-30)
        # what Adam sees of each: the mean over minibatches in units of the coordinate's rms
        consistent, signal = (difference / count / rms).abs(), (gradient / count / rms).abs()
        layers.append(
            {
                "parameter": name,
                "size": int(rms.numel()),
                "difference_median": float(consistent.median()),
                "difference_p99": float(torch.quantile(consistent.float(), 0.99)),
                "signal_median": float(signal.median()),
                "share_difference_above_signal": float((consistent > signal).double().mean()),
            }
        )
    return {
        "layers": layers,
        "checkpoint": checkpoint,
        "env": cfg.env_id,
        "minibatches": len(rows["cos_bf16"]),
        **{key: statistics.median(values) if values else None for key, values in rows.items()},
        "min_cos_bf16": min(rows["cos_bf16"]),
        "max_cos_neighbour": max(rows["cos_neighbour"]) if rows["cos_neighbour"] else None,
    }


def label(checkpoint: str) -> str:
    """``group/run/file`` of a checkpoint path (or ``fresh:ENV`` as it is)."""
    if checkpoint.startswith("fresh:"):
        return f"`{checkpoint}` (new agent, seed 1)"
    path = Path(checkpoint)
    return f"`{path.parent.parent.parent.name}/{path.parent.parent.name}/{path.name}`"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files, or fresh:ENV for a new agent of ENV's preset")
    parser.add_argument("--rollouts", type=int, default=2, help="rollouts per checkpoint")
    parser.add_argument("--seed", type=int, default=5, help="the envs' reset seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from clippo.core.precision import cpu_supports_bf16

    if not cpu_supports_bf16():
        parser.error("this CPU has no native bf16 (AVX512-BF16 or AMX)")
    torch.set_num_threads(1)
    meta = {"command": command_line(), "date": now(), "machine": machine_info()}
    start = time.time()
    results = []
    for checkpoint in args.checkpoints:
        result = measure(checkpoint, args.rollouts, args.seed)
        print(result, flush=True)
        results.append(result)
    meta["finished"] = now()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", {"meta": meta, "results": results})
    lines = [
        "# bf16 against fp32: the update direction on a checkpoint's own rollouts",
        "",
        f"Command: `{meta['command']}` ({meta['date']}, {time.time() - start:.0f} s). Per checkpoint: "
        f"{args.rollouts} rollouts with its own config, the first epoch's minibatches; medians over them.",
        "",
        *md_table(
            [
                "checkpoint",
                "minibatches",
                "cos(fp32, bf16) (lowest)",
                "norm bf16 / fp32",
                "cos between fp32 minibatches (highest)",
            ],
            [
                [
                    label(r["checkpoint"]),
                    r["minibatches"],
                    f"{fmt(r['cos_bf16'], 4)} ({fmt(r['min_cos_bf16'], 4)})",
                    fmt(r["norm_ratio"], 3),
                    f"{fmt(r['cos_neighbour'], 3)} ({fmt(r['max_cos_neighbour'], 3)})",
                ]
                for r in results
            ],
        ),
        "",
        "Per parameter tensor, what Adam sees (it scales each coordinate by the root of its mean "
        "squared gradient, rms): the bf16 - fp32 difference averaged over the minibatches and the fp32 "
        "gradient averaged over them, each in units of the coordinate's rms (for a gradient made of "
        "independent noise the average is about 1/sqrt(minibatches)); medians over the tensor's "
        "coordinates, and the share of coordinates where the difference is larger than the gradient.",
        "",
        *md_table(
            ["checkpoint", "parameter", "size", "difference (99th pct)", "gradient", "difference > gradient"],
            [
                [
                    label(r["checkpoint"]),
                    layer["parameter"],
                    layer["size"],
                    f"{fmt(layer['difference_median'], 4)} ({fmt(layer['difference_p99'], 3)})",
                    fmt(layer["signal_median"], 3),
                    fmt(100 * layer["share_difference_above_signal"], 1, "%"),
                ]
                for r in results
                for layer in r["layers"]
            ],
        ),
        "",
        *machine_markdown(meta),
    ]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
