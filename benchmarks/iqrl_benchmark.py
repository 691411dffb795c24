"""Benchmark (not a test): iQRL vs. --no-fsq vs. --no-encoder (TD3) with the same code path in iqrl_td3.py.

Runs every (mode, seed) of `iqrl_td3.py` as a subprocess (at most `--parallel` at a time, seeds interleaved so
each mode sees the same machine load), parses the lines the script prints at the end and prints a table:
final deterministic eval return (mean +- std over seeds), latent rank as % of full rank on a replay batch, and
wall-clock seconds per 1k updates, also relative to TD3 in the same run. The table is also written to
`--output`. Example (the command behind docs/iqrl_td3.md):

    nice -n 10 python benchmarks/iqrl_benchmark.py --env-id InvertedPendulum-v5 --total-timesteps 3000
"""
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List

import numpy as np
import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# each mode gets its own --exp-name so parallel runs of one seed never share runs/{run_name}/
MODES = {
    "iQRL (FSQ)": ["--exp-name", "iqrl_td3"],
    "iQRL --no-fsq": ["--no-fsq", "--exp-name", "iqrl_td3_no_fsq"],
    "TD3 --no-encoder": ["--no-encoder", "--exp-name", "iqrl_td3_no_encoder"],
}


@dataclass
class Args:
    env_id: str = "InvertedPendulum-v5"
    """MuJoCo task to benchmark on"""
    total_timesteps: int = 3_000
    """environment steps per run"""
    learning_starts: int = 500
    """random warm-up steps per run"""
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds run for every mode"""
    parallel: int = 2
    """runs executed at the same time (each uses one torch thread)"""
    mlp_dims: List[int] = field(default_factory=lambda: [64, 64])
    """--mlp-dims of every run (actor, critics, dynamics)"""
    enc_mlp_dims: List[int] = field(default_factory=lambda: [64])
    """--enc-mlp-dims of every run"""
    latent_dim: int = 16
    """--latent-dim (FSQ groups) of every run"""
    batch_size: int = 64
    """--batch-size of every run"""
    learning_rate: float = 1e-3
    """--q-lr, --actor-lr and --enc-lr of every run"""
    exploration_noise_decay_steps: int = 1_000
    """--exploration-noise-decay-steps of every run"""
    eval_episodes: int = 5
    """--eval-episodes of every run"""
    runs_dir: str = "runs/iqrl_benchmark"
    """where the runs write TensorBoard logs and checkpoints"""
    output: str = os.path.join(REPO_ROOT, "benchmarks", "results", "iqrl_benchmark.txt")
    """the table (and the per-run lines) are also written to this file"""


def shared_flags(args: Args) -> List[str]:
    """Flags identical for every mode, so the three modes differ only in --no-fsq / --no-encoder."""
    lr = str(args.learning_rate)
    return [
        "--mlp-dims", *map(str, args.mlp_dims), "--enc-mlp-dims", *map(str, args.enc_mlp_dims),
        "--latent-dim", str(args.latent_dim), "--batch-size", str(args.batch_size),
        "--q-lr", lr, "--actor-lr", lr, "--enc-lr", lr,
        "--exploration-noise-decay-steps", str(args.exploration_noise_decay_steps),
        "--eval-episodes", str(args.eval_episodes),
    ]


def run_one(args: Args, mode_flags: List[str], seed: int) -> dict:
    command = [
        sys.executable, os.path.join(REPO_ROOT, "iqrl_td3.py"), "--env-id", args.env_id, "--seed", str(seed),
        "--total-timesteps", str(args.total_timesteps), "--learning-starts", str(args.learning_starts),
        "--runs-dir", args.runs_dir, "--torch-threads", "1", *shared_flags(args), *mode_flags,
    ]
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise RuntimeError(f"run failed ({' '.join(command)}): {last_line}")

    def parse(key: str) -> float:
        match = re.search(rf"{key}=(\S+)", result.stdout)
        return float(match.group(1)) if match else float("nan")

    return {
        "eval_return": parse("eval_return_mean"),
        "rank_1e-1": parse("final_latent_rank_pct_tol1e-01"),
        "rank_1e-2": parse("final_latent_rank_pct_tol1e-02"),
        "rank_1e-3": parse("final_latent_rank_pct_tol1e-03"),
        "s_per_1k_updates": parse("s_per_1k_updates"),
        "wall_s": time.time() - start,
    }


def mean_std(values: List[float], fmt: str) -> str:
    values = np.asarray(values, dtype=float)
    if np.isnan(values).all():
        return "-"
    return f"{np.nanmean(values):{fmt}} +- {np.nanstd(values):{fmt}}"


if __name__ == "__main__":
    args = tyro.cli(Args)
    jobs = [(name, flags, seed) for seed in args.seeds for name, flags in MODES.items()]
    bench_start = time.time()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {(name, seed): pool.submit(run_one, args, flags, seed) for name, flags, seed in jobs}
        results = {key: future.result() for key, future in futures.items()}
    total_minutes = (time.time() - bench_start) / 60

    td3_s = np.mean([results[("TD3 --no-encoder", seed)]["s_per_1k_updates"] for seed in args.seeds])
    lines = [
        f"iqrl_td3.py on {args.env_id}, {args.total_timesteps} env steps "
        f"({args.total_timesteps - args.learning_starts} updates), seeds {args.seeds}, "
        f"{args.parallel} runs in parallel, {total_minutes:.1f} min total",
        f"flags: --learning-starts {args.learning_starts} {' '.join(shared_flags(args))}",
        "",
        "| mode | eval return | latent rank % (tol 1e-1 / 1e-2 / 1e-3) | s per 1k updates | vs TD3 |",
        "|---|---|---|---|---|",
    ]
    per_run = []
    for name in MODES:
        runs = [results[(name, seed)] for seed in args.seeds]
        ranks = " / ".join(mean_std([r[f"rank_{tol}"] for r in runs], ".0f") for tol in ("1e-1", "1e-2", "1e-3"))
        s_per_1k = [r["s_per_1k_updates"] for r in runs]
        lines.append(
            f"| {name} | {mean_std([r['eval_return'] for r in runs], '.1f')} | {ranks} | "
            f"{mean_std(s_per_1k, '.1f')} | {np.mean(s_per_1k) / td3_s:.2f}x |"
        )
        for seed, r in zip(args.seeds, runs):
            rank = "/".join("-" if np.isnan(r[f"rank_{tol}"]) else f"{r[f'rank_{tol}']:.0f}" for tol in ("1e-1", "1e-2", "1e-3"))
            per_run.append(
                f"{name} seed {seed}: eval {r['eval_return']:.1f}, rank % {rank}, "
                f"{r['s_per_1k_updates']:.1f} s/1k updates, {r['wall_s']:.0f} s wall"
            )
    text = "\n".join(lines + ["", "per run:"] + per_run) + "\n"
    print(text, end="")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
