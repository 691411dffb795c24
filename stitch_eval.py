"""Zero-shot stitching of CarRacing agents: every encoder with every policy, no training (R3L, seed 001, Table 1).

Ricciardi et al., "Zero-shot stitching in RL using relative representations" (arXiv 2404.12917), section 4.2:
agents trained independently (other background colour, seed, algorithm or task) are frozen, and the
stitched agent ``policy_B(encoder_A(x))`` drives on encoder A's colour and task: the encoder always matches
the track it sees. Relative encoders make the policies' inputs compatible; absolute ones do not.

Usage::

    python stitch_eval.py runs/*/agent.pt                  # or run directories, or quoted globs
    python stitch_eval.py 'runs/*' --num-tracks 5 --workers 2

Every checkpoint (docs/checkpoints.md, format ``r3l-agent-v1``) contributes one encoder and one policy;
all ordered pairs (encoder A, policy B) are considered, A == B being the original, non-stitched agent.

Refusal rules. A pair is evaluated only if the policy can read the encoder's latent and its actions mean the
same thing in the encoder's task; otherwise it is refused with a one-line reason, listed once, shown as
"n/a" in the table, and the rest of the matrix still runs:

1. one is relative and the other absolute (the latent spaces are different objects);
2. both relative, with a different ``anchor_set_id``, ``num_anchors`` or ``anchor_standardize``
   (relative coordinate j must be the similarity to the same anchor state j, computed the same way);
3. a different ``frame_stack`` or ``latent_dim`` (the policy's input layout);
4. a different ``num_actions``, or a policy whose task orders gymnasium's actions differently from the
   encoder's task (``envs.car_racing.TASKS[task]["actions"]``): the policy's action k must drive the same
   way in the environment it is evaluated in. Tasks with the same action order (standard, far, slow) stitch.

Evaluation. Deterministic greedy actions (``greedy_action``: PPO's most likely action, DDQN's argmax Q) on K
track seeds (``--num-tracks``, 5 as in Table 1), ``--episodes-per-track`` episodes each. Physics and
rendering are deterministic, so a greedy agent repeats the same episode on a track; more than one episode
per track needs ``--epsilon`` > 0 (a random action with probability epsilon, seeded per track and episode).
Two metrics per episode: the episode return, and the *maximum* return reached during the episode (Table 1's
metric: late off-road penalties do not reduce it). Cells show mean +- std (population std) over episodes.
At stitching time the stored EMA anchor embeddings of encoder A are used, not re-encoded (as the authors do).

Outputs in ``--out-dir``: ``stitch_table.md`` (Table 1 layout: rows encoders, columns policies, Rel/Abs side
by side; max return, then episode return; the refused pairs), ``stitch_episodes.csv`` (one row per episode),
``stitch_results.json`` (checkpoints, every pair with its status, reason, episodes and summary) and
``stitch_heatmap.png``. The table is printed too.
"""

import os

# numpy's OpenBLAS starts one thread per core for the environments' small matrix products
# (envs.fast_render); on busy shared cores that costs more than it saves. Must be set before numpy
# is imported; spawned workers inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import concurrent.futures
import csv
import glob
import json
import multiprocessing
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import tyro
from tqdm import tqdm

import envs  # noqa: F401  (registers ColorCarRacing-v0)
from ddqn_relative import QNetwork
from envs.car_racing import NAMED_COLORS, TASKS, make_color_car_racing
from ppo_relative import NATURE_CNN_LATENT, Encoder, Policy, load_checkpoint

# The policy module behind each algorithm (docs/checkpoints.md): PPO and RePaint keep PPO's actor-critic,
# DDQN its Q-head; all have greedy_action(latent).
POLICY_CLASSES = {"ppo": Policy, "repaint": Policy, "ddqn": QNetwork}
KINDS = ("Rel", "Abs")


@dataclass
class Args:
    checkpoints: tyro.conf.Positional[tuple[str, ...]]
    """checkpoint files (agent.pt) and/or run directories holding one; globs are expanded (and skip directories without agent.pt)"""
    num_tracks: int = 5
    """K: evaluation track seeds first_track_seed, ..., first_track_seed + K - 1 (Table 1 uses 5 tracks)"""
    first_track_seed: int = 1000
    """first evaluation track seed (the anchor recipe drives tracks 1-4)"""
    episodes_per_track: int = 1
    """episodes per track and pair; more than one needs --epsilon > 0 (greedy episodes repeat exactly)"""
    epsilon: float = 0.0
    """probability of a uniformly random action at each step (0: purely greedy, as in Table 1)"""
    max_episode_steps: int | None = None
    """cut episodes after this many steps (default: the encoder task's own limit, 1000 or 3000 for slow)"""
    seed: int = 1
    """seed of the epsilon-random actions"""
    workers: int = min(4, os.cpu_count() or 1)
    """parallel evaluation processes"""
    out_dir: str = "runs/stitch_eval"
    """where the table, CSV, JSON and heatmap are written"""


