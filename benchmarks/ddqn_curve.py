"""Learning curve of a ddqn_relative.py run: (global_step, episodic_return) from its TensorBoard logs to a
CSV and a PNG.

    python benchmarks/ddqn_curve.py runs/<runs_dir>/<run_name> docs/ddqn_relative_green
"""
import argparse
import csv
import glob
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a runs/{run_name} directory (or a glob matching one)")
    parser.add_argument("out_prefix", help="writes OUT_PREFIX.csv and OUT_PREFIX.png")
    parser.add_argument("--window", type=int, default=5, help="episodes in the moving average of the plot")
    args = parser.parse_args()
    matches = sorted(glob.glob(args.run_dir))
    if len(matches) != 1:
        sys.exit(f"error: run_dir {args.run_dir!r} matches {len(matches)} directories; accepted: exactly one run directory")
    accumulator = EventAccumulator(matches[0]).Reload()
    if "charts/episodic_return" not in accumulator.Tags()["scalars"]:
        sys.exit(f"error: {matches[0]!r} has no charts/episodic_return yet; accepted: a run with a finished episode")
    events = accumulator.Scalars("charts/episodic_return")
    steps, returns = np.array([e.step for e in events]), np.array([e.value for e in events])
    with open(f"{args.out_prefix}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["global_step", "episodic_return"])
        writer.writerows((int(s), f"{r:.2f}") for s, r in zip(steps, returns))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, returns, "o", alpha=0.4, label="episode")
    if len(returns) >= args.window:
        smooth = np.convolve(returns, np.ones(args.window) / args.window, mode="valid")
        ax.plot(steps[args.window - 1 :], smooth, label=f"mean of {args.window}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episodic return")
    ax.set_title(matches[0].rstrip("/").split("/")[-1], fontsize=7)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{args.out_prefix}.png", dpi=120)
    print(f"{len(returns)} episodes, last return {returns[-1]:.1f}, best {returns.max():.1f} -> {args.out_prefix}.csv/.png")


if __name__ == "__main__":
    main()
