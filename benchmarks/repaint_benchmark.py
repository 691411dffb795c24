"""REPAINT benchmark on the transfer gridworld: iterations to a threshold, per seed, for every transfer mode.

Not a test: run it by hand (about an hour on two shared CPU cores; resumable: finished runs are cached in the
`.json` beside the table and skipped when the same command runs again),

    nice -n 10 python benchmarks/repaint_benchmark.py

1. Teachers (`repaint_ppo.py --transfer none`, 8192 steps, seed 1): ``similar`` (goal one cell from the target's),
   ``different`` (goal (0, 4): the target's corridor, then the wrong side of the room; the analogue of the REPAINT
   paper's inner-lane teacher for an outer-lane student) and ``useless`` (an untrained network: learning rate 0).
2. Students on ``target`` with seeds 1..`--seeds`, paired across modes (same initial weights and draws for a seed):
   none, ks, it, repaint and warm_start with each teacher, all with the same hyper-parameters; then short sweeps
   with the different teacher: REPAINT with other `--beta-decay` and `--zeta`, and REPAINT and IT with the kept
   teacher advantages scaled by the student batch's std instead of the teacher batch's (`--teacher-adv-norm`).
3. Score of an iteration: mean return of the student's episodes that ended in it, carried forward over iterations
   where none ended, smoothed with a trailing moving average of `--smooth` iterations, per seed. K = the first
   iteration at which a seed's score reaches the threshold (90% of the optimum 0.88, below the ceiling so that one
   noisy episode does not decide); reported per seed, as mean +- std over the seeds that reached it, and the count.
   Each run also ends with a deterministic (argmax) evaluation; its return is reported per seed.

Writes benchmarks/results/repaint_benchmark.txt, the runs' curves to repaint_benchmark.json and the mean curves to
repaint_benchmark.png.
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
MODES = ("none", "ks", "it", "repaint", "warm_start")
TEACHERS = {  # name: repaint_ppo.py options of its training
    "similar": ["--task", "similar", "--learning-rate", "0.002"],
    "different": ["--task", "different", "--learning-rate", "0.002"],
    "useless": ["--task", "target", "--learning-rate", "0"],
}
SWEEPS = {  # label: (mode, extra options), all with the different teacher
    "repaint beta_decay 0.8": ("repaint", ["--beta-decay", "0.8"]),
    "repaint beta_decay 0.95": ("repaint", ["--beta-decay", "0.95"]),
    "repaint zeta 0.01": ("repaint", ["--zeta", "0.01"]),
    "repaint zeta 0.05": ("repaint", ["--zeta", "0.05"]),
    "repaint adv/student std": ("repaint", ["--teacher-adv-norm", "student"]),
    "it adv/student std": ("it", ["--teacher-adv-norm", "student"]),
}


@dataclass
class Args:
    seeds: int = 5
    """student seeds per mode (1..seeds)"""
    jobs: int = 2
    """worker processes"""
    total_timesteps: int = 10_240
    """student steps per run (8 envs x 32 steps per iteration: 40 iterations)"""
    teacher_timesteps: int = 8192
    """steps of each teacher's training"""
    teacher_seed: int = 1
    """seed of the teachers' training"""
    threshold: float = 0.9
    """K is the first iteration whose score reaches this fraction of the optimum 0.88"""
    smooth: int = 3
    """moving-average window (iterations) of the per-seed score curves"""
    sweeps: bool = True
    """also run the beta_decay / zeta / advantage-scale sweeps with the different teacher"""
    runs_dir: str = ""
    """where the runs go (default: a temporary directory)"""
    out: str = os.path.join(REPO_ROOT, "benchmarks", "results", "repaint_benchmark.txt")
    """the table file (the runs go to the same name with .json, the curves plot with .png)"""


