"""Benchmark (not a test): iQRL vs. its --no-fsq ablation vs. standard TD3 (`--algo td3`) on MuJoCo, several seeds.

Runs every (env, mode, seed) of `iqrl_td3.py` as a niced subprocess, `--parallel` at a time, seed-major (all
env/mode pairs of seed 1 first, then seed 2, ...) so an interrupted benchmark still has complete seeds.
Resumable: a run that finished (its log has `eval_return_mean=`) is skipped, an unfinished one continues from its
checkpoint (`--resume`, written every `--save-every` env steps); rerun the same command after a stop.
The script is frozen at the first launch (copied with `envs/` into `{root}/code/`, commit recorded), so later
edits of the working tree never mix into a running benchmark.

    nice -n 10 python benchmarks/iqrl_benchmark.py            # run / resume everything
    python benchmarks/iqrl_benchmark.py --report              # table + PNGs from what has finished

`--report` writes `benchmarks/results/iqrl_benchmark.txt` (per-run lines, mean +- std table), the learning curves
(training episodic return vs env steps, mean +- std band over seeds) and the pre-FSQ rank curves as PNG in docs/.
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List

import numpy as np
import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {
    "iqrl": [],
    "iqrl-no-fsq": ["--no-fsq"],
    "td3": ["--algo", "td3", "--mlp-dims", "256", "256"],
    "iqrl-fp32": ["--precision", "fp32"],
}


@dataclass
class Args:
    root: str = os.path.join(REPO_ROOT, "runs", "iqrl_benchmark")
    """folder of the frozen code, the runs and their logs"""
    env_ids: List[str] = field(default_factory=lambda: ["Hopper-v5", "HalfCheetah-v5"])
    """MuJoCo tasks"""
    modes: List[str] = field(default_factory=lambda: ["iqrl", "iqrl-no-fsq", "td3"])
    """modes run for every env and seed (iqrl, iqrl-no-fsq, td3, iqrl-fp32)"""
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds of every (env, mode)"""
    extra_runs: List[str] = field(default_factory=list)
    """extra env:mode:seed runs queued after the main grid (e.g. Hopper-v5:iqrl-fp32:1)"""
    total_timesteps: int = 4_000
    """environment steps per run"""
    flags: str = (
        "--learning-starts 2000 --mlp-dims 128 128 --enc-mlp-dims 128 --latent-dim 32 "
        "--exploration-noise-decay-steps 5000 --log-every 500 --eval-episodes 5 --save-every 2000"
    )
    """flags shared by every run, one string (td3 ignores the iQRL-only ones and keeps its 256-256 networks)"""
    parallel: int = 18
    """runs at the same time (one torch thread each)"""
    report: bool = False
    """only build the tables and plots from what the runs logged so far"""
    at_step: int = 3_000
    """the second table compares every run that reached this env step, from its TensorBoard logs"""
    output: str = os.path.join(REPO_ROOT, "benchmarks", "results", "iqrl_benchmark.txt")
    """the table and per-run lines"""
    plot_prefix: str = os.path.join(REPO_ROOT, "docs", "iqrl_benchmark")
    """PNG files {prefix}_returns.png and {prefix}_rank.png"""


def runs(args: Args):
    grid = [(env, mode, seed) for seed in args.seeds for env in args.env_ids for mode in args.modes]
    extra = [(e, m, int(s)) for e, m, s in (r.split(":") for r in args.extra_runs)]
    return grid + [r for r in extra if r not in grid]


def run_dir(args: Args, env: str, mode: str, seed: int) -> str:
    return os.path.join(args.root, f"{env}__{mode}__s{seed}")


def freeze_code(args: Args) -> str:
    code = os.path.join(args.root, "code")
    if not os.path.exists(os.path.join(code, "iqrl_td3.py")):
        os.makedirs(code, exist_ok=True)
        shutil.copy(os.path.join(REPO_ROOT, "iqrl_td3.py"), code)
        shutil.copytree(os.path.join(REPO_ROOT, "envs"), os.path.join(code, "envs"), dirs_exist_ok=True)
        commit = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "-C", REPO_ROOT, "status", "--porcelain", "iqrl_td3.py"], capture_output=True, text=True
        )
        with open(os.path.join(code, "COMMIT"), "w") as f:
            f.write(commit.strip() + (" (+ uncommitted iqrl_td3.py changes)" if dirty.stdout.strip() else "") + "\n")
    return os.path.join(code, "iqrl_td3.py")


