"""REPAINT benchmark on the transfer gridworld, laid out like the paper's table (Tao et al. 2021, Table 1).

Not a test: run it by hand (about 10-30 minutes on two shared CPU cores),

    nice -n 10 python benchmarks/repaint_benchmark.py

1. Teachers: plain PPO (`repaint_ppo.py --transfer none`) on the source tasks ``similar`` (goal one cell from
   the target's) and ``different`` (goal in the opposite corner of the room; only the way to the door is shared).
2. Students on the ``target`` task, `--seeds` seeds each: none (baseline), ks, it, repaint and warm_start with
   each teacher. All runs share every hyper-parameter except the transfer.
3. Score of an iteration: mean return of the student's episodes that ended in it (charts/episodic_return),
   carried forward over iterations where none ended, then averaged over seeds and smoothed with a moving average
   of `--smooth` iterations. The target score is the best score of the baseline; K is the first iteration at
   which a variant's score reaches it ("not reached" within the budget otherwise), with the reduction in
   iterations vs the baseline in percent. Per-seed K and each run's best (smoothed) score are reported too.

Runs execute repaint_ppo.py in-process (runpy) in `--jobs` worker processes, so the interpreter starts once
per worker. Writes the tables to benchmarks/results/repaint_benchmark.txt and the curves to a .json beside it.
"""

import contextlib
import io
import json
import math
import multiprocessing
import os
import re
import runpy
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "repaint_ppo.py")
ITERATION = re.compile(r"^iteration \d+/\d+ step \d+(?: return (\S+))?", re.M)
VARIANTS = ("none", "ks", "it", "repaint", "warm_start")
TEACHERS = ("similar", "different")


@dataclass
class Args:
    seeds: int = 5
    """student seeds per variant (1..seeds)"""
    jobs: int = 2
    """worker processes"""
    total_timesteps: int = 10_240
    """student steps per run (8 envs x 32 steps per iteration: 40 iterations)"""
    teacher_timesteps: int = 8192
    """steps of each teacher's training"""
    teacher_learning_rate: float = 2e-3
    """learning rate of the teachers' training"""
    teacher_seed: int = 7
    """seed of the teachers' training"""
    teachers: str = "similar,different"
    """comma-separated source tasks of the teachers"""
    extra: str = ""
    """more repaint_ppo.py options for every transfer run, given as --extra="--zeta 0.02 --beta-decay 0.8" """
    smooth: int = 3
    """moving-average window (iterations) of the score curves"""
    runs_dir: str = ""
    """where the runs go (default: a temporary directory)"""
    out: str = os.path.join(REPO_ROOT, "benchmarks", "results", "repaint_benchmark.txt")
    """the table file (the curves go to the same name with .json)"""


def run_repaint(argv: list[str]) -> tuple[list[float], str]:
    """One run of repaint_ppo.py in this process: the per-iteration mean return (nan where no episode ended)
    and the checkpoint path."""
    sys.path.insert(0, REPO_ROOT)
    sys.argv = [SCRIPT] + argv
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(SCRIPT, run_name="__main__")
    text = out.getvalue()
    returns = [float(m.group(1)) if m.group(1) else math.nan for m in ITERATION.finditer(text)]
    return returns, re.search(r"checkpoint saved to (\S+)", text).group(1)


def score_curve(returns: list[float]) -> np.ndarray:
    """Carry the last score forward over iterations where no episode ended (before the first: the first seen)."""
    curve = np.array(returns, dtype=float)
    first = curve[~np.isnan(curve)][0] if (~np.isnan(curve)).any() else 0.0
    last = first
    for i, value in enumerate(curve):
        last = last if np.isnan(value) else value
        curve[i] = last
    return curve