class UserError(Exception):
    """Bad input: reported as one line, exit status 2."""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def expand_checkpoint_paths(patterns: tuple[str, ...] | list[str]) -> list[Path]:
    """Checkpoint files from files, run directories and globs, in the order given, without duplicates."""
    paths: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
            if not matches:
                raise UserError(f"checkpoint pattern {pattern!r} matches nothing; accepted: agent.pt files or run directories")
            found = [m if m.is_file() else m / "agent.pt" for m in matches if m.is_file() or (m / "agent.pt").is_file()]
        else:
            path = Path(pattern)
            if path.is_dir():
                path = path / "agent.pt"
            if not path.is_file():
                raise UserError(f"checkpoint {pattern!r} does not exist; accepted: an agent.pt file or a run directory holding one")
            found = [path]
        paths += [p for p in found if p not in paths]
    if not paths:
        given = f"none found in {' '.join(patterns)!r}" if patterns else "none given"
        raise UserError(f"no checkpoint: {given}; accepted: agent.pt files or run directories (globs welcome)")
    return paths


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, checked against the contract (ppo_relative.load_checkpoint) and for what stitching
    needs: an algorithm with a known policy module and a CarRacing task."""
    try:
        checkpoint = load_checkpoint(str(path))
    except ValueError as e:
        raise UserError(str(e)) from None
    metadata = checkpoint["metadata"]
    if metadata["algorithm"] not in POLICY_CLASSES:
        raise UserError(f"{path}: unknown algorithm {metadata['algorithm']!r}; accepted: {', '.join(POLICY_CLASSES)}")
    if metadata["task"] not in TASKS:
        raise UserError(f"{path}: unknown task {metadata['task']!r}; accepted: {', '.join(TASKS)}")
    return checkpoint


def build_agent(checkpoint: dict, path: str | Path) -> tuple[Encoder, torch.nn.Module]:
    """Encoder and policy rebuilt from the metadata and loaded with the stored weights (eval mode)."""
    m = checkpoint["metadata"]
    encoder = Encoder(
        frame_stack=m["frame_stack"],
        relative=m["relative"],
        num_anchors=m["num_anchors"] if m["relative"] else NATURE_CNN_LATENT,
        standardize=m["anchor_standardize"],
    )
    policy = POLICY_CLASSES[m["algorithm"]](m["latent_dim"], m["num_actions"])
    try:
        encoder.load_state_dict(checkpoint["encoder"])
        policy.load_state_dict(checkpoint["policy"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: weights do not match the metadata ({first_line(e)}); accepted: an unmodified agent.pt") from None
    return encoder.eval(), policy.eval()


def load_agent(path: str | Path) -> tuple[Encoder, torch.nn.Module, dict]:
    checkpoint = read_checkpoint(path)
    return *build_agent(checkpoint, path), checkpoint["metadata"]


def stitch_refusal(encoder_meta: dict, policy_meta: dict) -> str | None:
    """Why policy_B(encoder_A(x)) cannot be evaluated (the rules of the module docstring), or None."""
    e, p = encoder_meta, policy_meta
    if e["relative"] != p["relative"]:
        return "relative encoder with absolute policy" if e["relative"] else "absolute encoder with relative policy"
    keys = ("anchor_set_id", "num_anchors", "anchor_standardize") if e["relative"] else ()
    for key in (*keys, "frame_stack", "latent_dim", "num_actions"):
        if e[key] != p[key]:
            return f"different {key} (encoder {e[key]}, policy {p[key]})"
    if TASKS[e["task"]]["actions"] != TASKS[p["task"]]["actions"]:
        return f"policy task {p['task']!r} orders the actions differently from encoder task {e['task']!r}"
    return None


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Job:
    encoder_path: str
    policy_path: str
    track_seed: int
    episode: int
    epsilon: float
    seed: int
    max_episode_steps: int | None


_AGENTS: dict[str, tuple[Encoder, torch.nn.Module, dict]] = {}  # per worker process: path -> loaded agent


def _init_worker() -> None:
    torch.set_num_threads(1)


def _agent(path: str) -> tuple[Encoder, torch.nn.Module, dict]:
    if path not in _AGENTS:
        _AGENTS[path] = load_agent(path)
    return _AGENTS[path]


@torch.no_grad()
def run_episode(job: Job) -> dict:
    """One episode of policy_B(encoder_A(x)) on encoder A's colour and task (seed 001, section 4.2)."""
    encoder, _, encoder_meta = _agent(job.encoder_path)
    _, policy, policy_meta = _agent(job.policy_path)
    env = make_color_car_racing(encoder_meta["bg_color"], encoder_meta["task"], encoder_meta["frame_stack"])
    limit = job.max_episode_steps or env.unwrapped.max_episode_steps
    rng = np.random.default_rng([job.seed, job.track_seed, job.episode])
    obs, _ = env.reset(seed=job.track_seed)  # the track seed decides the track
    episode_return, max_return, length, done = 0.0, -np.inf, 0, False
    while not done and length < limit:
        if rng.random() < job.epsilon:
            action = int(rng.integers(policy_meta["num_actions"]))
        else:
            action = int(policy.greedy_action(encoder(torch.from_numpy(obs)[None]))[0])
        obs, reward, terminated, truncated, _ = env.step(action)
        episode_return += reward
        max_return = max(max_return, episode_return)  # Table 1: the best return reached during the episode
        length += 1
        done = terminated or truncated
    env.close()
    return {"track_seed": job.track_seed, "episode": job.episode, "episode_return": episode_return,
            "max_return": max_return, "length": length}


