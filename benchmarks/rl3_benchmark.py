"""Small-budget RL^2 vs RL^3 benchmark (issue 8): bandits (H=100), random MDPs (H=100), 11x11 gridworlds.

For every domain and seed, RL^2 and RL^3 (and RL^3-coarse on the gridworld) train for the same number of
steps with the same settings; each run evaluates on held-out tasks in and out of distribution
(`rl3_meta.py` writes `eval.json`). The runs go through a queue, `--parallel` (2) at a time in the order
seed, domain, algorithm, so the algorithms being compared run under the same load and their wall-clock per iteration is comparable.
Prints a markdown table (also written to `--output`).

    nice -n 10 python benchmarks/rl3_benchmark.py
"""

import glob
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import tyro

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Args:
    seeds: tuple[int, ...] = (1, 2, 3)
    """training seeds of every configuration"""
    bandit_iterations: int = 20
    """PPO iterations on bandits (32 tasks x H=100 = 3200 steps each)"""
    mdp_iterations: int = 15
    """PPO iterations on random MDPs (32 tasks x H=100 = 3200 steps each)"""
    gridworld_iterations: int = 15
    """PPO iterations on 11x11 gridworlds (8 tasks x H=250 = 2000 steps each)"""
    update_epochs: int = 8
    """PPO epochs per iteration (the reference's 8; KL early stopping may end an iteration sooner)"""
    learning_rate: float = 1e-3
    """Adam learning rate of every run (higher than the paper's for the small budget)"""
    gridworld_eval_tasks: int = 30
    """held-out gridworld tasks per variant (bandit and MDP use the script's default, 100)"""
    parallel: int = 2
    """training runs at a time (the machine is shared: keep it at 2)"""
    runs_dir: str = "runs/rl3_benchmark"
    """where the runs write their TensorBoard logs and eval.json"""
    output: str = "benchmarks/results/rl3_benchmark.txt"
    """the table is also written here"""


def configurations(args: Args):
    """(domain, algos, flags) per domain; PPO minibatches of 1/4 of the batch (4 updates per epoch)."""
    common = ["--learning-rate", str(args.learning_rate), "--update-epochs", str(args.update_epochs)]
    return [
        ("bandit", ("rl2", "rl3"), ["--num-tasks", "32", "--minibatch-size", "800",
                                    "--total-timesteps", str(args.bandit_iterations * 3200)] + common),
        ("mdp", ("rl2", "rl3"), ["--num-tasks", "32", "--minibatch-size", "800",
                                 "--total-timesteps", str(args.mdp_iterations * 3200)] + common),
        ("gridworld", ("rl2", "rl3", "rl3-coarse"), ["--grid-size", "11", "--num-tasks", "8", "--minibatch-size", "500",
                                                     "--total-timesteps", str(args.gridworld_iterations * 2000),
                                                     "--eval-tasks", str(args.gridworld_eval_tasks)] + common),
    ]


def launch(domain, algo, flags, seed, runs_dir):
    """Start one training run (one torch thread; it inherits this script's niceness); returns
    (process, log file, run directory)."""
    out_dir = os.path.join(runs_dir, f"{domain}_{algo}_{seed}")
    command = [sys.executable, "rl3_meta.py", "--algo", algo, "--domain", domain,
               "--seed", str(seed), "--runs-dir", out_dir, "--threads", "1"] + flags
    log = open(os.path.join(runs_dir, f"{domain}_{algo}_{seed}.log"), "w")
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log), log, out_dir


def run_all(jobs, runs_dir, parallel, start):
    """Run the jobs, at most `parallel` at a time, in order; returns {(domain, algo, seed): eval.json}."""
    results, running, queue = {}, {}, list(jobs)
    while queue or running:
        while queue and len(running) < parallel:
            domain, algo, flags, seed = queue.pop(0)
            running[(domain, algo, seed)] = launch(domain, algo, flags, seed, runs_dir)
        time.sleep(1)
        for key, (process, log, out_dir) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[key]
            if process.returncode != 0:
                sys.exit(f"rl3_benchmark.py: error: run {key} failed; see {log.name}")
            with open(sorted(glob.glob(os.path.join(out_dir, "*", "eval.json")))[-1]) as f:
                results[key] = json.load(f)
            print(f"[{(time.time() - start) / 60:.1f} min] {key} done", flush=True)
    return results


def mean_std(values):
    return f"{np.mean(values):.3f} +- {np.std(values):.3f}"


