"""SPS of ppo_relative.py with --relative vs --no-relative, measured in the same conditions.

Runs the training script as a subprocess for a fixed number of steps, alternating relative and absolute
runs (rel, abs, rel, abs, ...) so that both see the same load on a shared machine, and prints each run's
SPS (the script's own end-of-run figure: environment steps per second of wall-clock, rollouts, updates
and the anchor EMA step included; start-up and anchor loading excluded) and the ratio of the medians.
On a shared machine wall-clock SPS depends on the other users' load, so each run's CPU time (user + system
of the subprocess, start-up included) per 1000 steps is printed too; its ratio is the steadier figure.

    python benchmarks/ppo_sps.py                        # 2 x 2 runs of 2 iterations (4096 steps) each
    python benchmarks/ppo_sps.py --steps 8192 --repeats 3
    python benchmarks/ppo_sps.py --components   # in-process CPU time of each part of an iteration (fast)

`--components` times, in CPU seconds of this process (insensitive to other users' load), the parts of one
PPO iteration at the given sizes: environment steps, rollout forwards, the update's minibatch steps
(forward, backward, Adam) and the anchor EMA step, with the script's own Encoder and Policy, and gives the
steps per CPU-second of both modes. A model of one iteration, not a run: use it where runs take too long.
"""
import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_once(relative: bool, args, runs_dir: str) -> tuple[int, float]:
    """(the script's SPS, CPU seconds per 1000 steps) of one run."""
    command = [
        sys.executable, str(REPO_ROOT / "ppo_relative.py"), "--relative" if relative else "--no-relative",
        "--total-timesteps", str(args.steps), "--num-envs", str(args.num_envs), "--num-steps", str(args.num_steps),
        "--num-anchors", str(args.num_anchors), "--bg-color", args.bg_color, "--torch-threads", str(args.torch_threads),
        "--eval-episodes", "0", "--save-every", "0", "--runs-dir", runs_dir, "--seed", "1",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    match = re.search(r"SPS=(\d+)\)", result.stdout)
    if result.returncode != 0 or match is None:
        sys.exit(f"error: {' '.join(command)} failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.stdout[-300:]}")
    return int(match.group(1)), 1000 * cpu_seconds / args.steps


def cpu_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def components(args) -> None:
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from envs.car_racing import make_color_car_racing
    from ppo_relative import Encoder, Policy

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    env = make_color_car_racing(args.bg_color)
    env.reset(seed=0)
    for _ in range(60):  # past the first second's zoom-in, whose frames are drawn the slow, exact way
        env.step(3)
    env_step = cpu_seconds(lambda: env.step(3), 100)
    batch, minibatch = args.num_envs * args.num_steps, args.num_envs * args.num_steps // 4
    obs = torch.randint(0, 256, (minibatch, 3, 84, 84), dtype=torch.uint8)
    anchor_frames = torch.randint(0, 256, (args.num_anchors, 3, 84, 84), dtype=torch.uint8)
    cpu_per_iteration = {}
    for relative in (True, False):
        encoder = Encoder(1, relative, args.num_anchors)
        encoder.update_anchors(anchor_frames)
        policy = Policy(encoder.latent_dim, 5)
        optimizer = torch.optim.Adam(list(encoder.parameters()) + list(policy.parameters()), lr=1e-4)

        def rollout_forward():
            with torch.no_grad():
                policy(encoder(obs[: args.num_envs]))

        def minibatch_step():
            logits, value = policy(encoder(obs))
            optimizer.zero_grad()
            (logits.logsumexp(-1).mean() + value.pow(2).mean()).backward()
            optimizer.step()

        parts = {
            "env steps": batch * env_step,
            "rollout forwards": args.num_steps * cpu_seconds(rollout_forward, 10),
            "update (16 minibatch steps)": 16 * cpu_seconds(minibatch_step, 2),
            "anchor EMA step": cpu_seconds(lambda: encoder.update_anchors(anchor_frames), 1) if relative else 0.0,
        }
        cpu_per_iteration[relative] = sum(parts.values())
        name = "relative" if relative else "absolute"
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}s" for k, v in parts.items())
              + f" -> {cpu_per_iteration[relative]:.2f} CPU-s per iteration of {batch} steps "
              f"({batch / cpu_per_iteration[relative]:.1f} steps per CPU-second)")
    ratio = cpu_per_iteration[False] / cpu_per_iteration[True]
    print(f"relative/absolute steps per CPU-second={ratio:.3f} (relative costs {100 * (1 - ratio):.1f}%)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4096, help="environment steps per run (a multiple of num_envs*num_steps)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, alternated")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--num-anchors", type=int, default=3136)
    parser.add_argument("--bg-color", default="green")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--components", action="store_true", help="time the parts of one iteration in-process instead")
    args = parser.parse_args()
    if args.components:
        return components(args)
    if args.steps < args.num_envs * args.num_steps or args.repeats < 1:
        sys.exit(f"error: bad --steps {args.steps} / --repeats {args.repeats}; accepted: --steps >= "
                 f"--num-envs * --num-steps = {args.num_envs * args.num_steps}, --repeats >= 1")

    sps, cpu = {True: [], False: []}, {True: [], False: []}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ppo_sps_") as runs_dir:
        for repeat in range(args.repeats):
            for relative in (True, False):
                run_sps, run_cpu = run_once(relative, args, runs_dir)
                sps[relative].append(run_sps)
                cpu[relative].append(round(run_cpu, 1))
                print(f"repeat {repeat}: {'relative' if relative else 'absolute'} SPS={run_sps} "
                      f"cpu_s_per_1k_steps={run_cpu:.1f}", flush=True)
    rel, absolute = statistics.median(sps[True]), statistics.median(sps[False])
    rel_cpu, abs_cpu = statistics.median(cpu[True]), statistics.median(cpu[False])
    print(f"steps/run={args.steps} num_envs={args.num_envs} num_steps={args.num_steps} num_anchors={args.num_anchors} "
          f"torch_threads={args.torch_threads} cpus={os.cpu_count()} load1={os.getloadavg()[0]:.1f} "
          f"wall={time.time() - started:.0f}s")
    print(f"relative SPS median={rel:g} runs={sps[True]} cpu_s_per_1k_steps={cpu[True]}")
    print(f"absolute SPS median={absolute:g} runs={sps[False]} cpu_s_per_1k_steps={cpu[False]}")
    print(f"relative/absolute SPS ratio={rel / absolute:.3f} (relative costs {100 * (1 - rel / absolute):.1f}% SPS)")
    print(f"absolute/relative CPU-time ratio={abs_cpu / rel_cpu:.3f} (relative costs {100 * (1 - abs_cpu / rel_cpu):.1f}% "
          "steps per CPU-second)")


if __name__ == "__main__":
    main()