def evaluate(jobs: list[Job], workers: int) -> list[dict]:
    """Run the episodes in `workers` spawned processes (one worker: in this process); results in the order of
    `jobs`. Every episode uses one torch thread, so the numbers do not depend on `workers`."""
    if workers == 1:
        _init_worker()
        return [run_episode(job) for job in tqdm(jobs, desc="episodes", file=sys.stderr)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(run_episode, job): i for i, job in enumerate(jobs)}
        results: list[dict] = [{} for _ in jobs]
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(jobs), desc="episodes", file=sys.stderr):
            results[futures[future]] = future.result()
    return results


# ------------------------------------------------------------------------------------------------- tables
def checkpoint_labels(metas: list[dict], runs: list[str]) -> list[str]:
    """A short name per checkpoint, unique within its kind (Rel/Abs): the colour, plus the task and algorithm
    where these vary. While two checkpoints of one kind share a name, every checkpoint with that name gets the
    next of seed, experiment name (--exp-name) and run directory that varies among them, so a relative and an
    absolute run of one experiment keep sharing a name (a table row)."""
    labels = [[str(m["bg_color"])] + [str(m[k]) for k in ("task", "algorithm") if len({n[k] for n in metas}) > 1] for m in metas]
    extras = [(f"s{m['seed']}", str(m.get("args", {}).get("exp_name", run)), f"({run})") for m, run in zip(metas, runs)]
    for level in range(3):
        keys = [(" ".join(label), m["relative"]) for label, m in zip(labels, metas)]
        ambiguous = {key[0] for key in keys if keys.count(key) > 1}
        for name in ambiguous:
            group = [i for i, label in enumerate(labels) if " ".join(label) == name]
            if len({extras[i][level] for i in group}) > 1:
                for i in group:
                    labels[i].append(extras[i][level])
    return [" ".join(label) for label in labels]


def label_order(label_meta: dict[str, dict]) -> list[str]:
    """Labels sorted like Table 1: named colours in their usual order, then task, algorithm, seed."""
    colour_rank = {name: i for i, name in enumerate(NAMED_COLORS)}

    def key(label: str):
        m = label_meta[label]
        return (colour_rank.get(str(m["bg_color"]).lower(), len(colour_rank)), str(m["bg_color"]), m["task"], m["algorithm"], m["seed"], label)

    return sorted(label_meta, key=key)


