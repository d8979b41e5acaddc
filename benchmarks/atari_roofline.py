#!/usr/bin/env python
"""How fast can any PPO train Atari on this CPU? A compute bound for the Atari speed target.

The PPO paper's Atari recipe (8 envs x 128 steps, 4 epochs over the 1,024 frames, Nature CNN
shared by actor and critic) fixes the arithmetic of an update whatever the library: one forward
pass per frame while acting, then four forward and backward passes per frame while learning.
This script counts those floating-point operations with torch's own FLOP counter
(``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, forward and
backward, exactly what autograd runs), measures what one thread of this CPU sustains on

- a large single-precision matrix product (the best case for the math library), and
- the Nature CNN's forward+backward on a 256-frame minibatch (what PPO's update runs),

and turns them into the least time per 1,024 env steps that any fp32 implementation would need
(arithmetic only: no env, no Python, no optimizer). Where the CPU computes bf16 natively (AVX512-BF16
or AMX), it measures the same two rates in bf16 (the matrix product on bf16 operands; the CNN under
clippo's ``precision="bf16"`` autocast) and gives the bf16 bound beside the fp32 one. Given a peer's
measured training rate (``--peer-steps-per-s``, SB3's from ``bench_atari.py``), it prints the largest
speed-up over the peer that the arithmetic allows.

    python benchmarks/atari_roofline.py --peer-steps-per-s 186.1 --out benchmarks/results/atari_roofline
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine_info, machine_markdown, md_table, now, write_json

NUM_ENVS, NUM_STEPS, EPOCHS, MINIBATCH = 8, 128, 4, 256


def count_flops(model, obs) -> tuple[int, int]:
    """(forward FLOPs, forward+backward FLOPs) of one pass over ``obs``, loss = sum of the outputs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(obs)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model(obs).sum().backward()
    return forward, counter.get_total_flops()


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN picks and caches its kernels on the first call)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-steps-per-s", type=float, default=None, help="the peer's measured training steps/s")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/atari_roofline"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from gymnasium import spaces

    torch.set_num_threads(1)
    from clippo.networks.policy import ActorCritic

    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    model = ActorCritic(space, spaces.Discrete(4), network="shared")
    frames = torch.randint(0, 256, (MINIBATCH, 4, 84, 84), dtype=torch.uint8)

    def whole(obs):  # both heads, as the loss reads them
        params, values = model(obs)
        return torch.cat([params, values.unsqueeze(-1)], dim=1)

    fwd, fwd_bwd = count_flops(whole, frames)
    per_frame_fwd, per_frame_fwd_bwd = fwd / MINIBATCH, fwd_bwd / MINIBATCH
    steps = NUM_ENVS * NUM_STEPS
    # acting: one forward per frame (plus the bootstrap values, 8 frames: negligible); learning:
    # EPOCHS forward+backward passes over every frame
    update_flops = steps * per_frame_fwd + EPOCHS * steps * per_frame_fwd_bwd

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm_s = best_time(lambda: a @ b, args.repeats)
    gemm_flops = 2 * n**3 / gemm_s

    def train_step():
        model.zero_grad(set_to_none=True)
        whole(frames).sum().backward()

    cnn_s = best_time(train_step, args.repeats)
    cnn_flops = fwd_bwd / cnn_s

    bound_gemm = update_flops / gemm_flops
    bound_cnn = update_flops / cnn_flops

    from clippo.core.precision import cpu_supports_bf16

    bf16: dict[str, float] = {}
    if cpu_supports_bf16():
        a16, b16 = a.bfloat16(), b.bfloat16()
        bf16["gemm_flops_per_s_bf16"] = 2 * n**3 / best_time(lambda: a16 @ b16, args.repeats)
        model.compute_dtype = torch.bfloat16  # clippo's bf16 mixed precision (clippo.core.precision)
        bf16_cnn_s = best_time(train_step, args.repeats)
        model.compute_dtype = None
        bf16["cnn_flops_per_s_bf16"] = fwd_bwd / bf16_cnn_s
        bf16["bound_s_gemm_bf16"] = update_flops / bf16["gemm_flops_per_s_bf16"]
        bf16["bound_s_cnn_bf16"] = update_flops / bf16["cnn_flops_per_s_bf16"]
    rows = [
        ["FLOPs per frame, forward (acting)", f"{per_frame_fwd / 1e6:.1f} M"],
        ["FLOPs per frame, forward+backward (learning)", f"{per_frame_fwd_bwd / 1e6:.1f} M"],
        [
            f"FLOPs per {steps:,} env steps (1 forward + {EPOCHS} forward+backward per frame)",
            f"{update_flops / 1e9:.1f} G",
        ],
        ["one thread, 2048x2048 fp32 matrix product", f"{gemm_flops / 1e9:.1f} GFLOP/s"],
        [
            f"one thread, Nature CNN forward+backward on {MINIBATCH} frames",
            f"{cnn_flops / 1e9:.1f} GFLOP/s ({cnn_s * 1e3:.0f} ms)",
        ],
        [
            f"least arithmetic time per {steps:,} steps at the matrix-product rate",
            f"{bound_gemm:.2f} s ({steps / bound_gemm:.0f} steps/s at most)",
        ],
        [
            f"least arithmetic time per {steps:,} steps at the CNN's own rate",
            f"{bound_cnn:.2f} s ({steps / bound_cnn:.0f} steps/s at most)",
        ],
    ]
    if bf16:
        rows += [
            ["one thread, 2048x2048 bf16 matrix product", f"{bf16['gemm_flops_per_s_bf16'] / 1e9:.1f} GFLOP/s"],
            [
                f"one thread, Nature CNN forward+backward on {MINIBATCH} frames, bf16 autocast",
                f"{bf16['cnn_flops_per_s_bf16'] / 1e9:.1f} GFLOP/s ({bf16_cnn_s * 1e3:.0f} ms)",
            ],
            [
                f"least arithmetic time per {steps:,} steps at the bf16 CNN rate",
                f"{bf16['bound_s_cnn_bf16']:.2f} s ({steps / bf16['bound_s_cnn_bf16']:.0f} steps/s at most)",
            ],
        ]
    result = {
        "command": command_line(),
        "date": now(),
        "machine": machine_info(),
        "flops_forward_per_frame": per_frame_fwd,
        "flops_forward_backward_per_frame": per_frame_fwd_bwd,
        "flops_per_update": update_flops,
        "gemm_flops_per_s": gemm_flops,
        "cnn_flops_per_s": cnn_flops,
        "bound_s_gemm": bound_gemm,
        "bound_s_cnn": bound_cnn,
        **bf16,
    }
    if args.peer_steps_per_s:
        peer_s = steps / args.peer_steps_per_s
        result["peer_steps_per_s"] = args.peer_steps_per_s
        result["max_speedup_gemm"] = peer_s / bound_gemm
        result["max_speedup_cnn"] = peer_s / bound_cnn
        if bf16:
            result["max_speedup_cnn_bf16"] = peer_s / bf16["bound_s_cnn_bf16"]
            rows.append(
                ["largest speed-up over the peer the bf16 CNN rate allows", f"{peer_s / bf16['bound_s_cnn_bf16']:.2f}x"]
            )
        rows.append([f"peer's measured time per {steps:,} steps ({args.peer_steps_per_s} steps/s)", f"{peer_s:.2f} s"])
        rows.append(
            [
                "largest speed-up over the peer the arithmetic allows (matrix-product rate / CNN rate)",
                f"{peer_s / bound_gemm:.2f}x / {peer_s / bound_cnn:.2f}x",
            ]
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "atari_roofline.json", result)
    text = "\n".join(
        [
            "# Atari (PPO paper recipe, Nature CNN) on one CPU thread: the arithmetic bound",
            "",
            *machine_markdown(result),
            "",
            *md_table(["quantity", "value"], rows),
            "",
            "The bound counts only the network's arithmetic; a real training step adds the env, the "
            "optimizer and Python on top, so no fp32 implementation on this thread can be faster than it.",
            "",
        ]
    )
    (args.out / "atari_roofline.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
