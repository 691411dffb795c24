"""Does bf16 autocast or a second torch thread make rl3_meta.py faster? Interleaved timing, reported as ratios.

For each configuration (random MDPs H=64, 64 tasks; 13x13 gridworlds H=350, 8 tasks) the variants (fp32 with 1 thread,
bf16 with 1 thread, fp32 with 2 threads) run one after the other, `--repeats` rounds in a row, so slow phases of a
shared machine hit all variants alike. Each run trains `--iterations` PPO iterations with RL^3; the figure is the
wall-clock per iteration (rollout + update) that rl3_meta.py writes to eval.json, and the PPO update per epoch.
Ratios are variant / fp32-1-thread, per round, then mean +- std over rounds. Writes benchmarks/results/rl3_precision.txt.

    nice -n 10 python benchmarks/rl3_precision.py
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
VARIANTS = {"fp32, 1 thread": ["--precision", "fp32", "--torch-threads", "1"],
            "bf16, 1 thread": ["--precision", "bf16", "--torch-threads", "1"],
            "fp32, 2 threads": ["--precision", "fp32", "--torch-threads", "2"]}  # fmt: skip


@dataclass
class Args:
    repeats: int = 3
    """interleaved rounds per configuration"""
    iterations: int = 3
    """PPO iterations per run"""
    output: str = "benchmarks/results/rl3_precision.txt"
    """where the table is written"""


def timed_run(flags, iterations):
    """Train RL^3 with `flags`; returns (seconds per iteration, update seconds per epoch)."""
    with tempfile.TemporaryDirectory() as runs_dir:
        steps = (
            iterations * int(flags[flags.index("--num-tasks") + 1]) * int(dict(zip(flags, flags[1:])).get("--horizon", 350))
        )
        command = [sys.executable, "rl3_meta.py", "--algo", "rl3", "--runs-dir", runs_dir, "--total-timesteps", str(steps),
                   "--update-epochs", "4", "--target-kl", "1000", "--eval-episodes", "2", "--ood", "none"] + flags  # fmt: skip
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        with open(glob.glob(os.path.join(runs_dir, "*", "eval.json"))[0]) as f:
            result = json.load(f)
    return result["iteration_seconds"], result["update_seconds_per_iteration"] / result["update_epochs_per_iteration"]


if __name__ == "__main__":
    args = tyro.cli(Args)
    lines = [f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
             f"{args.repeats} interleaved rounds x {args.iterations} iterations (4 epochs each, no KL stop)", "",
             "| configuration | variant | s / iteration (mean over rounds) | ratio to fp32-1-thread, per iteration | "
             "ratio, PPO update per epoch |", "|---|---|---|---|---|"]  # fmt: skip
    for config, flags in CONFIGS.items():
        times = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for variant, extra in VARIANTS.items():
                times[variant].append(timed_run(flags + extra, args.iterations))
                print(config, variant, times[variant][-1], flush=True)
        base = np.array(times["fp32, 1 thread"])
        for variant in VARIANTS:
            t = np.array(times[variant])
            ratio, update_ratio = t[:, 0] / base[:, 0], t[:, 1] / base[:, 1]
            lines.append(f"| {config} | {variant} | {t[:, 0].mean():.2f} | {ratio.mean():.2f} +- {ratio.std():.2f} "
                         f"| {update_ratio.mean():.2f} +- {update_ratio.std():.2f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(REPO, args.output), "w") as f:
        f.write(text)
