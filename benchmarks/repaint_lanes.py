"""REPAINT on the CarRacing lanes at a CPU budget: an inner-lane teacher, outer-lane students with every mode.

The analogue of the REPAINT paper's DeepRacer single-car experiment (Tao et al., ICML 2021, arXiv 2011.11827): a
teacher rewarded for the inner lane teaches a student rewarded for the outer lane (`envs/car_racing.py`, `reward=`).
Not a test: run it by hand once the teacher exists, one run at a time (resumable: finished runs are cached in the
`.json` beside the table and skipped when the same command runs again),

    python repaint_ppo.py --env carracing --reward inner_lane --num-envs 8 --num-steps 128 --total-timesteps 100000
    python benchmarks/repaint_lanes.py --teacher runs/<that inner_lane run>/agent.pt

1. The teacher is evaluated deterministically on its own task (inner_lane) and on the target (outer_lane):
   `repaint_ppo.py --transfer warm_start --learning-rate 0` for one iteration leaves the teacher's weights as they
   are, and the run's final evaluation scores them.
2. Students on outer_lane, seeds 1..`--seeds` paired across modes: none, ks, it, repaint, warm_start, same flags.
3. Score of an iteration: mean return of the student's episodes that ended in it, carried forward over iterations
   where none ended (none before the first episode ends), smoothed over `--smooth` iterations, per seed; K = first
   iteration at which it reaches `--threshold` (also given in student steps). CarRacing episodes last 1000 steps
   (unless the car leaves the playfield), so the score changes about every 1000 / `--num-steps` iterations; the
   table counts the iterations in which an episode finished. Each run ends with `--eval-episodes` deterministic
   episodes on the same tracks (resets 10000, 10001, ...) for every run.

Writes benchmarks/results/repaint_lanes.txt (and the runs to repaint_lanes.json).
"""

import glob
import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITERATION = re.compile(r"^iteration \d+/\d+ step \d+(?: return (\S+))?.* SPS (\d+)$", re.M)
MODES = ("none", "ks", "it", "repaint", "warm_start")


@dataclass
class Args:
    teacher: str
    """the inner_lane teacher's agent.pt"""
    seeds: int = 3
    """student seeds per mode (1..seeds)"""
    jobs: int = 1
    """runs at a time"""
    total_timesteps: int = 4096
    """student steps per run"""
    num_envs: int = 1
    """student (and teacher) environments"""
    num_steps: int = 512
    """steps per student environment per iteration"""
    teacher_num_steps: int = 128
    """steps per teacher environment per iteration (it, repaint)"""
    threshold: float = 100.0
    """K is the first iteration whose smoothed outer-lane training return reaches this"""
    smooth: int = 1
    """moving-average window (iterations) of the per-seed score curves"""
    eval_episodes: int = 1
    """deterministic evaluation episodes at the end of every student run"""
    teacher_eval_episodes: int = 3
    """deterministic evaluation episodes of the teacher, on each reward"""
    eval_checkpoints: int = 0
    """if > 0: also score every student's final checkpoint on this many tracks (10000, 10001, ...), with a
    one-iteration `--transfer warm_start --learning-rate 0` run that leaves its weights unchanged"""
    runs_dir: str = os.path.join(REPO_ROOT, "runs", "repaint_lanes")
    """where the runs go"""
    out: str = os.path.join(REPO_ROOT, "benchmarks", "results", "repaint_lanes.txt")
    """the table file (the runs go to the same name with .json)"""


def run(argv: list[str]) -> dict:
    started = time.time()
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "repaint_ppo.py"), *argv], capture_output=True, text=True, cwd=REPO_ROOT
    )
    if result.returncode != 0:
        raise RuntimeError(f"repaint_ppo.py {' '.join(argv)} failed: {result.stderr.strip().splitlines()[-1:]}")
    text = result.stdout
    evaluation = re.search(r"eval_return_mean=(\S+) eval_return_std=(\S+)", text)
    return {
        "returns": [float(m.group(1)) if m.group(1) else math.nan for m in ITERATION.finditer(text)],
        "sps": [int(m.group(2)) for m in ITERATION.finditer(text)][-1],
        "eval": float(evaluation.group(1)),
        "eval_std": float(evaluation.group(2)),
        "minutes": (time.time() - started) / 60,
        "argv": argv,
    }


