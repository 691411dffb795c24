"""Learning curves of any trainer's runs: TensorBoard scalars (and evaluations) -> one CSV and one PNG.

    python benchmarks/curves.py relative=runs/<rel_run> absolute=runs/<abs_run> --out docs/ppo_relative_green
    python benchmarks/curves.py green="runs/<run>" --out docs/ddqn_relative_green --window 20 \\
        --checkpoints green="snapshots/*.pt" --eval-episodes 3
    python benchmarks/curves.py "mdp_H64/rl2=runs/rl3/mdp_H64_rl2_*/*" "mdp_H64/rl3=runs/rl3/mdp_H64_rl3_*/*" \\
        --key charts/normalized_return --window 1 --out benchmarks/results/rl3_mdp_curves

Each positional argument is `[PANEL/]LABEL=RUNS`: RUNS is a run folder (or a glob, or comma-separated globs) whose
TensorBoard events hold `--key`; several folders under one label are seeds (thin lines, and their mean). Labels with
the same PANEL share a subplot. Every run's `--key` values are drawn as faint lines and a thick moving average of
`--window` points (averaged over the label's runs); its final evaluation (`--eval-key`, logged once per episode by
every trainer) is drawn at the run's last step as mean +- std. `--checkpoints LABEL=GLOB` also plays every
checkpoint of a CarRacing trainer (ppo_relative.py, ddqn_relative.py, repaint_ppo.py: agent.pt files, e.g. periodic
copies) greedily on its own colour, view and task, on tracks `--first-track`, `--first-track + 1`, ..., with the
agent's action repeat (stitch_eval.py's episodes, the encoder and policy of one agent), and draws those points too.

Writes OUT.csv (label, run, global_step, value: every logged `--key` point), OUT_eval.csv when there are evaluations
(label, run, source, global_step, mean, std, returns) and OUT.png.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} of every scalar in a run folder's TensorBoard events."""
    accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    return {key: [(e.step, e.value) for e in accumulator.Scalars(key)] for key in accumulator.Tags()["scalars"]}


def expand_runs(spec: str) -> list[str]:
    """The run folders of `RUNS` (comma-separated folders or globs), sorted; a one-line ValueError if none."""
    folders = sorted({path for pattern in spec.split(",") for path in glob.glob(pattern) if os.path.isdir(path)})
    if not folders:
        raise ValueError(f"{spec!r} matches no folder; accepted: run folders with TensorBoard events, or globs of them")
    return folders


def evaluate_checkpoints(pattern: str, episodes: int, first_track: int) -> list[tuple[str, int, list[float]]]:
    """[(path, global_step, returns)] of every CarRacing checkpoint matching `pattern`, one per step, sorted by step:
    greedy whole episodes of the agent on its own colour, view, task and reward, tracks first_track, first_track + 1, ..."""
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    import stitch_eval

    torch.set_num_threads(1)
    points = {}
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ValueError(f"--checkpoints {pattern!r} matches no file; accepted: agent.pt files of a CarRacing trainer")
    for path in paths:
        try:
            metadata = stitch_eval.read_checkpoint(path)["metadata"]
        except stitch_eval.UserError as e:
            raise ValueError(str(e)) from None
        if metadata["global_step"] in points:
            continue
        jobs = [stitch_eval.Job(path, path, metadata["bg_color"], metadata["view"], metadata["task"], metadata["reward"],
                                tuple(range(metadata["num_actions"])), first_track + i, 0, 0.0, 0, None)
                for i in range(episodes)]  # fmt: skip
        returns = [float(result["episode_return"]) for result in stitch_eval.evaluate(jobs, workers=1)]
        points[metadata["global_step"]] = (path, returns)
        print(f"{path}: global_step={metadata['global_step']} eval_return_mean={np.mean(returns):.1f} "
              f"eval_return_std={np.std(returns):.1f} returns={[round(r, 1) for r in returns]}", flush=True)  # fmt: skip
    return [(points[step][0], step, points[step][1]) for step in sorted(points)]


