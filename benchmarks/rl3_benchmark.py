"""RL^2 vs RL^3 at a CPU budget: does the advantage of RL^3 grow with the horizon?

Claim under test (Bhatia, Nashed & Zilberstein, "RL^3: Boosting Meta Reinforcement Learning via RL inside RL^2",
arXiv 2306.15909): the advantage of RL^3 over RL^2 grows with the meta-episode horizon H, and holds out of
distribution. Configurations, every algorithm with the same flags and the same number of environment steps:
- random tabular MDPs at H = 16, 64, 256: 4096 steps per PPO iteration at every H (256, 64, 16 tasks), RL^2 and RL^3;
- 13x13 gridworlds (H = 350, 8 tasks = 2800 steps per iteration) with the five OOD variants: RL^2, RL^3, RL^3-coarse.
Each run evaluates on held-out tasks (`rl3_meta.py` writes eval.json); its TensorBoard log gives the learning
curve (training normalised return vs meta-training steps).

The runs go through one queue, `--parallel` at a time, ordered seed -> configuration -> algorithm, so that the
algorithms compared on one configuration and seed run side by side under the same machine load: the wall-clock
ratios RL^3 / RL^2 are measured interleaved. The code is copied once into `{runs_dir}/code/` and every run uses
that copy (editing the repository during a benchmark does not change it). Finished runs are kept: rerunning the
command resumes the benchmark. Writes benchmarks/results/rl3_benchmark.{txt,json} and rl3_curves.{png,csv}.

    nice -n 10 python benchmarks/rl3_benchmark.py
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import tyro

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.curves import write_curves  # noqa: E402


@dataclass
class Args:
    seeds: tuple[int, ...] = (1, 2, 3)
    """training seeds of every configuration (distinct seeds: distinct networks, actions and training tasks)"""
    mdp_horizons: tuple[int, ...] = (16, 64, 256)
    """horizons of the random-MDP sweep"""
    mdp_steps_per_iteration: int = 4096
    """environment steps per PPO iteration on MDPs (num_tasks = this / H)"""
    mdp_iterations: int = 60
    """PPO iterations per MDP run"""
    gridworld_iterations: int = 25
    """PPO iterations per 13x13 gridworld run (8 tasks x H=350 = 2800 steps each)"""
    learning_rate: float = 1e-3
    """Adam learning rate of every run (higher than the paper's 3e-4 / 2e-4 for the small budget)"""
    gridworld_eval_episodes: int = 30
    """held-out gridworld tasks per variant (MDPs use 100)"""
    parallel: int = 4
    """training runs at a time"""
    runs_dir: str = "runs/rl3_benchmark"
    """where the code copy, the runs and their logs go"""
    results_dir: str = "benchmarks/results"
    """where rl3_benchmark.{txt,json} and rl3_curves.{png,csv} are written"""


def configurations(args: Args):
    """[(name, algos, flags)]: PPO minibatches of 1/4 of the batch, 8 epochs with KL early stop."""
    common = ["--learning-rate", str(args.learning_rate), "--update-epochs", "8", "--torch-threads", "1"]
    configs = []
    for H in args.mdp_horizons:
        tasks = args.mdp_steps_per_iteration // H
        configs.append((f"mdp_H{H}", ("rl2", "rl3"), ["--domain", "mdp", "--horizon", str(H), "--num-tasks", str(tasks),
                        "--minibatch-size", str(tasks * H // 4), "--total-timesteps", str(args.mdp_iterations * tasks * H)]
                        + common))  # fmt: skip
    configs.append(("gridworld13", ("rl2", "rl3", "rl3-coarse"),
                    ["--domain", "gridworld", "--grid-size", "13", "--ood", "all", "--num-tasks", "8",
                     "--minibatch-size", "700",
                     "--total-timesteps", str(args.gridworld_iterations * 2800),
                     "--eval-episodes", str(args.gridworld_eval_episodes)] + common))  # fmt: skip
    return configs


def run_all(jobs, runs_dir, code_dir, parallel, start):
    """Run the jobs not finished yet, at most `parallel` at a time, in order; returns {(config, algo, seed): run dir}."""
    done, running, queue, elsewhere = {}, {}, [], {}
    for config, algo, flags, seed in jobs:
        out_dir = os.path.join(runs_dir, f"{config}_{algo}_{seed}")
        finished = glob.glob(os.path.join(out_dir, "*", "eval.json"))
        if finished:
            done[(config, algo, seed)] = os.path.dirname(sorted(finished)[-1])
        elif os.path.exists(f"{out_dir}.log") and time.time() - os.path.getmtime(f"{out_dir}.log") < 120:
            elsewhere[(config, algo, seed)] = out_dir  # still written to by an earlier invocation's run: wait for it
        else:
            shutil.rmtree(out_dir, ignore_errors=True)  # an interrupted run starts again from scratch
            queue.append((config, algo, flags, seed, out_dir))
    while queue or running or elsewhere:
        for key, out_dir in list(elsewhere.items()):
            finished = glob.glob(os.path.join(out_dir, "*", "eval.json"))
            if finished:
                done[key] = os.path.dirname(finished[0])
                del elsewhere[key]
        while queue and len(running) + len(elsewhere) < parallel:
            config, algo, flags, seed, out_dir = queue.pop(0)
            log = open(f"{out_dir}.log", "w")
            command = [sys.executable, "rl3_meta.py", "--algo", algo, "--seed", str(seed), "--runs-dir", out_dir] + flags
            running[(config, algo, seed)] = (subprocess.Popen(command, cwd=code_dir, stdout=log, stderr=log), log, out_dir)
        time.sleep(2)
        for key, (process, log, out_dir) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[key]
            if process.returncode != 0:
                sys.exit(f"rl3_benchmark.py: error: run {key} failed; see {log.name}")
            done[key] = os.path.dirname(sorted(glob.glob(os.path.join(out_dir, "*", "eval.json")))[-1])
            print(f"[{(time.time() - start) / 60:.1f} min] {key} done", flush=True)
    return done


def pm(values, digits=3):
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def object_level_greedy(code_dir, flags, variant, episodes):
    """Normalised returns of the agent that acts greedily on the object-level learner's Q (ties broken at random) on
    the held-out tasks of `variant`: how much of RL^3's score the object-level learner alone already gives."""
    sys.path.insert(0, code_dir)
    import rl3_meta

    options = dict(zip(flags, flags[1:]))
    args = rl3_meta.Args(domain=options["--domain"], horizon=int(options.get("--horizon", 350)),
                         grid_size=int(options.get("--grid-size", 11)))  # fmt: skip
    rl3_meta.validate(args)
    env = rl3_meta.make_env(args, episodes, variant)
    learner = rl3_meta.object_level_learner(args, env)
    rng = np.random.default_rng(0)
    states, total = env.reset([2**31 + i for i in range(episodes)]), np.zeros(episodes)
    for _ in range(env.horizon):
        q = learner.Q[np.arange(episodes), learner.phi[states]]
        action = (q + 1e-9 * rng.random(q.shape)).argmax(axis=1)
        next_states, reward, terminated, _ = env.step(action)
        learner.update(states, action, reward, env.last_next_state, terminated)
        states, total = next_states, total + reward
    return float(np.mean(total / env.optimal_returns()))


def report(configs, runs, seeds, code_dir):
    """Markdown tables and a JSON summary. Returns: per configuration and algorithm the per-seed held-out normalised
    returns (in distribution; OOD = mean over the OOD variants), mean +- std over seeds, the deterministic (argmax)
    evaluation, and the per-seed difference to RL^2 (paired by seed). Wall-clock: seconds per iteration, rollout and
    object-level seconds, and their ratios to RL^2 of the same seed (the runs compared ran side by side)."""
    lines = ["| configuration | algorithm | in distribution: per seed | mean +- std | OOD: per seed | mean +- std "
             "| greedy (argmax), in dist. | minus RL^2 (paired by seed), in dist. | minus RL^2, OOD |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    clock = ["| configuration | algorithm | s / iteration | / RL^2 (per seed, mean +- std) | rollout s / iteration "
             "| rollout / RL^2 | object-level s / iteration | PPO epochs / iteration |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    summary = {}
    for config, algos, flags in configs:
        done = [s for s in seeds if all((config, a, s) in runs for a in algos)]
        if not done:
            continue
        evals = {(a, s): json.load(open(os.path.join(runs[(config, a, s)], "eval.json"))) for a in algos for s in done}
        first = evals[(algos[0], done[0])]["eval"]
        in_dist, ood = list(first)[0], list(first)[1:]
        stats = {}
        for algo in algos:
            e = [evals[(algo, s)] for s in done]
            stats[algo] = dict(
                in_dist=[x["eval"][in_dist]["rl"]["normalized_mean"] for x in e],
                ood=[np.mean([x["eval"][v]["rl"]["normalized_mean"] for v in ood]) for x in e],
                greedy=[x["greedy"]["normalized_mean"] for x in e],
                iteration_seconds=[x["iteration_seconds"] for x in e],
                rollout_seconds=[x["rollout_seconds_per_iteration"] for x in e],
                object_seconds=[x["object_level_seconds_per_iteration"] for x in e],
                epochs=[x["update_epochs_per_iteration"] for x in e],
            )
        for algo in algos:
            s, base = stats[algo], stats["rl2"]
            diff_in = [a - b for a, b in zip(s["in_dist"], base["in_dist"])]
            diff_ood = [a - b for a, b in zip(s["ood"], base["ood"])]
            ratio = [a / b for a, b in zip(s["iteration_seconds"], base["iteration_seconds"])]
            rollout_ratio = [a / b for a, b in zip(s["rollout_seconds"], base["rollout_seconds"])]
            s.update(minus_rl2_in_dist=diff_in, minus_rl2_ood=diff_ood, seconds_ratio_to_rl2=ratio,
                     rollout_ratio_to_rl2=rollout_ratio)  # fmt: skip
            other = algo != "rl2"
            lines.append(f"| {config} | {algo} | {', '.join(f'{v:.3f}' for v in s['in_dist'])} | {pm(s['in_dist'])} "
                         f"| {', '.join(f'{v:.3f}' for v in s['ood'])} | {pm(s['ood'])} | {pm(s['greedy'])} "
                         f"| {pm(diff_in) if other else '-'} | {pm(diff_ood) if other else '-'} |")  # fmt: skip
            clock.append(f"| {config} | {algo} | {np.mean(s['iteration_seconds']):.2f} | {pm(ratio, 2) if other else '1'} "
                         f"| {np.mean(s['rollout_seconds']):.2f} | {pm(rollout_ratio, 2) if other else '1'} "
                         f"| {np.mean(s['object_seconds']):.2f} | {np.mean(s['epochs']):.1f} |")  # fmt: skip
        episodes = int(dict(zip(flags, flags[1:])).get("--eval-episodes", 100))
        greedy_q = {v: object_level_greedy(code_dir, flags, v, episodes) for v in [in_dist] + ood}
        baselines = {b: first[in_dist][b]["normalized_mean"] for b in ("random", "thompson", "ucb1") if b in first[in_dist]}
        baselines["object_level_greedy"] = greedy_q[in_dist]
        summary[config] = dict(in_distribution=in_dist, ood_variants=ood, oracle=first[in_dist]["oracle"],
                               baselines=baselines, object_level_greedy=greedy_q, seeds=done, algorithms=stats)  # fmt: skip
        random_ood = np.mean([first[v]["random"]["normalized_mean"] for v in ood])
        lines.append(f"| {config} | random (baseline) | - | {baselines['random']:.3f} | - | {random_ood:.3f} |" + " - |" * 3)
        greedy_ood = np.mean([greedy_q[v] for v in ood])
        lines.append(f"| {config} | greedy on object-level Q (baseline) | - | {greedy_q[in_dist]:.3f} | - | {greedy_ood:.3f} |"
                     + " - |" * 3)  # fmt: skip
    return lines + [""] + clock, summary


if __name__ == "__main__":
    args = tyro.cli(Args)
    runs_dir = os.path.join(REPO, args.runs_dir)
    code_dir = os.path.join(runs_dir, "code")
    if not os.path.isdir(code_dir):
        os.makedirs(os.path.join(code_dir, "envs"))
        shutil.copy(os.path.join(REPO, "rl3_meta.py"), code_dir)
        for path in glob.glob(os.path.join(REPO, "envs", "*.py")):
            shutil.copy(path, os.path.join(code_dir, "envs"))
    start = time.time()
    configs = configurations(args)
    jobs = [(config, algo, flags, seed) for seed in args.seeds for config, algos, flags in configs for algo in algos]
    runs = run_all(jobs, runs_dir, code_dir, args.parallel, start)
    lines, summary = report(configs, runs, list(args.seeds), code_dir)
    results_dir = os.path.join(REPO, args.results_dir)
    os.makedirs(results_dir, exist_ok=True)
    # learning curves: training normalised return vs meta-training steps, per seed (thin) and mean over seeds (thick);
    # dashed: the random and object-level-greedy baselines on the held-out tasks
    series = {f"{config}/{algo}": [runs[(config, algo, s)] for s in args.seeds if (config, algo, s) in runs]
              for config, algos, _ in configs for algo in algos}  # fmt: skip
    hlines = {config: {"random": summary[config]["baselines"]["random"],
                       "greedy on Q": summary[config]["baselines"]["object_level_greedy"]} for config in summary}  # fmt: skip
    write_curves({k: v for k, v in series.items() if v}, os.path.join(results_dir, "rl3_curves"),
                 key="charts/normalized_return", hlines=hlines, ylabel="normalised return (training tasks)",
                 xlabel="meta-training steps")  # fmt: skip
    budget = (f"budget per run: MDPs {args.mdp_iterations} iterations x {args.mdp_steps_per_iteration} steps = "
              f"{args.mdp_iterations * args.mdp_steps_per_iteration} steps; 13x13 gridworld {args.gridworld_iterations} "
              f"iterations x 2800 steps = {args.gridworld_iterations * 2800} steps; lr {args.learning_rate}; "
              f"seeds {args.seeds}")  # fmt: skip
    text = "\n".join(lines + ["", budget, f"benchmark wall-clock {(time.time() - start) / 60:.1f} min (this invocation)", ""])
    print(text)
    with open(os.path.join(results_dir, "rl3_benchmark.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(results_dir, "rl3_benchmark.json"), "w") as f:
        json.dump(dict(budget=budget, configurations=summary), f, indent=1)