def run_one(args: Args, script: str, env: str, mode: str, seed: int) -> str:
    folder = run_dir(args, env, mode, seed)
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(folder, "log.txt")
    if os.path.exists(log) and "eval_return_mean=" in open(log).read():
        return f"{env} {mode} seed {seed}: done before"
    checkpoints = glob.glob(os.path.join(folder, "runs", "*", "agent.pt"))
    command = [sys.executable, script, "--total-timesteps", str(args.total_timesteps), "--torch-threads", "1"]
    if checkpoints:
        command += ["--resume", checkpoints[0]]
    else:
        command += [
            "--env-id",
            env,
            "--seed",
            str(seed),
            "--runs-dir",
            os.path.join(folder, "runs"),
            *shlex.split(args.flags),
            *MODES[mode],
        ]
    start = time.time()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(command)}\n")
        f.flush()
        code = subprocess.run(["nice", "-n", "10", *command], stdout=f, stderr=subprocess.STDOUT, cwd=folder).returncode
    return f"{env} {mode} seed {seed}: exit {code} after {time.time() - start:.0f}s"


def parse(log_path: str) -> dict:
    text = open(log_path).read() if os.path.exists(log_path) else ""
    values = {k: float(v) for k, v in re.findall(r"(\w+)=(-?[\d.]+(?:e[-+]?\d+)?)\b", text.split("\n$ ")[-1])}
    values.update({k: float(v) for k, v in re.findall(r"(final_[\w-]+|eval_return_\w+)=(-?[\d.]+(?:e[-+]?\d+)?)", text)})
    return values


