"""Learning curve of a ddqn_relative.py run: training episodes from its TensorBoard logs and, optionally, deterministic
evaluations of checkpoints saved along the way, to a CSV and a PNG.

    python benchmarks/ddqn_curve.py runs/<run_name> docs/ddqn_relative_green
    python benchmarks/ddqn_curve.py runs/<run_name> docs/ddqn_relative_green --checkpoints "snapshots/*.pt" --eval-episodes 3

Training returns come from epsilon-greedy episodes (and from episodes cut by `--progress-patience`); the evaluation
points are greedy (epsilon 0) whole episodes with the run's action repeat on tracks 20000, 20001, ... (`--first-track`;
the script's own final evaluation uses seed + 10000, ...), each checkpoint on the same tracks.
"""

import argparse
import csv
import glob
import sys
from dataclasses import fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def evaluate_checkpoints(pattern: str, episodes: int, first_track: int) -> list[tuple[int, float, float, list[float]]]:
    """(global_step, mean, std, returns) of every checkpoint matching `pattern`, sorted by step."""
    import torch

    from ddqn_relative import Args, agent_from_checkpoint, load_checkpoint, make_env

    torch.set_num_threads(1)
    points = {}
    for path in sorted(glob.glob(pattern)):
        checkpoint = load_checkpoint(path)
        metadata = checkpoint["metadata"]
        if metadata["global_step"] in points:
            continue
        known = {f.name for f in fields(Args)}
        args = Args(**{k: v for k, v in metadata["args"].items() if k in known})
        args.view, args.task = metadata["view"], metadata["task"]
        encoder, q_network = agent_from_checkpoint(checkpoint)
        env, returns = make_env(args, patience=0), []  # greedy whole episodes, as the script's final evaluation
        for episode in range(episodes):
            obs, _ = env.reset(seed=first_track + episode)
            done, episodic_return = False, 0.0
            while not done:
                with torch.no_grad():
                    action = q_network.greedy_action(encoder(torch.as_tensor(obs)[None]))
                obs, reward, terminated, truncated, _ = env.step(int(action.item()))
                episodic_return += float(reward)
                done = terminated or truncated
            returns.append(episodic_return)
        env.close()
        points[metadata["global_step"]] = (float(np.mean(returns)), float(np.std(returns)), returns)
        print(
            f"{path}: global_step={metadata['global_step']} eval_return_mean={np.mean(returns):.1f} "
            f"eval_return_std={np.std(returns):.1f} returns={[round(r, 1) for r in returns]}",
            flush=True,
        )
    return [(step, *points[step]) for step in sorted(points)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a runs/{run_name} directory (or a glob matching one)")
    parser.add_argument("out_prefix", help="writes OUT_PREFIX.csv (training), OUT_PREFIX_eval.csv and OUT_PREFIX.png")
    parser.add_argument("--window", type=int, default=20, help="episodes in the moving average of the plot")
    parser.add_argument("--checkpoints", help="glob of checkpoints of the same run to evaluate (e.g. periodic copies)")
    parser.add_argument("--eval-episodes", type=int, default=3, help="greedy episodes per checkpoint")
    parser.add_argument("--first-track", type=int, default=20_000, help="track seed of the first evaluation episode")
    args = parser.parse_args()
    matches = sorted(glob.glob(args.run_dir))
    if len(matches) != 1:
        sys.exit(f"error: run_dir {args.run_dir!r} matches {len(matches)} directories; accepted: exactly one run directory")
    accumulator = EventAccumulator(matches[0]).Reload()
    if "charts/episodic_return" not in accumulator.Tags()["scalars"]:
        sys.exit(f"error: {matches[0]!r} has no charts/episodic_return yet; accepted: a run with a finished episode")
    events = accumulator.Scalars("charts/episodic_return")
    steps = np.array([e.step for e in events])
    returns = np.array([e.value for e in events])
    with open(f"{args.out_prefix}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["global_step", "episodic_return"])
        writer.writerows((int(s), round(float(r), 2)) for s, r in zip(steps, returns))
    points = evaluate_checkpoints(args.checkpoints, args.eval_episodes, args.first_track) if args.checkpoints else []
    if points:
        with open(f"{args.out_prefix}_eval.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["global_step", "eval_return_mean", "eval_return_std", "returns"])
            writer.writerows((s, round(m, 2), round(sd, 2), " ".join(f"{r:.1f}" for r in rs)) for s, m, sd, rs in points)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, returns, ".", alpha=0.25, color="tab:blue", label="training episodes (epsilon-greedy, cut at no progress)")
    if len(returns) >= args.window:
        smooth = np.convolve(returns, np.ones(args.window) / args.window, mode="valid")
        ax.plot(steps[args.window - 1 :], smooth, color="tab:blue", label=f"moving average ({args.window} episodes)")
    if points:
        s, m, sd = (np.array([p[i] for p in points]) for i in range(3))
        ax.errorbar(
            s,
            m,
            yerr=sd,
            color="tab:red",
            marker="o",
            capsize=3,
            label=f"greedy evaluation, whole episodes (mean +- std over {args.eval_episodes} track"
            f"{'s' if args.eval_episodes > 1 else ''})",
        )
    ax.set_xlabel("environment steps (x action repeat = frames)")
    ax.set_ylabel("episode return")
    ax.set_title(Path(matches[0]).name.split("__")[0] + " DDQN", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{args.out_prefix}.png", dpi=120)
    print(
        f"wrote {args.out_prefix}.csv{', ' + args.out_prefix + '_eval.csv' if points else ''} and {args.out_prefix}.png "
        f"({len(returns)} training episodes, {len(points)} evaluated checkpoints)"
    )


if __name__ == "__main__":
    main()
