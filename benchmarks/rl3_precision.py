"""Interleaved wall-clock of rl3_meta.py variants, reported as ratios to the first variant.

`--variants precision`: does bf16 autocast make RL^3 faster? `--variants threads`: does a second torch thread?
`--variants algo`: what does the object-level RL cost (RL^2, RL^3, RL^3-coarse)? Defaults: fp32, 1 thread.
For each configuration (random MDPs H=64, 64 tasks; 13x13 gridworlds H=350, 8 tasks) the variants run one after the
other, `--repeats` rounds in a row, so slow phases of a shared machine hit all variants alike. Each run trains
`--iterations` PPO iterations of 4 epochs (no KL early stop, so every variant does the same work); the figure is the
wall-clock per iteration (rollout + update) that rl3_meta.py writes to eval.json, and the PPO update per epoch.
Ratios are variant / first variant, per round, then mean +- std over rounds.

    nice -n 10 python benchmarks/rl3_precision.py --variants precision   # -> results/rl3_precision_timing.txt
    nice -n 10 python benchmarks/rl3_precision.py --variants threads     # -> results/rl3_threads_timing.txt
    nice -n 10 python benchmarks/rl3_precision.py --variants algo        # -> results/rl3_algo_timing.txt
"""

import glob
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
import tyro

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "mdp_H64": ["--domain", "mdp", "--horizon", "64", "--num-tasks", "64", "--minibatch-size", "1024"],
    "gridworld13": ["--domain", "gridworld", "--grid-size", "13", "--num-tasks", "8", "--minibatch-size", "700"],
}
VARIANT_SETS = {
    "precision": {"fp32": ["--precision", "fp32"], "bf16": ["--precision", "bf16"]},
    "threads": {"1 thread": ["--torch-threads", "1"], "2 threads": ["--torch-threads", "2"]},
    "algo": {"rl2": ["--algo", "rl2"], "rl3": ["--algo", "rl3"], "rl3-coarse": ["--algo", "rl3-coarse"]},
}  # fmt: skip


@dataclass
class Args:
    variants: str = "precision"
    """precision (RL^3, fp32 / bf16), threads (RL^3, 1 / 2 torch threads) or algo (RL^2 / RL^3 / RL^3-coarse)"""
    configs: tuple[str, ...] = tuple(CONFIGS)
    """configurations to time (mdp_H64, gridworld13)"""
    repeats: int = 3
    """interleaved rounds per configuration"""
    iterations: int = 3
    """PPO iterations per run"""
    output: str = ""
    """where the table is written (default: benchmarks/results/rl3_{variants}_timing.txt)"""


def timed_run(flags, iterations):
    """Train RL^3 with `flags`; returns (seconds per iteration, update seconds per epoch)."""
    with tempfile.TemporaryDirectory() as runs_dir:
        steps = (
            iterations * int(flags[flags.index("--num-tasks") + 1]) * int(dict(zip(flags, flags[1:])).get("--horizon", 350))
        )
        command = [sys.executable, "rl3_meta.py", "--runs-dir", runs_dir, "--total-timesteps", str(steps),
                   "--update-epochs", "4", "--target-kl", "1000", "--eval-episodes", "2", "--ood", "none"] + flags  # fmt: skip
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        with open(glob.glob(os.path.join(runs_dir, "*", "eval.json"))[0]) as f:
            result = json.load(f)
    return result["iteration_seconds"], result["update_seconds_per_iteration"] / result["update_epochs_per_iteration"]


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.variants not in VARIANT_SETS or not set(args.configs) <= set(CONFIGS):
        print(f"error: unknown --variants {args.variants!r} or --configs {args.configs}; accepted: {', '.join(VARIANT_SETS)}"
              f" / {', '.join(CONFIGS)}", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    variants = VARIANT_SETS[args.variants]
    first = next(iter(variants))
    lines = [f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
             f"{args.repeats} interleaved rounds x {args.iterations} iterations (4 epochs each, no KL stop)", "",
             f"| configuration | variant | s / iteration (mean over rounds) | ratio to {first}, per iteration | "
             "ratio, PPO update per epoch |", "|---|---|---|---|---|"]  # fmt: skip
    for config, flags in [(c, CONFIGS[c]) for c in args.configs]:
        times = {v: [] for v in variants}
        for _ in range(args.repeats):
            for variant, extra in variants.items():
                times[variant].append(timed_run(flags + extra, args.iterations))
                print(config, variant, times[variant][-1], flush=True)
        base = np.array(times[first])
        for variant in variants:
            t = np.array(times[variant])
            ratio, update_ratio = t[:, 0] / base[:, 0], t[:, 1] / base[:, 1]
            lines.append(f"| {config} | {variant} | {t[:, 0].mean():.2f} | {ratio.mean():.2f} +- {ratio.std():.2f} "
                         f"| {update_ratio.mean():.2f} +- {update_ratio.std():.2f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(REPO, args.output or f"benchmarks/results/rl3_{args.variants}_timing.txt"), "w") as f:
        f.write(text)
