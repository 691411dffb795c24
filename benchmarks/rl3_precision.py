"""Interleaved wall-clock of rl3_meta.py variants, reported as ratios to the first variant.

`--variants precision`: does bf16 autocast make RL^3 faster? `--variants threads`: does a second torch thread?
`--variants algo`: what does the object-level RL cost (RL^2, RL^3, RL^3-coarse)? Defaults: fp32, 1 thread.
For each configuration (random MDPs H=64, 64 tasks; 13x13 gridworlds H=350, 8 tasks) the variants run one after the
other, `--repeats` rounds in a row (benchmarks/interleave.py), so slow phases of a shared machine hit all variants
alike. Each run trains
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
import sys
from dataclasses import dataclass

import numpy as np
import torch
import tyro

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.interleave import round_ratios, run_interleaved  # noqa: E402

CONFIGS = {
    "mdp_H64": ["--domain", "mdp", "--horizon", "64", "--num-tasks", "64", "--minibatch-size", "1024"],
    "gridworld13": [
        "--domain",
        "gridworld",
        "--grid-size",
        "13",
        "--horizon",
        "350",
        "--num-tasks",
        "8",
        "--minibatch-size",
        "700",
    ],
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


def eval_json(runs_dir: str) -> dict:
    """The run's wall-clock per iteration (rollout + update) and PPO update seconds per epoch, from its eval.json."""
    with open(glob.glob(os.path.join(runs_dir, "*", "eval.json"))[0]) as f:
        result = json.load(f)
    return {"iteration_s": result["iteration_seconds"],
            "update_s_per_epoch": result["update_seconds_per_iteration"] / result["update_epochs_per_iteration"]}  # fmt: skip


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
    for config in args.configs:
        options = dict(zip(CONFIGS[config], CONFIGS[config][1:]))
        steps = args.iterations * int(options["--num-tasks"]) * int(options["--horizon"])
        common = ["--total-timesteps", str(steps), "--update-epochs", "4", "--target-kl", "1000", "--eval-episodes", "2",
                  "--ood", "none", *CONFIGS[config]]  # fmt: skip
        runs = run_interleaved("rl3_meta.py", common, variants, args.repeats, steps, collect=eval_json)
        ratios, update_ratios = round_ratios(runs, first, "iteration_s"), round_ratios(runs, first, "update_s_per_epoch")
        for variant in variants:
            seconds = np.mean([r["iteration_s"] for r in runs[variant]])
            lines.append(
                f"| {config} | {variant} | {seconds:.2f} | {np.mean(ratios[variant]):.2f} +- {np.std(ratios[variant]):.2f} "
                f"| {np.mean(update_ratios[variant]):.2f} +- {np.std(update_ratios[variant]):.2f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(REPO, args.output or f"benchmarks/results/rl3_{args.variants}_timing.txt"), "w") as f:
        f.write(text)
