"""Speed of ppo_relative.py: relative vs absolute, bf16 vs fp32, measured interleaved in one run.

Runs the training script as a subprocess with benchmarks/interleave.py, the four variants in turn
(relative fp32, relative bf16, absolute fp32, absolute bf16, then again), so that all see the same load on a
shared machine, and prints each run's SPS (the script's own end-of-run figure: environment steps per second
of wall-clock, rollouts, updates and the anchor EMA step included) and CPU time per 1000 steps, then the
ratios the precision and relative-representation targets are stated in:

    relative bf16 / relative fp32 SPS                          (target >= 1.6)
    relative cost against absolute under each precision        (target <= 15%)

    python benchmarks/ppo_sps.py                        # 2 rounds of 4 runs of 4096 steps
    python benchmarks/ppo_sps.py --steps 8192 --repeats 3
    python benchmarks/ppo_sps.py --components   # in-process CPU time of each part of an iteration, fp32 and bf16
    python benchmarks/ppo_sps.py --threads      # 1 vs 2 torch threads in fp32 (wall-clock SPS; run on an idle machine)

`--components` times, in CPU seconds of this process, the parts of one PPO iteration at the given sizes:
environment steps, rollout forwards, the update's minibatch steps (forward, backward, Adam) and the anchor EMA
step, with the script's own Encoder and Policy, and gives the steps per CPU-second of both modes.
"""

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from benchmarks.interleave import cpu_seconds, medians, ratio_table, run_interleaved  # noqa: E402