def scalars(folder: str, tag: str):
    """(steps, values) of one TensorBoard tag over all event files of a run (resumed runs have several)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = {}
    for events in sorted(glob.glob(os.path.join(folder, "runs", "*", "events.out.tfevents.*"))):
        accumulator = EventAccumulator(events, size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            points.update({e.step: e.value for e in accumulator.Scalars(tag)})
    steps = np.array(sorted(points))
    return steps, np.array([points[s] for s in steps])


def report(args: Args):
    import matplotlib

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # nanmean/nanstd of grid points no seed reached
    import matplotlib.pyplot as plt

    lines, rows = [], []
    for env in args.env_ids:
        for mode in args.modes + sorted({m for _, m, _ in runs(args)} - set(args.modes)):
            results = []
            for seed in sorted({s for e, m, s in runs(args) if e == env and m == mode}):
                values = parse(os.path.join(run_dir(args, env, mode, seed), "log.txt"))
                if "eval_return_mean" not in values:
                    continue
                results.append(values)
                rank = "/".join(f"{values.get(f'final_rank_pre_fsq_tol1e-0{k}', float('nan')):.2f}" for k in (1, 2, 3))
                lines.append(f"{env} {mode} seed {seed}: eval {values['eval_return_mean']:.1f} "
                             f"(+- {values['eval_return_std']:.1f} over episodes), pre-FSQ rank share {rank}, "
                             f"{values.get('s_per_1k_updates', float('nan')):.1f} s per 1k updates")  # fmt: skip
            if not results:
                continue

            def stat(key, fmt="{:.1f}"):
                v = np.array([r.get(key, np.nan) for r in results])
                return "-" if np.isnan(v).all() else f"{fmt.format(np.nanmean(v))} +- {fmt.format(np.nanstd(v))}"

            rows.append(f"| {env} | {mode} | {len(results)} | {stat('eval_return_mean')} | "
                        f"{stat('final_rank_pre_fsq_tol1e-02', '{:.2f}')} | {stat('final_rank_pre_fsq_tol1e-03', '{:.2f}')} | "
                        f"{stat('final_rank_post_fsq_tol1e-03', '{:.2f}')} | {stat('s_per_1k_updates')} |")  # fmt: skip
    code = os.path.join(args.root, "code", "COMMIT")
    header = [f"iqrl_td3.py (commit {open(code).read().strip() if os.path.exists(code) else '?'}), "
              f"{args.total_timesteps} env steps per run; flags: {args.flags}", "",
              "| env | mode | seeds | final eval return | pre-FSQ rank share tol 1e-2 | tol 1e-3 | post-FSQ rank tol 1e-3 | "
              "s per 1k updates |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    # every run that reached --at-step, read from TensorBoard: training return of the episodes that ended in the
    # 1000 steps before it, and the last pre-FSQ rank logged at or before it
    at_rows, at_lines = [], []
    for env in args.env_ids:
        for mode in args.modes:
            found = []
            for seed in sorted({s for e, m, s in runs(args) if e == env and m == mode}):
                folder = run_dir(args, env, mode, seed)
                sps_steps, _ = scalars(folder, "charts/SPS")  # logged at every 1000th env step
                if not len(sps_steps) or sps_steps[-1] < args.at_step:
                    continue
                steps, returns = scalars(folder, "charts/episodic_return")
                window = returns[(steps > args.at_step - 1000) & (steps <= args.at_step)]
                ranks = []
                for tol in ("1e-02", "1e-03"):
                    rank_steps, rank_values = scalars(folder, f"representation/rank_pre_fsq/tol{tol}")
                    before = rank_values[rank_steps <= args.at_step]
                    ranks.append(before[-1] if len(before) else np.nan)
                found.append((window.mean() if len(window) else np.nan, *ranks))
                at_lines.append(f"{env} {mode} seed {seed}: training return {found[-1][0]:.1f} ({len(window)} episodes), "
                                f"pre-FSQ rank share {ranks[0]:.3f} / {ranks[1]:.3f}")  # fmt: skip
            if found:
                v = np.array(found)
                cells = ["-" if np.isnan(c).all() else
                         f"{np.nanmean(c):.{d}f} +- {np.nanstd(c):.{d}f} (n={np.sum(~np.isnan(c))})"
                         for c, d in zip(v.T, (1, 3, 3))]  # fmt: skip
                at_rows.append(f"| {env} | {mode} | {len(found)} | {' | '.join(cells)} |")
    at_header = ["", f"at env step {args.at_step} (from TensorBoard; every run that got there):", "",
                 "| env | mode | seeds | training return, episodes ending in the last 1000 steps | pre-FSQ rank share "
                 "tol 1e-2 | tol 1e-3 |", "|---|---|---|---|---|---|"]  # fmt: skip
    text = (
        "\n".join(
            header
            + rows
            + at_header
            + at_rows
            + ["", "per run (final deterministic evaluation, 5 episodes):"]
            + lines
            + ["", f"per run at env step {args.at_step}:"]
            + at_lines
        )
        + "\n"
    )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    print(text)

    grid = np.linspace(0, args.total_timesteps, 26)
    figures = {
        "returns": [("charts/episodic_return", "training episodic return")],
        "rank": [(f"representation/rank_pre_fsq/tol{tol}", f"pre-FSQ rank / D (tol {tol})") for tol in ("1e-02", "1e-03")],
    }
    all_modes = args.modes + sorted({m for _, m, _ in runs(args)} - set(args.modes))
    for kind, tags in figures.items():
        fig, axes = plt.subplots(len(tags), len(args.env_ids), figsize=(6 * len(args.env_ids), 4 * len(tags)), squeeze=False)
        for row, (tag, ylabel) in enumerate(tags):
            for ax, env in zip(axes[row], args.env_ids):
                for mode in all_modes:
                    curves = []
                    for seed in sorted({s for e, m, s in runs(args) if e == env and m == mode}):
                        steps, values = scalars(run_dir(args, env, mode, seed), tag)
                        if len(steps) > 1:
                            curves.append(np.interp(grid, steps, values, left=np.nan, right=np.nan))
                    if not curves:
                        continue
                    mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
                    ax.plot(grid, mean, label=f"{mode} ({len(curves)} seeds)")
                    ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
                ax.set_title(env)
                ax.set_xlabel("environment steps")
                ax.set_ylabel(ylabel)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend()
        fig.tight_layout()
        fig.savefig(f"{args.plot_prefix}_{kind}.png", dpi=90)
        plt.close(fig)


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.report:
        report(args)
        sys.exit(0)
    script = freeze_code(args)
    print(f"frozen code: {script}", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        for line in pool.map(lambda r: run_one(args, script, *r), runs(args)):
            print(time.strftime("%H:%M:%S"), line, flush=True)