def table(domain, algos, runs, seeds, update_epochs):
    """Markdown rows: per algorithm the oracle-normalised return in / out of distribution (mean +- std over
    seeds of the per-seed mean over held-out tasks; OOD = average over the OOD variants), the raw return, and
    the wall-clock per iteration: total, data collection (rollout, including the object-level RL), and the
    PPO update per epoch (KL early stopping makes the number of epochs differ between runs)."""
    first = runs[seeds[0]][algos[0]]["eval"]
    variants = list(first)
    in_dist, ood = variants[0], variants[1:]

    def per_seed(algo, key):
        return [runs[s][algo][key] for s in seeds]

    def per_epoch(algo):
        return [runs[s][algo]["update_seconds_per_iteration"] / runs[s][algo]["update_epochs_per_iteration"] for s in seeds]

    rows = []
    for algo in algos:
        norm_in = [runs[s][algo]["eval"][in_dist]["rl"]["normalized_mean"] for s in seeds]
        norm_ood = [np.mean([runs[s][algo]["eval"][v]["rl"]["normalized_mean"] for v in ood]) for s in seeds]
        raw_in = [runs[s][algo]["eval"][in_dist]["rl"]["mean"] for s in seeds]
        rows.append(f"| {domain} | {algo} | {mean_std(norm_in)} | {mean_std(norm_ood)} | {np.mean(raw_in):.1f} "
                    f"| {np.mean(per_seed(algo, 'iteration_seconds')):.2f} | {np.mean(per_seed(algo, 'rollout_seconds_per_iteration')):.2f} "
                    f"| {np.mean(per_seed(algo, 'object_level_seconds_per_iteration')):.2f} | {np.mean(per_epoch(algo)):.2f} "
                    f"| {np.mean(per_seed(algo, 'update_epochs_per_iteration')):.1f} |")
    for baseline in [b for b in ("random", "thompson", "ucb1") if b in first[in_dist]]:
        norm_in = first[in_dist][baseline]["normalized_mean"]
        norm_ood = np.mean([first[v][baseline]["normalized_mean"] for v in ood])
        rows.append(f"| {domain} | {baseline} (baseline) | {norm_in:.3f} | {norm_ood:.3f} | {first[in_dist][baseline]['mean']:.1f} | - | - | - | - | - |")

    def ratio(algo, key_fn):
        return mean_std([a / b for a, b in zip(key_fn(algo), key_fn("rl2"))])

    notes = [f"{domain} (oracle return in distribution {first[in_dist]['oracle']:.1f}; OOD variants: {', '.join(ood) or '-'}):"]
    for algo in algos[1:]:
        notes.append(
            f"  {algo}/rl2 wall-clock per iteration {ratio(algo, lambda a: per_seed(a, 'iteration_seconds'))}, "
            f"rollout {ratio(algo, lambda a: per_seed(a, 'rollout_seconds_per_iteration'))}, "
            f"update per epoch {ratio(algo, per_epoch)}, "
            f"at equal update epochs {ratio(algo, lambda a: [r + update_epochs * e for r, e in zip(per_seed(a, 'rollout_seconds_per_iteration'), per_epoch(a))])}"
        )
    return rows, notes


if __name__ == "__main__":
    args = tyro.cli(Args)
    os.makedirs(os.path.join(REPO, args.runs_dir), exist_ok=True)
    start = time.time()
    lines = [
        "| domain | algorithm | normalised return (in distribution) | normalised return (OOD) | return (in distribution) "
        "| s / iteration | rollout s / iteration | object-level s / iteration | update s / epoch | epochs / iteration |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    jobs = [(domain, algo, flags, seed) for seed in args.seeds for domain, algos, flags in configurations(args)
            for algo in algos]
    results = run_all(jobs, os.path.join(REPO, args.runs_dir), args.parallel, start)
    notes = []
    for domain, algos, _ in configurations(args):
        runs = {seed: {algo: results[(domain, algo, seed)] for algo in algos} for seed in args.seeds}
        rows, domain_notes = table(domain, algos, runs, list(args.seeds), args.update_epochs)
        lines += rows
        notes += domain_notes
    report = "\n".join(lines + [""] + notes + [f"total wall-clock {(time.time() - start) / 60:.1f} min", ""])
    print(report)
    os.makedirs(os.path.dirname(os.path.join(REPO, args.output)), exist_ok=True)
    with open(os.path.join(REPO, args.output), "w") as f:
        f.write(report)