def run_repaint(argv: list[str]) -> dict:
    """One run of repaint_ppo.py in this process: per-iteration mean return (nan where no episode ended), checkpoint,
    final deterministic evaluation."""
    sys.path.insert(0, REPO_ROOT)
    sys.argv = [SCRIPT] + argv
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        runpy.run_path(SCRIPT, run_name="__main__")
    text = out.getvalue()
    return {"returns": [float(m.group(1)) if m.group(1) else math.nan for m in ITERATION.finditer(text)],
            "checkpoint": re.search(r"checkpoint saved to (\S+)", text).group(1),
            "eval": float(re.search(r"eval_return_mean=(\S+)", text).group(1))}


def score_curve(returns: list[float], window: int) -> np.ndarray:
    """Carry the last score forward over iterations where no episode ended (before the first: the first seen), then
    a trailing moving average of `window` iterations."""
    curve = np.array(returns, dtype=float)
    seen = curve[~np.isnan(curve)]
    last = seen[0] if seen.size else -0.5
    for i, value in enumerate(curve):
        last = last if np.isnan(value) else value
        curve[i] = last
    cumulative = np.cumsum(np.insert(curve, 0, 0.0))
    lo = np.maximum(np.arange(1, len(curve) + 1) - window, 0)
    return (cumulative[1:] - cumulative[lo]) / (np.arange(1, len(curve) + 1) - lo)


def iterations_to(target: float, curve: np.ndarray) -> int | None:
    reached = np.flatnonzero(curve >= target - 1e-9)
    return int(reached[0]) + 1 if reached.size else None


def summary(ks: list) -> str:
    reached = [k for k in ks if k is not None]
    text = f"{np.mean(reached):.1f} +- {np.std(reached):.1f}" if reached else "-"
    return f"{text} ({len(reached)}/{len(ks)})"