def run_all(todo: dict[str, list[str]], done: dict, cache: dict, cache_path: str, jobs: int) -> None:
    """Run every pending command in `jobs` threads; record each result in `done` and save the cache after each."""
    with ThreadPoolExecutor(jobs) as pool:
        futures = {key: pool.submit(run, argv) for key, argv in todo.items()}
        for key, future in futures.items():
            done[key] = future.result()
            with open(cache_path, "w") as f:
                json.dump(cache, f)
            print(
                f"{time.strftime('%H:%M:%S')} {key}: eval {done[key]['eval']:.1f} +- {done[key]['eval_std']:.1f}, "
                f"SPS {done[key]['sps']}, {done[key]['minutes']:.1f} min",
                flush=True,
            )


def score_curve(returns: list[float], window: int) -> np.ndarray:
    """Per iteration: the mean return of the episodes that ended in it, carried forward over iterations where none
    ended, averaged over the last `window` iterations that have a score; -inf before the first episode ends."""
    curve = np.array(returns, dtype=float)
    last = np.nan
    for i, value in enumerate(curve):
        last = last if np.isnan(value) else value
        curve[i] = last
    windows = [curve[max(0, i + 1 - window) : i + 1] for i in range(len(curve))]
    return np.array([w[~np.isnan(w)].mean() if (~np.isnan(w)).any() else -np.inf for w in windows])