def components(args) -> None:
    import torch

    from envs.car_racing import make_color_car_racing
    from ppo_relative import Encoder, Policy

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    bf16 = False

    def amp():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    env = make_color_car_racing(args.bg_color)
    env.reset(seed=0)
    for _ in range(60):  # past the first second's zoom-in, whose frames are drawn the slow, exact way
        env.step(3)
    env_step = cpu_seconds(lambda: env.step(3), 100)
    batch, minibatch = args.num_envs * args.num_steps, args.num_envs * args.num_steps // 4
    obs = torch.randint(0, 256, (minibatch, 3, 84, 84), dtype=torch.uint8)
    anchor_frames = torch.randint(0, 256, (args.num_anchors, 3, 84, 84), dtype=torch.uint8)
    cpu_per_iteration = {}
    for precision, relative in [(p, r) for p in args.precisions for r in (True, False)]:
        bf16 = precision == "bf16"
        encoder = Encoder(1, relative, args.num_anchors)
        with amp():
            encoder.update_anchors(anchor_frames)
        policy = Policy(encoder.latent_dim, 5)
        optimizer = torch.optim.Adam(list(encoder.parameters()) + list(policy.parameters()), lr=1e-4)

        def rollout_forward():
            with torch.no_grad(), amp():
                policy(encoder(obs[: args.num_envs]))

        def minibatch_step():
            with amp():
                logits, value = policy(encoder(obs))
            optimizer.zero_grad()
            (logits.float().logsumexp(-1).mean() + value.float().pow(2).mean()).backward()
            optimizer.step()

        def anchor_step():
            with amp():
                encoder.update_anchors(anchor_frames)

        parts = {
            "env steps": batch * env_step,
            "rollout forwards": args.num_steps * cpu_seconds(rollout_forward, 10),
            "update (16 minibatch steps)": 16 * cpu_seconds(minibatch_step, 2),
            "anchor EMA step": cpu_seconds(anchor_step, 1) if relative else 0.0,
        }
        cpu_per_iteration[precision, relative] = sum(parts.values())
        name = f"{'relative' if relative else 'absolute'} ({precision})"
        print(
            f"{name}: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in parts.items())
            + f" -> {cpu_per_iteration[precision, relative]:.2f} CPU-s per iteration of {batch} steps "
            f"({batch / cpu_per_iteration[precision, relative]:.1f} steps per CPU-second)"
        )
    for precision in args.precisions:
        ratio = cpu_per_iteration[precision, False] / cpu_per_iteration[precision, True]
        print(f"{precision}: relative/absolute steps per CPU-second={ratio:.3f} (relative costs {100 * (1 - ratio):.1f}%)")
    if len(args.precisions) == 2:
        speedup = cpu_per_iteration["fp32", True] / cpu_per_iteration["bf16", True]
        print(f"relative bf16 / relative fp32 steps per CPU-second={speedup:.2f} (target >= 1.6)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4096, help="environment steps per run (a multiple of num_envs*num_steps)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the four interleaved runs")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--num-anchors", type=int, default=3136)
    parser.add_argument("--bg-color", default="green")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"),
                        help="precisions timed by --components")  # fmt: skip
    parser.add_argument("--components", action="store_true", help="time the parts of one iteration in-process instead")
    parser.add_argument(
        "--threads",
        action="store_true",
        help="compare --torch-threads 1 and 2 in fp32 (relative and absolute), rounds in alternating order",
    )
    args = parser.parse_args()
    if args.components:
        return components(args)
    if args.steps < args.num_envs * args.num_steps or args.repeats < 1:
        parser.exit(2, f"error: bad --steps {args.steps} / --repeats {args.repeats}; accepted: --steps >= "
                       f"--num-envs * --num-steps = {args.num_envs * args.num_steps}, --repeats >= 1\n")  # fmt: skip

    common = [
        "--total-timesteps", str(args.steps), "--num-envs", str(args.num_envs), "--num-steps", str(args.num_steps),
        "--num-anchors", str(args.num_anchors), "--bg-color", args.bg_color, "--torch-threads", str(args.torch_threads),
        "--eval-episodes", "0", "--save-every", "0", "--seed", "1",
    ]  # fmt: skip
    started = time.time()
    if args.threads:
        at = common.index("--torch-threads")
        common = common[:at] + common[at + 2 :]  # each variant sets its own thread count
        variants = {
            f"{kind} fp32 {n} thread{'s' * (n > 1)}": [
                f"--{'' if kind == 'relative' else 'no-'}relative",
                "--precision",
                "fp32",
                "--torch-threads",
                str(n),
            ]
            for kind in ("relative", "absolute")
            for n in (1, 2)
        }
        runs = run_interleaved("ppo_relative.py", common, variants, args.repeats, args.steps, alternate=True)
        print(f"steps/run={args.steps} num_envs={args.num_envs} num_steps={args.num_steps} cpus={os.cpu_count()} "
              f"load1={os.getloadavg()[0]:.1f} wall={time.time() - started:.0f}s")  # fmt: skip
        print(ratio_table(runs, baseline="relative fp32 1 thread"))
        for kind in ("relative", "absolute"):
            one, two = runs[f"{kind} fp32 1 thread"], runs[f"{kind} fp32 2 threads"]
            ratios = [b["sps"] / a["sps"] for a, b in zip(one, two)]
            print(f"{kind}: 2 threads / 1 thread SPS per round {' / '.join(f'{r:.2f}' for r in ratios)}")
        return
    variants = {
        "relative fp32": ["--relative", "--precision", "fp32"],
        "relative bf16": ["--relative", "--precision", "bf16"],
        "absolute fp32": ["--no-relative", "--precision", "fp32"],
        "absolute bf16": ["--no-relative", "--precision", "bf16"],
    }
    runs = run_interleaved("ppo_relative.py", common, variants, args.repeats, args.steps)
    med = medians(runs)
    print(f"steps/run={args.steps} num_envs={args.num_envs} num_steps={args.num_steps} num_anchors={args.num_anchors} "
          f"torch_threads={args.torch_threads} cpus={os.cpu_count()} load1={os.getloadavg()[0]:.1f} "
          f"wall={time.time() - started:.0f}s")  # fmt: skip
    print(ratio_table(runs, baseline="relative fp32"))
    speedup = med["relative bf16"]["sps"] / med["relative fp32"]["sps"]
    print(f"relative bf16 / relative fp32 SPS = {speedup:.2f} (target >= 1.6)")
    for precision in ("fp32", "bf16"):
        rel, absolute = med[f"relative {precision}"]["sps"], med[f"absolute {precision}"]["sps"]
        print(f"{precision}: relative/absolute SPS = {rel / absolute:.3f}, relative costs {100 * (1 - rel / absolute):.1f}% "
              "(target <= 15%)")  # fmt: skip


if __name__ == "__main__":
    main()
