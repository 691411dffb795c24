"""Learning curves of ppo_relative.py runs: TensorBoard `charts/episodic_return` -> CSV + PNG.

    python benchmarks/ppo_curves.py relative=runs/<rel_run> absolute=runs/<abs_run> --out docs/ppo_relative_green

writes `<out>.csv` (columns run, global_step, episodic_return; plus the final `eval/episodic_return`
values with global_step = the run's last step and run = `<label>_eval`) and `<out>.png` (every episode
and a moving average of `--window` episodes per run).
"""

import argparse
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(run_dir: str, key: str) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    if key not in accumulator.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(key)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="label=run_dir pairs")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--window", type=int, default=8, help="episodes in the moving average")
    args = parser.parse_args()
    if any("=" not in run for run in args.runs):
        sys.exit(f"error: bad run {next(r for r in args.runs if '=' not in r)!r}; accepted: label=run_dir")

    rows = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, run_dir in (run.split("=", 1) for run in args.runs):
        curve = scalars(run_dir, "charts/episodic_return")
        sps = scalars(run_dir, "charts/SPS")
        rows += [(label, step, value) for step, value in curve]
        last_step = sps[-1][0] if sps else (curve[-1][0] if curve else 0)
        rows += [(f"{label}_eval", last_step, value) for _, value in scalars(run_dir, "eval/episodic_return")]
        if curve:
            steps, values = np.array(curve).T
            (line,) = ax.plot(steps, values, ".", alpha=0.35)
            window = min(args.window, len(values))
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, color=line.get_color(), label=f"{label} (mean of {window})")
        print(f"{label}: {len(curve)} episodes, last step {last_step}, final SPS {sps[-1][1] if sps else 'n/a'}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episodic return")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{args.out}.png", dpi=120)
    with open(f"{args.out}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "global_step", "episodic_return"])
        writer.writerows(rows)
    print(f"wrote {args.out}.csv and {args.out}.png")


if __name__ == "__main__":
    main()
