#!/usr/bin/env python
"""How faithful bf16's update direction is (issue #36): on a checkpoint's own rollout, the PPO
loss gradient of each minibatch computed in bf16 against the same gradient in fp32, set beside
how much two fp32 minibatches of that rollout disagree with each other (the sampling noise
every update already lives with).

For each checkpoint: load it (fp32), collect ``--rollouts`` rollouts with its config (fp32
acting), GAE, then for the first epoch's minibatches (the config's count, shuffled as the
learner shuffles them) the gradient of the learner's own loss on each, in fp32 and in bf16
(parameters and inputs identical; the model's ``compute_dtype`` is the only difference).
Reported, medians over minibatches: cos(fp32, bf16), |bf16| / |fp32|, and cos between the fp32
gradients of neighbouring minibatches.

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


def measure(checkpoint: Path, rollouts: int, seed: int) -> dict[str, Any]:
    import torch

    from clippo import PPO
    from clippo.core.advantages import compute_gae
    from clippo.training.update import normalized_advantages, shuffled_minibatches

    agent = PPO.load(checkpoint, precision="fp32")
    cfg = agent.config
    runner, buffer = agent.env_runner(), agent.new_rollout_buffer()
    runner.start(seed=seed)
    rows: dict[str, list[float]] = {"cos_bf16": [], "norm_ratio": [], "cos_neighbour": []}
    bf16 = torch.bfloat16
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
            grads = []
            for dtype in (None, bf16):
                agent.model.compute_dtype = dtype
                agent.learner.loss_and_gradient(minibatch, adv)
                grads.append(agent.optimizer.grad.detach().double().clone())
            agent.model.compute_dtype = None
            rows["cos_bf16"].append(cosine(*grads))
            rows["norm_ratio"].append(float(grads[1].norm() / grads[0].norm()))
            fp32_grads.append(grads[0])
        rows["cos_neighbour"] += [cosine(a, b) for a, b in itertools.pairwise(fp32_grads)]
    agent.close()
    return {
        "checkpoint": str(checkpoint),
        "env": cfg.env_id,
        "minibatches": len(rows["cos_bf16"]),
        **{key: statistics.median(values) if values else None for key, values in rows.items()},
        "min_cos_bf16": min(rows["cos_bf16"]),
        "max_cos_neighbour": max(rows["cos_neighbour"]) if rows["cos_neighbour"] else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+")
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
                    f"`{Path(r['checkpoint']).parent.parent.parent.name}/{Path(r['checkpoint']).parent.parent.name}"
                    f"/{Path(r['checkpoint']).name}`",
                    r["minibatches"],
                    f"{fmt(r['cos_bf16'], 4)} ({fmt(r['min_cos_bf16'], 4)})",
                    fmt(r["norm_ratio"], 3),
                    f"{fmt(r['cos_neighbour'], 3)} ({fmt(r['max_cos_neighbour'], 3)})",
                ]
                for r in results
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