def main(args: Args):
    started = time.time()
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="repaint-benchmark-")
    cache_path = os.path.splitext(args.out)[0] + ".json"
    settings = {"total_timesteps": args.total_timesteps, "teacher_timesteps": args.teacher_timesteps,
                "teacher_seed": args.teacher_seed}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    if cache.get("settings") != settings:
        cache = {"settings": settings, "runs": {}}
    done = cache["runs"]
    common = ["--runs-dir", runs_dir, "--env", "gridworld", "--eval-episodes", "1"]
    pool = multiprocessing.get_context("spawn").Pool(args.jobs)

    def submit(jobs: dict, key: str, argv: list[str]):
        if key not in done or not (key.startswith("student") or os.path.exists(done[key]["checkpoint"])):
            jobs[key] = pool.apply_async(run_repaint, (argv,))

    def collect(jobs: dict):
        for key, job in jobs.items():
            done[key] = job.get()
            with open(cache_path, "w") as f:
                json.dump(cache, f)
            print(f"{key}: eval {done[key]['eval']:.3f}  ({(time.time() - started) / 60:.1f} min)", flush=True)

    jobs = {}
    for name, options in TEACHERS.items():
        submit(jobs, f"teacher {name}", [*common, *options, "--total-timesteps", str(args.teacher_timesteps),
                                         "--seed", str(args.teacher_seed), "--exp-name", f"teacher_{name}"])
    collect(jobs)
    student = [*common, "--task", "target", "--total-timesteps", str(args.total_timesteps)]
    seeds = range(1, args.seeds + 1)
    jobs = {}
    for s in seeds:
        submit(jobs, f"student none - {s}", [*student, "--seed", str(s), "--exp-name", "none"])
        for name in TEACHERS:
            for mode in MODES[1:]:
                submit(jobs, f"student {mode} {name} {s}", [*student, "--seed", str(s), "--transfer", mode,
                                                             "--teacher", done[f"teacher {name}"]["checkpoint"]])
        for label, (mode, extra) in SWEEPS.items() if args.sweeps else ():
            submit(jobs, f"student {label} different {s}", [*student, "--seed", str(s), "--transfer", mode, *extra,
                                                             "--teacher", done["teacher different"]["checkpoint"]])
    collect(jobs)
    pool.close()
    pool.join()

    target = args.threshold * 0.88
    curves = {key: score_curve(run["returns"], args.smooth) for key, run in done.items() if key.startswith("student")}

    def runs(mode: str, teacher: str) -> list[str]:
        return [f"student {mode} {teacher} {s}" for s in seeds]

    def k_of(mode: str, teacher: str) -> list:
        return [iterations_to(target, curves[k]) for k in runs(mode, teacher)]

    def row(label: str, mode: str, teacher: str) -> str:
        ks, evals = k_of(mode, teacher), [done[k]["eval"] for k in runs(mode, teacher)]
        per_seed = " ".join("-" if k is None else str(k) for k in ks)
        # paired with the baseline of the same seed; a seed that never reaches the threshold counts as budget + 1
        censored = [num_iterations + 1 if k is None else k for k in ks]
        base = [num_iterations + 1 if k is None else k for k in k_of("none", "-")]
        differences = np.subtract(censored, base)
        return (f"| {label} | {summary(ks)} | {per_seed} | {sum(differences < 0)}/{len(ks)} | "
                f"{differences.mean():+.1f} | {np.mean(evals):.3f} +- {np.std(evals):.3f} | "
                f"{sum(e >= target for e in evals)}/{len(evals)} |")

    num_iterations = len(next(iter(curves.values())))
    header = ["| teacher / mode | K mean +- std (reached) | K per seed | seeds faster than none | mean paired K - K_none | "
              "final eval return | final eval >= threshold |", "|---|---|---|---|---|---|---|"]
    lines = [
        "REPAINT benchmark: transfer gridworld (envs/transfer_gridworld.py), student task 'target' (optimum 0.88)",
        f"command: nice -n 10 python benchmarks/repaint_benchmark.py --seeds {args.seeds} --total-timesteps "
        f"{args.total_timesteps} --teacher-seed {args.teacher_seed} --threshold {args.threshold}"
        + ("" if args.sweeps else " --no-sweeps"),
        f"seeds 1..{args.seeds} per mode, paired across modes; {num_iterations} iterations of 8 envs x 32 steps; "
        f"score = {args.smooth}-iteration moving average of the training episodic return, per seed",
        f"threshold = {args.threshold} x 0.88 = {target:.3f}; K = first iteration with score >= threshold ('-': not "
        f"within {num_iterations}); final eval = one deterministic (argmax) episode after training",
        f"teachers (plain PPO, seed {args.teacher_seed}), deterministic return on their own task: "
        + ", ".join(f"{name} {done[f'teacher {name}']['eval']:.3f}" for name in TEACHERS),
        "", *header, row("no teacher: none", "none", "-"),
    ]
    for name in TEACHERS:
        lines += [row(f"{name}: {mode}", mode, name) for mode in MODES[1:]]
    if args.sweeps:
        lines += ["", "Sweeps with the different teacher (defaults: beta 1, beta_decay 0.9, zeta 0, teacher-batch std):",
                  "", *header, row("different: repaint (defaults)", "repaint", "different")]
        lines += [row(f"different: {label}", label, "different") for label in SWEEPS]
    cache["minutes"] = cache.get("minutes", 0.0) + (time.time() - started) / 60
    with open(cache_path, "w") as f:
        json.dump(cache, f)
    lines += ["", f"wall-clock: {cache['minutes']:.1f} min over the invocations that ran these runs"]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    plot(curves, seeds, target, os.path.splitext(args.out)[0] + ".png")


def plot(curves: dict, seeds, target: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TEACHERS), figsize=(5 * len(TEACHERS), 3.8), sharey=True)
    for ax, name in zip(axes, TEACHERS):
        for mode in MODES:
            teacher = "-" if mode == "none" else name
            runs = np.array([curves[f"student {mode} {teacher} {s}"] for s in seeds])
            x = np.arange(1, runs.shape[1] + 1)
            line, = ax.plot(x, runs.mean(axis=0), label=mode)
            ax.fill_between(x, runs.min(axis=0), runs.max(axis=0), color=line.get_color(), alpha=0.1)
        ax.axhline(target, color="k", ls=":", lw=1)
        ax.set_title(f"{name} teacher")
        ax.set_xlabel("iteration (256 student steps)")
    axes[0].set_ylabel("training return (seed mean; band: min-max)")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main(tyro.cli(Args))
