"""Benchmark (not a test): iQRL vs. --no-fsq vs. --no-encoder (TD3) with the same code path in iqrl_td3.py.

Runs every (mode, seed) of `iqrl_td3.py` as a subprocess (at most `--parallel` at a time, seeds interleaved so
each mode sees the same machine load), parses the lines the script prints at the end and prints a table:
final deterministic eval return (mean +- std over seeds), latent rank as % of full rank on a replay batch, and
wall-clock seconds per 1k updates, also relative to TD3 in the same run. The table is also written to
`--output`. Example (the command behind docs/iqrl_td3.md):

    nice -n 10 python benchmarks/iqrl_benchmark.py --env-id InvertedPendulum-v5 --total-timesteps 10000
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
MODES = {"iQRL (FSQ)": [], "iQRL --no-fsq": ["--no-fsq"], "TD3 --no-encoder": ["--no-encoder"]}


@dataclass
class Args:
    env_id: str = "InvertedPendulum-v5"
    """MuJoCo task to benchmark on"""
    total_timesteps: int = 10_000
    """environment steps per run"""
    learning_starts: int = 1_000
    """random warm-up steps per run"""
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds run for every mode"""
    parallel: int = 2
    """runs executed at the same time (each uses one torch thread)"""
    extra_flags: str = (
        "--mlp-dims 256 256 --enc-mlp-dims 256 --latent-dim 64 --batch-size 128 "
        "--exploration-noise-decay-steps 5000 --eval-episodes 10"
    )
    """flags passed unchanged to every run (network sizes etc.; keep them identical across modes)"""
    runs_dir: str = "runs/iqrl_benchmark"
    """where the runs write TensorBoard logs and checkpoints"""
    output: str = os.path.join(REPO_ROOT, "benchmarks", "results", "iqrl_benchmark.txt")
    """the table (and the per-run lines) are also written to this file"""


def run_one(args: Args, mode_flags: List[str], seed: int) -> dict:
    command = [
        sys.executable, os.path.join(REPO_ROOT, "iqrl_td3.py"), "--env-id", args.env_id, "--seed", str(seed),
        "--total-timesteps", str(args.total_timesteps), "--learning-starts", str(args.learning_starts),
        "--runs-dir", args.runs_dir, "--torch-threads", "1", *args.extra_flags.split(), *mode_flags,
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
        f"flags: --learning-starts {args.learning_starts} {args.extra_flags}",
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
        per_run += [
            f"{name} seed {seed}: eval {r['eval_return']:.1f}, rank % {r['rank_1e-1']:.0f}/{r['rank_1e-2']:.0f}/"
            f"{r['rank_1e-3']:.0f}, {r['s_per_1k_updates']:.1f} s/1k updates, {r['wall_s']:.0f} s wall"
            for seed, r in zip(args.seeds, runs)
        ]
    text = "\n".join(lines + ["", "per run:"] + per_run) + "\n"
    print(text, end="")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
