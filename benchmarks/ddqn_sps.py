"""SPS of ddqn_relative.py with --relative vs --no-relative, measured in the same conditions.

Runs the training script as a subprocess for a fixed number of steps, alternating relative and absolute
runs (rel, abs, rel, abs, ...) so that both see the same load on a shared machine, and prints each run's
SPS (the script's own end-of-run figure: environment steps per second of wall-clock, acting, replay
sampling, gradient steps, target syncs and anchor EMA steps included; start-up and anchor loading excluded)
and the ratio of the medians. Learning starts after `--learning-starts` steps, so most of a run trains.
It also prints the replay memory's size per 100k transitions for frame stacks 1 and 4.

    python benchmarks/ddqn_sps.py                       # 2 x 2 runs of 600 steps each
    python benchmarks/ddqn_sps.py --steps 2000 --repeats 3 --num-anchors 3136 --anchor-steps-per-track 1000
"""
import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def run_once(relative: bool, args, runs_dir: str) -> float:
    command = [
        sys.executable, str(REPO_ROOT / "ddqn_relative.py"), "--relative" if relative else "--no-relative",
        "--total-timesteps", str(args.steps), "--learning-starts", str(args.learning_starts),
        "--num-anchors", str(args.num_anchors), "--anchor-steps-per-track", str(args.anchor_steps_per_track),
        "--bg-color", args.bg_color, "--torch-threads", str(args.torch_threads),
        "--eval-episodes", "0", "--save-every", "0", "--runs-dir", runs_dir, "--seed", "1",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    match = re.search(r"SPS=([\d.]+)\)", result.stdout)
    if result.returncode != 0 or match is None:
        sys.exit(f"error: {' '.join(command)} failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.stdout[-300:]}")
    return float(match.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="environment steps per run")
    parser.add_argument("--learning-starts", type=int, default=100, help="steps before the first gradient step")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode")
    parser.add_argument("--num-anchors", type=int, default=256, help="anchors of the relative runs")
    parser.add_argument("--anchor-steps-per-track", type=int, default=250, help="anchor recipe of the relative runs")
    parser.add_argument("--bg-color", default="green", help="background colour")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    from ddqn_relative import FrameReplayBuffer

    for frame_stack in (1, 4):
        buffer = FrameReplayBuffer(100_000, 1, frame_stack)
        naive = 100_000 * 2 * frame_stack * 3 * 84 * 84
        print(f"replay memory, frame_stack={frame_stack}: {buffer.nbytes / 1e9:.3f} GB per 100k transitions "
              f"({buffer.nbytes / 2**30:.3f} GiB); obs + next_obs stored: {naive / 1e9:.3f} GB")
    sps = {True: [], False: []}
    with tempfile.TemporaryDirectory() as runs_dir:
        for _ in range(args.repeats):
            for relative in (True, False):
                sps[relative].append(run_once(relative, args, runs_dir))
                print(f"{'relative' if relative else 'absolute'}: SPS={sps[relative][-1]:.2f}", flush=True)
    rel, ab = statistics.median(sps[True]), statistics.median(sps[False])
    print(f"median SPS relative={rel:.2f} absolute={ab:.2f} ratio relative/absolute={rel / ab:.3f} "
          f"({args.steps} steps, learning from step {args.learning_starts}, {args.num_anchors} anchors)")


if __name__ == "__main__":
    main()