def smooth(curve: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter at the start)."""
    cumulative = np.cumsum(np.insert(curve, 0, 0.0))
    lo = np.maximum(np.arange(1, len(curve) + 1) - window, 0)
    return (cumulative[1:] - cumulative[lo]) / (np.arange(1, len(curve) + 1) - lo)


def iterations_to(target: float, curve: np.ndarray) -> int | None:
    reached = np.flatnonzero(curve >= target - 1e-9)
    return int(reached[0]) + 1 if reached.size else None


def main(args: Args):
    started = time.time()
    kinds = args.teachers.split(",")
    if not kinds or any(kind not in TEACHERS for kind in kinds):
        sys.exit(f"repaint_benchmark.py: error: bad --teachers {args.teachers!r}; expected a comma-separated subset of {', '.join(TEACHERS)}")
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="repaint-benchmark-")
    common = ["--runs-dir", runs_dir, "--env", "gridworld"]
    pool = multiprocessing.get_context("spawn").Pool(args.jobs)

    teacher_jobs = {
        kind: pool.apply_async(run_repaint, ([*common, "--task", kind, "--total-timesteps", str(args.teacher_timesteps),
                                              "--learning-rate", str(args.teacher_learning_rate),
                                              "--seed", str(args.teacher_seed), "--exp-name", f"teacher_{kind}"],))
        for kind in kinds
    }
    student = [*common, "--task", "target", "--total-timesteps", str(args.total_timesteps)]
    seeds = range(1, args.seeds + 1)
    jobs = {("none", "-", s): pool.apply_async(run_repaint, ([*student, "--seed", str(s), "--exp-name", "none"],))
            for s in seeds}
    teachers = {}
    for kind in kinds:
        returns, teachers[kind] = teacher_jobs[kind].get()
        print(f"teacher {kind}: final return {np.nanmean(returns[-4:]):.3f} on its source task", flush=True)
        teachers[kind + "_return"] = float(np.nanmean(returns[-4:]))
        for variant in VARIANTS[1:]:
            for s in seeds:
                argv = [*student, "--seed", str(s), "--transfer", variant, "--teacher", teachers[kind],
                        "--exp-name", f"{variant}_{kind}", *args.extra.split()]
                jobs[(variant, kind, s)] = pool.apply_async(run_repaint, (argv,))
    curves = {key: score_curve(job.get()[0]) for key, job in jobs.items()}
    pool.close()
    pool.join()

    mean_curve = {}
    for variant, kind, _ in curves:
        runs = [smooth(c, args.smooth) for (v, k, _), c in curves.items() if (v, k) == (variant, kind)]
        mean_curve[(variant, kind)] = np.mean(runs, axis=0)
    baseline = mean_curve[("none", "-")]
    target = float(baseline.max())
    k_base = iterations_to(target, baseline)

    def cell(variant, kind):
        k = iterations_to(target, mean_curve[(variant, kind)])
        return "not reached" if k is None else f"{k} ({100.0 * (k_base - k) / k_base:.0f}%)"

    def per_seed(variant, kind):
        ks = [iterations_to(target, smooth(c, args.smooth)) for (v, t, _), c in curves.items() if (v, t) == (variant, kind)]
        reached = [k for k in ks if k is not None]
        text = f"{np.mean(reached):.1f} +- {np.std(reached):.1f}" if reached else "-"
        return text + (f" ({len(reached)}/{len(ks)})" if len(reached) < len(ks) else "")

    def best(variant, kind):
        scores = [smooth(c, args.smooth).max() for (v, t, _), c in curves.items() if (v, t) == (variant, kind)]
        return f"{np.mean(scores):.3f} +- {np.std(scores):.3f}"

    num_iterations = len(baseline)
    lines = [
        "REPAINT benchmark: transfer gridworld (envs/transfer_gridworld.py), student task 'target' (best return 0.88)",
        f"command: nice -n 10 python benchmarks/repaint_benchmark.py --seeds {args.seeds} --jobs {args.jobs} "
        f"--total-timesteps {args.total_timesteps}" + (f" --teachers {args.teachers}" if kinds != list(TEACHERS) else "")
        + (f' --extra="{args.extra}"' if args.extra else ""),
        f"{args.seeds} seeds per variant, {num_iterations} iterations of 8 envs x 32 steps; scores = seed-mean of the "
        f"{args.smooth}-iteration moving average of the training episodic return",
        f"teachers (plain PPO, {args.teacher_timesteps} steps), return on their own task: "
        + ", ".join(f"{kind} {teachers[kind + '_return']:.3f}" for kind in kinds),
        "",
        "Iterations K to reach the target score (the best score of the baseline), reduction vs baseline:",
        "",
        "| teacher | target | K base | K KS | K IT | K REPAINT | K warm-start |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        lines.append(f"| {kind} | {target:.3f} | {k_base} | " + " | ".join(cell(v, kind) for v in VARIANTS[1:]) + " |")
    lines += ["", "Per-seed K (mean +- std over the seeds that reached the target; reached/total when not all did):", "",
              "| teacher | base | KS | IT | REPAINT | warm-start |", "|---|---|---|---|---|---|"]
    for kind in kinds:
        lines.append(f"| {kind} | {per_seed('none', '-')} | " + " | ".join(per_seed(v, kind) for v in VARIANTS[1:]) + " |")
    lines += ["", "Best score (per run: max of the smoothed curve; mean +- std over seeds):", "",
              "| teacher | base | KS | IT | REPAINT | warm-start |", "|---|---|---|---|---|---|"]
    for kind in kinds:
        lines.append(f"| {kind} | {best('none', '-')} | " + " | ".join(best(v, kind) for v in VARIANTS[1:]) + " |")
    lines += ["", "Initial score (seed-mean score of the first iteration with a finished episode):", "",
              "| teacher | base | KS | IT | REPAINT | warm-start |", "|---|---|---|---|---|---|"]
    for kind in kinds:
        first = [f"{np.mean([c[0] for (v, t, _), c in curves.items() if (v, t) == key]):.3f}"
                 for key in [("none", "-")] + [(v, kind) for v in VARIANTS[1:]]]
        lines.append(f"| {kind} | " + " | ".join(first) + " |")
    lines += ["", f"wall-clock: {(time.time() - started) / 60:.1f} min"]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"target": target, "curves": {f"{v}/{k}/{s}": c.tolist() for (v, k, s), c in curves.items()}}, f)


if __name__ == "__main__":
    main(tyro.cli(Args))