def format_cell(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def build_grid(checkpoints: list[dict], pairs: dict[tuple[int, int], dict]) -> tuple[list[str], list[str], dict]:
    """Rows (encoder labels), columns ((policy label, kind)) and cell -> pair, in Table 1's layout."""
    label_meta = {c["label"]: c["metadata"] for c in checkpoints}
    labels = label_order(label_meta)
    kinds = [kind for kind in KINDS if any((c["metadata"]["relative"]) == (kind == "Rel") for c in checkpoints)]
    index = {(c["label"], "Rel" if c["metadata"]["relative"] else "Abs"): i for i, c in enumerate(checkpoints)}
    columns = [(label, kind) for label in labels for kind in kinds if (label, kind) in index]
    rows = [label for label in labels if any((label, kind) in index for kind in kinds)]
    cells = {}
    for row in rows:
        for column in columns:
            encoder = index.get((row, column[1]))
            cells[row, column] = None if encoder is None else pairs[encoder, index[column]]
    return rows, columns, cells


def markdown_table(rows, columns, cells, metric: str) -> str:
    header = "| encoder \\ policy | " + " | ".join(f"{label} {kind}" for label, kind in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for row in rows:
        entries = []
        for column in columns:
            pair = cells[row, column]
            if pair is None:
                entries.append("–")  # no encoder of this kind for the row
            elif pair["status"] == "refused":
                entries.append("n/a")
            else:
                entries.append(format_cell([e[metric] for e in pair["episodes"]]))
        lines.append(f"| {row} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def plot_heatmap(rows, columns, cells, path: Path) -> None:
    """Mean maximum return per (encoder, policy), one panel per kind (Rel, Abs) with the encoders and policies
    of that kind; refused cells grey, marked n/a."""
    kinds = [kind for kind in KINDS if any(c[1] == kind for c in columns)]
    means = [p["summary"]["max_return_mean"] for p in cells.values() if p is not None and p["status"] == "evaluated"]
    vmin, vmax = (min(means), max(means)) if means else (0.0, 1.0)
    vmax = vmax if vmax > vmin else vmin + 1.0
    panels = {kind: ([r for r in rows if any(cells[r, c] is not None for c in columns if c[1] == kind)],
                     [label for label, k in columns if k == kind]) for kind in kinds}
    width = sum(1.5 + 1.1 * len(panel_columns) for _, panel_columns in panels.values())
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.0 + width, 2.0 + 0.7 * len(rows)), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        panel_rows, panel_columns = panels[kind]
        grid = np.full((len(panel_rows), len(panel_columns)), np.nan)
        ax.set_facecolor("0.85")
        for i, row in enumerate(panel_rows):
            for j, label in enumerate(panel_columns):
                pair = cells[row, (label, kind)]
                if pair["status"] == "refused":
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=8)
                    continue
                s = pair["summary"]
                grid[i, j] = s["max_return_mean"]
                dark = s["max_return_mean"] < (vmin + vmax) / 2
                ax.text(j, i, f"{s['max_return_mean']:.0f}\n±{s['max_return_std']:.0f}", ha="center", va="center",
                        fontsize=8, color="white" if dark else "black")
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(panel_columns)), panel_columns, rotation=30, ha="right")
        ax.set_yticks(range(len(panel_rows)), panel_rows)
        ax.set_xlabel("policy")
        ax.set_ylabel("encoder (drives on its own colour)")
        ax.set_title(f"{'relative' if kind == 'Rel' else 'absolute'} stitching")
        fig.colorbar(image, ax=ax, label="max return, mean over episodes")
    fig.suptitle("Zero-shot stitching: policy_B(encoder_A(x)) on encoder A's track (seed 001, Table 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> None:
    for name, value, ok, accepted in (
        ("--num-tracks", args.num_tracks, args.num_tracks >= 1, "an integer >= 1"),
        ("--episodes-per-track", args.episodes_per_track, args.episodes_per_track >= 1, "an integer >= 1"),
        ("--epsilon", args.epsilon, 0.0 <= args.epsilon <= 1.0, "a probability in [0, 1]"),
        ("--workers", args.workers, args.workers >= 1, "an integer >= 1"),
        ("--max-episode-steps", args.max_episode_steps, args.max_episode_steps is None or args.max_episode_steps >= 1, "an integer >= 1"),
    ):
        if not ok:
            raise UserError(f"{name} {value} is invalid; accepted: {accepted}")
    if args.episodes_per_track > 1 and args.epsilon == 0.0:
        raise UserError(
            f"--episodes-per-track {args.episodes_per_track} with --epsilon 0 repeats one deterministic episode; "
            "accepted: --episodes-per-track 1, or --epsilon > 0"
        )
    paths = expand_checkpoint_paths(args.checkpoints)
    metas = []
    for path in paths:  # load every agent once up front, so that a bad file fails before the long run
        *_, metadata = load_agent(path)
        metas.append(metadata)
    runs = [path.parent.name for path in paths]
    checkpoints = [
        {"path": str(path), "run": run, "label": label, "kind": "Rel" if m["relative"] else "Abs",
         "metadata": {k: v for k, v in m.items() if k != "args"}}
        for path, run, label, m in zip(paths, runs, checkpoint_labels(metas, runs), metas)
    ]

    pairs: dict[tuple[int, int], dict] = {}
    jobs, job_pairs = [], []
    track_seeds = range(args.first_track_seed, args.first_track_seed + args.num_tracks)
    for a, encoder in enumerate(checkpoints):
        for b, policy in enumerate(checkpoints):
            reason = stitch_refusal(encoder["metadata"], policy["metadata"])
            pairs[a, b] = {"encoder": encoder["label"], "encoder_kind": encoder["kind"], "encoder_path": encoder["path"],
                           "policy": policy["label"], "policy_kind": policy["kind"], "policy_path": policy["path"],
                           "status": "refused" if reason else "evaluated", "reason": reason, "episodes": []}
            if reason is None:
                for track_seed in track_seeds:
                    for episode in range(args.episodes_per_track):
                        jobs.append(Job(encoder["path"], policy["path"], track_seed, episode, args.epsilon, args.seed, args.max_episode_steps))
                        job_pairs.append((a, b))
    refused = [p for p in pairs.values() if p["status"] == "refused"]
    for pair in refused:
        print(f"refused: encoder {pair['encoder']} {pair['encoder_kind']} + policy {pair['policy']} {pair['policy_kind']}: {pair['reason']}")
    print(f"{len(checkpoints)} checkpoints, {len(pairs) - len(refused)} pairs evaluated x {len(track_seeds)} tracks x "
          f"{args.episodes_per_track} episodes = {len(jobs)} episodes, {len(refused)} pairs refused")

    for (a, b), result in zip(job_pairs, evaluate(jobs, args.workers)):
        pairs[a, b]["episodes"].append(result)
    for pair in pairs.values():
        if pair["episodes"]:
            pair["summary"] = {f"{metric}_{stat}": float(fn([e[metric] for e in pair["episodes"]]))
                               for metric in ("max_return", "episode_return") for stat, fn in (("mean", np.mean), ("std", np.std))}

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, columns, cells = build_grid(checkpoints, pairs)
    tracks = f"{len(track_seeds)} tracks (seeds {track_seeds.start}-{track_seeds.stop - 1}) x {args.episodes_per_track} episodes"
    report = "\n\n".join([
        f"## Maximum return during the episode (seed 001, Table 1 metric), mean ± std over {tracks}",
        markdown_table(rows, columns, cells, "max_return"),
        f"## Episode return, mean ± std over {tracks}",
        markdown_table(rows, columns, cells, "episode_return"),
        "Rows: encoders (driving on their own colour and task); columns: policies. n/a: refused pair; –: no such encoder.",
        "## Refused pairs\n\n" + ("\n".join(f"- encoder {p['encoder']} {p['encoder_kind']} + policy {p['policy']} {p['policy_kind']}: {p['reason']}"
                                           for p in refused) or "none"),
        "## Checkpoints\n\n" + "\n".join(f"- {c['label']} {c['kind']}: `{c['path']}` ({c['metadata']['algorithm']}, "
                                          f"task {c['metadata']['task']}, seed {c['metadata']['seed']}, "
                                          f"{c['metadata']['global_step']} steps)" for c in checkpoints),
    ])
    (out_dir / "stitch_table.md").write_text(report + "\n")
    with open(out_dir / "stitch_episodes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["encoder", "encoder_kind", "policy", "policy_kind", "encoder_path", "policy_path",
                         "track_seed", "episode", "episode_return", "max_return", "length"])
        for pair in pairs.values():
            for e in pair["episodes"]:
                writer.writerow([pair["encoder"], pair["encoder_kind"], pair["policy"], pair["policy_kind"], pair["encoder_path"],
                                 pair["policy_path"], e["track_seed"], e["episode"], e["episode_return"], e["max_return"], e["length"]])
    with open(out_dir / "stitch_results.json", "w") as f:
        json.dump({"args": asdict(args), "checkpoints": checkpoints, "pairs": list(pairs.values())}, f, indent=1)
    plot_heatmap(rows, columns, cells, out_dir / "stitch_heatmap.png")
    print(report)
    print(f"wrote {out_dir}/stitch_table.md, stitch_episodes.csv, stitch_results.json, stitch_heatmap.png")


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