def moving_average(steps: np.ndarray, values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, means of the last `window` values at each step), from the window-th point on."""
    window = max(1, min(window, len(values)))
    return steps[window - 1 :], np.convolve(values, np.ones(window) / window, mode="valid")


def write_curves(
    series: dict[str, list[str]],
    out: str,
    key: str = "charts/episodic_return",
    window: int = 1,
    eval_key: str = "eval/episodic_return",
    checkpoints: dict[str, list[tuple[str, int, list[float]]]] | None = None,
    hlines: dict[str, dict[str, float]] | None = None,
    ylabel: str = "",
    xlabel: str = "environment steps",
) -> None:
    """Plot `series` ({"[panel/]label": [run folders]}) to OUT.png and write OUT.csv / OUT_eval.csv (module docstring).
    `checkpoints`: {label: evaluate_checkpoints(...)}; `hlines`: {panel: {name: value}} (dashed reference lines)."""
    panels: dict[str, list[str]] = {}
    for name in series:
        panels.setdefault(name.rpartition("/")[0], []).append(name)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) if len(panels) > 1 else 7, 4), squeeze=False)
    labels = list(dict.fromkeys(name.rpartition("/")[2] for name in series))  # one colour per label in every panel
    colours = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(labels)))
    rows, eval_rows = [], []
    for ax, (panel, names) in zip(axes[0], panels.items()):
        for name in names:
            label = name.rpartition("/")[2]
            colour = colours[label]
            smooth = []
            for run_dir in series[name]:
                logged = scalars(run_dir)
                points = logged.get(key, [])
                rows += [(name, Path(run_dir).name, step, value) for step, value in points]
                if points:
                    steps, values = np.array(points).T
                    ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
                    smooth.append(moving_average(steps, values, window))
                if logged.get(eval_key):
                    last_step = max((step for k, v in logged.items() if k != eval_key for step, _ in v), default=0)
                    eval_rows.append((name, Path(run_dir).name, eval_key, last_step, [v for _, v in logged[eval_key]]))
            for path, step, returns in (checkpoints or {}).get(name, []):
                eval_rows.append((name, Path(path).parent.name, path, step, returns))
            if smooth:
                length = min(len(values) for _, values in smooth)
                steps = smooth[0][0][:length]
                mean = np.mean([values[:length] for _, values in smooth], axis=0)
                what = f"mean of {len(smooth)} runs" if len(smooth) > 1 else "one run"
                what += f", moving average of {window}" if window > 1 else ""
                ax.plot(steps, mean, color=colour, marker="o" if len(steps) == 1 else None, label=f"{label} ({what})")
            evals = [(step, np.mean(r), np.std(r)) for n, _, _, step, r in eval_rows if n == name]
            if evals:
                s, m, sd = np.array(evals).T
                ax.errorbar(s, m, yerr=sd, color=colour, marker="o", linestyle="none", capsize=3,
                            label=f"{label}: greedy evaluation (mean +- std over episodes)")  # fmt: skip
        for (reference, value), style in zip((hlines or {}).get(panel, {}).items(), ("--", ":", "-.")):
            ax.axhline(value, color="grey" if style == "--" else "black", linestyle=style, linewidth=1, label=reference)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel or key)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(f"{out}.png", dpi=120)
    plt.close(fig)
    with open(f"{out}.csv", "w", newline="") as f:
        csv.writer(f).writerows([("label", "run", "global_step", key), *rows])
    if eval_rows:
        with open(f"{out}_eval.csv", "w", newline="") as f:
            csv.writer(f).writerows([("label", "run", "source", "global_step", "mean", "std", "returns")] +
                                    [(n, run, source, step, f"{np.mean(r):.2f}", f"{np.std(r):.2f}",
                                      " ".join(f"{x:.1f}" for x in r)) for n, run, source, step, r in eval_rows])  # fmt: skip
    print(f"wrote {out}.csv{f', {out}_eval.csv' if eval_rows else ''} and {out}.png ({len(rows)} points of {key}, "
          f"{len(eval_rows)} evaluations)")  # fmt: skip


def pairs(values: list[str], what: str) -> dict[str, str]:
    """{"NAME": "VALUE"} of NAME=VALUE arguments; a one-line ValueError otherwise."""
    bad = [v for v in values if "=" not in v or not v.split("=", 1)[0]]
    if bad:
        raise ValueError(f"bad {what} {bad[0]!r}; accepted: {what.upper()}=... (a name, '=', a value)")
    return dict(v.split("=", 1) for v in values)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", nargs="+", help="[PANEL/]LABEL=RUNS: run folders, globs or comma-separated globs")
    parser.add_argument("--out", required=True, help="writes OUT.csv, OUT.png and (with evaluations) OUT_eval.csv")
    parser.add_argument("--key", default="charts/episodic_return", help="the TensorBoard scalar to plot")
    parser.add_argument("--window", type=int, default=8, help="points in the moving average")
    parser.add_argument("--eval-key", default="eval/episodic_return", help="final-evaluation scalar (one per episode)")
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        default=[],
        metavar="LABEL=GLOB",
        help="CarRacing checkpoints of a label's run to evaluate (e.g. periodic copies of agent.pt)",
    )
    parser.add_argument("--eval-episodes", type=int, default=3, help="greedy episodes per checkpoint")
    parser.add_argument("--first-track", type=int, default=20_000, help="track seed of the first evaluation episode")
    parser.add_argument("--hline", nargs="+", default=[], metavar="[PANEL/]NAME=VALUE", help="dashed reference lines")
    parser.add_argument("--ylabel", default="", help="y-axis label (default: the key)")
    args = parser.parse_args()
    try:
        if args.window < 1 or args.eval_episodes < 1:
            raise ValueError(f"bad --window {args.window} / --eval-episodes {args.eval_episodes}; accepted: >= 1")
        series = {name: expand_runs(runs) for name, runs in pairs(args.series, "series").items()}
        unknown = sorted(set(pairs(args.checkpoints, "checkpoints")) - set(series))
        if unknown:
            raise ValueError(f"--checkpoints label {unknown[0]!r} has no series; accepted: {', '.join(series)}")
        hlines: dict[str, dict[str, float]] = {}
        for name, value in pairs(args.hline, "hline").items():
            hlines.setdefault(name.rpartition("/")[0], {})[name.rpartition("/")[2]] = float(value)
        checkpoints = {name: evaluate_checkpoints(pattern, args.eval_episodes, args.first_track)
                       for name, pattern in pairs(args.checkpoints, "checkpoints").items()}  # fmt: skip
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    write_curves(series, args.out, args.key, args.window, args.eval_key, checkpoints, hlines, args.ylabel)