def main(args: Args):
    started = time.time()
    cache_path = os.path.splitext(args.out)[0] + ".json"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    settings = {
        k: getattr(args, k)
        for k in (
            "teacher",
            "total_timesteps",
            "num_envs",
            "num_steps",
            "teacher_num_steps",
            "eval_episodes",
            "teacher_eval_episodes",
        )
    }
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    if cache.get("settings") != settings:
        cache = {"settings": settings, "runs": {}}
    done = cache["runs"]
    common = [
        "--env",
        "carracing",
        "--runs-dir",
        args.runs_dir,
        "--num-envs",
        str(args.num_envs),
    ]
    todo = {}
    for reward in ("inner_lane", "outer_lane"):
        todo[f"teacher on {reward}"] = [
            *common,
            "--reward",
            reward,
            "--transfer",
            "warm_start",
            "--teacher",
            args.teacher,
            "--learning-rate",
            "0",
            "--num-steps",
            "32",
            "--exp-name",
            "teacher_eval",
            "--total-timesteps",
            str(32 * args.num_envs),
            "--eval-episodes",
            str(args.teacher_eval_episodes),
        ]
    for seed in range(1, args.seeds + 1):  # seed-major: every mode of a seed finishes before the next seed starts
        for mode in MODES:
            argv = [
                *common,
                "--reward",
                "outer_lane",
                "--seed",
                str(seed),
                "--transfer",
                mode,
                "--num-steps",
                str(args.num_steps),
                "--teacher-num-steps",
                str(args.teacher_num_steps),
                "--total-timesteps",
                str(args.total_timesteps),
                "--exp-name",
                f"lanes_{mode}",
                "--eval-episodes",
                str(args.eval_episodes),
            ]
            todo[f"{mode} {seed}"] = argv + ([] if mode == "none" else ["--teacher", args.teacher])
    todo = {key: argv for key, argv in todo.items() if key not in done}
    run_all(todo, done, cache, cache_path, args.jobs)

    seeds = range(1, args.seeds + 1)
    if args.eval_checkpoints:
        todo = {}
        for key in (f"{mode} {seed}" for seed in seeds for mode in MODES):
            mode, seed = key.split()
            pattern = os.path.join(args.runs_dir, f"*__lanes_{mode}__{mode}__{seed}__*", "agent.pt")
            if f"{key} eval{args.eval_checkpoints}" not in done:
                checkpoint = max(glob.glob(pattern), key=os.path.getmtime)
                todo[f"{key} eval{args.eval_checkpoints}"] = [
                    *common, "--eval-episodes", str(args.eval_checkpoints), "--reward", "outer_lane", "--transfer",
                    "warm_start", "--teacher", checkpoint, "--learning-rate", "0", "--num-steps", "32",
                    "--total-timesteps", str(32 * args.num_envs), "--exp-name", "student_eval"]  # fmt: skip
        run_all(todo, done, cache, cache_path, args.jobs)
    lines = [
        "REPAINT on the CarRacing lanes: inner_lane teacher -> outer_lane student (envs/car_racing.py, reward=)",
        f"command: python benchmarks/repaint_lanes.py --teacher {args.teacher} --seeds {args.seeds} "
        f"--total-timesteps {args.total_timesteps} --num-envs {args.num_envs} --num-steps {args.num_steps} "
        f"--teacher-num-steps {args.teacher_num_steps} --threshold {args.threshold} --smooth {args.smooth} "
        f"--eval-episodes {args.eval_episodes} --teacher-eval-episodes {args.teacher_eval_episodes} "
        f"--runs-dir {args.runs_dir} --out {args.out}"
        + (f" --eval-checkpoints {args.eval_checkpoints}" if args.eval_checkpoints else ""),
        f"budget: {args.total_timesteps} student steps = {args.total_timesteps // (args.num_envs * args.num_steps)} iter. "
        f"of {args.num_envs} envs x {args.num_steps} steps per run (it, repaint: + {args.num_envs} x {args.teacher_num_steps} "
        f"teacher steps per iteration); seeds 1..{args.seeds}, paired across modes",
        f"threshold: smoothed ({args.smooth} iterations) outer-lane training return >= {args.threshold}; "
        f"final eval: {args.eval_episodes} deterministic episodes, the same tracks for every run",
        f"teacher, deterministic return over {args.teacher_eval_episodes} tracks: "
        + ", ".join(
            f"{reward} {done[f'teacher on {reward}']['eval']:.1f} +- {done[f'teacher on {reward}']['eval_std']:.1f}"
            for reward in ("inner_lane", "outer_lane")
        ),
        "",
        "| mode | K mean +- std (reached) | K per seed | K in student steps per seed | iterations with a finished "
        "episode, per seed | best smoothed return per seed | final eval per seed | final eval mean +- std | SPS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    n = args.eval_checkpoints
    for mode in MODES:
        runs = [done[f"{mode} {s}"] for s in seeds]
        curves = [score_curve(r["returns"], args.smooth) for r in runs]
        ks = [int(np.flatnonzero(c >= args.threshold)[0]) + 1 if (c >= args.threshold).any() else None for c in curves]
        reached = [k for k in ks if k is not None]
        k_text = (f"{np.mean(reached):.1f} +- {np.std(reached):.1f}" if reached else "-") + f" ({len(reached)}/{len(ks)})"
        evals = [r["eval"] for r in runs]
        ended = " ".join(str(sum(not math.isnan(x) for x in r["returns"])) for r in runs)
        best = " ".join("-" if not np.isfinite(c.max()) else f"{c.max():.0f}" for c in curves)
        lines.append(
            f"| {mode} | {k_text} | {' '.join('-' if k is None else str(k) for k in ks)} | "
            f"{' '.join('-' if k is None else str(k * args.num_envs * args.num_steps) for k in ks)} | {ended} | "
            f"{best} | {' '.join(f'{e:.0f}' for e in evals)} | "
            f"{np.mean(evals):.1f} +- {np.std(evals):.1f} | {np.mean([r['sps'] for r in runs]):.0f} |"
        )
    if n:
        lines += [
            "",
            f"Final checkpoints, deterministic return on tracks 10000..{10000 + n - 1} (mean +- std over the {n} "
            "tracks per seed; last column: mean +- std of the per-seed means):",
            "",
            "| mode | " + " | ".join(f"seed {s}" for s in seeds) + " | over seeds |",
            "|---|" + "---|" * (len(seeds) + 1),
        ]
        for mode in MODES:
            per_seed = [done[f"{mode} {s} eval{n}"] for s in seeds]
            means = [r["eval"] for r in per_seed]
            lines.append(
                f"| {mode} | "
                + " | ".join(f"{r['eval']:.1f} +- {r['eval_std']:.1f}" for r in per_seed)
                + f" | {np.mean(means):.1f} +- {np.std(means):.1f} |"
            )
    cache["minutes"] = cache.get("minutes", 0.0) + (time.time() - started) / 60
    with open(cache_path, "w") as f:
        json.dump(cache, f)
    lines += [
        "",
        f"wall-clock: {cache['minutes']:.1f} min over the invocations that ran these runs; per run: "
        + ", ".join(f"{k} {v['minutes']:.0f}" for k, v in done.items())
        + " min",
    ]
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
