"""Latent-space analysis of CarRacing encoders: frame-by-frame similarity matrices (R3L, Figures 3-5).

Ricciardi et al., "R3L: Relative Representations for Reinforcement Learning" (arXiv 2404.12917), section 4.3:
one fixed action sequence is replayed on the same track in each encoder's colour, so that frames
x_i^(1) and x_i^(2) differ only in colour. For each pair of encoders the T x T matrix

    S[i, j] = cos( E1(x_i^(1)), E2(x_j^(2)) )

is diagonal when the two encoders represent the same state the same way. The paper finds it diagonal for
relative latents, across colours (Fig. 3), seeds (Fig. 4) and algorithms (PPO vs DDQN, Fig. 5), and not for
absolute latents.

Usage::

    python latent_similarity.py runs/green_run runs/red_run [more checkpoints or globs]
    python latent_similarity.py 'runs/*' --actions-from runs/green_run/agent.pt --num-steps 600

What is compared:

- The action sequence is the anchors' scripted driver (``envs.anchors.WaypointDriver``; default, independent
  of every model compared, as in the paper) or ``--actions-from CHECKPOINT``: that agent's greedy actions on
  the track in its own colour, view and task, mapped to gymnasium's numbering through ``action_to_gym``.
- Each encoder sees the replay in its own colour and camera view (``envs.anchors.render_trajectory``).
- Latents are per frame: the encoder embeds every frame of a stack separately (``Encoder.embed_frames``), so
  frame i's latent is the newest frame's block of the observation latent, whatever the frame stack.
  *Absolute* latents: the CNN embedding (3136 numbers). *Relative* latents: that embedding projected on the
  encoder's stored anchor embeddings (``Encoder.projection``), the policy's input.
- Relative matrices exist only for pairs of relative encoders with the same anchor set, number of anchors and
  standardisation: relative coordinate k is the similarity to anchor state k, so two relative latents are
  comparable only when their anchors are the same states. An absolute encoder has no anchors; its pairs get
  the absolute matrix only (no post-hoc anchors are invented for it).

Figures of merit per pair and latent type (printed, and in ``similarity_summary.json``):
mean diagonal similarity, mean off-diagonal similarity, and retrieval accuracy: the fraction of frames i whose
most similar frame argmax_j S[i, j] lies within ``--retrieval-window`` frames of i (consecutive frames of a
50 FPS replay are nearly identical, and the first ~50 are the camera zoom-in).

Outputs in ``--out-dir``: one PNG per pair, ``similarity_{k1}_{k2}.png`` (absolute and relative panels side by
side, each with a colour bar), and ``similarity_summary.json`` (checkpoints, actions, figures of merit).
"""

import os

# numpy's OpenBLAS starts one thread per core for the environments' small matrix products
# (envs.fast_render); on busy shared cores that costs more than it saves. Must be set before numpy
# is imported; spawned workers inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import tyro

import envs  # noqa: F401  (registers ColorCarRacing-v0)
from envs.anchors import record_trajectory, render_trajectory
from envs.car_racing import make_color_car_racing
from envs.checkpoint import ensure_writable_dir, fail
from stitch_eval import UserError, expand_checkpoint_paths, load_agent


@dataclass
class Args:
    checkpoints: tyro.conf.Positional[tuple[str, ...]]
    """two or more checkpoint files (agent.pt) and/or run directories; globs are expanded"""
    actions_from: str = "driver"
    """'driver' (the anchors' scripted waypoint driver) or a checkpoint whose greedy actions are replayed"""
    track_seed: int = 1000
    """the track the actions are replayed on (the anchor recipe drives tracks 1-4)"""
    num_steps: int = 1000
    """T: at most this many frames (fewer if the episode ends first)"""
    retrieval_window: int = 2
    """frame i is retrieved when its most similar frame j satisfies |i - j| <= this"""
    torch_threads: int = 1
    """torch CPU threads"""
    out_dir: str = "runs/latent_similarity"
    """where the figures and similarity_summary.json are written"""


@torch.no_grad()
def frame_latents(encoder, frames: np.ndarray, chunk_size: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(T, 3, 84, 84) uint8 frames -> absolute latents (T, 3136) and relative latents (T, num_anchors) or None."""
    absolute = torch.cat([encoder.embed_frames(chunk) for chunk in torch.from_numpy(frames).split(chunk_size)])
    relative = encoder.projection(absolute) if encoder.projection is not None else None
    return absolute, relative


def cosine_similarity_matrix(z1: torch.Tensor, z2: torch.Tensor) -> np.ndarray:
    """S[i, j] = cos(z1_i, z2_j)."""
    return (F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T).numpy()


def figures_of_merit(similarity: np.ndarray, window: int) -> dict[str, float]:
    """Mean diagonal and off-diagonal similarity, and the retrieval accuracy within `window` frames."""
    t = len(similarity)
    diagonal = np.diag(similarity)
    off_diagonal = (similarity.sum() - diagonal.sum()) / (t * t - t)
    retrieved = np.abs(similarity.argmax(axis=1) - np.arange(t)) <= window
    return {"diagonal": float(diagonal.mean()), "off_diagonal": float(off_diagonal), "retrieval": float(retrieved.mean())}


def relative_refusal(meta1: dict, meta2: dict) -> str | None:
    """Why the relative latents of two encoders cannot be compared coordinate by coordinate, or None."""
    if not (meta1["relative"] and meta2["relative"]):
        return "absolute encoder: no relative latents"
    for key in ("anchor_set_id", "num_anchors", "anchor_standardize"):
        if meta1[key] != meta2[key]:
            return f"different {key} ({meta1[key]} vs {meta2[key]})"
    return None


@torch.no_grad()
def greedy_gym_actions(path: str | Path, track_seed: int, num_steps: int) -> np.ndarray:
    """Gymnasium-numbered greedy actions of a checkpoint's agent on `track_seed`, in its own colour and task."""
    encoder, policy, meta = load_agent(path)
    env = make_color_car_racing(meta["bg_color"], meta["task"], meta["frame_stack"], view=meta["view"])
    obs, _ = env.reset(seed=track_seed)
    actions = []
    for _ in range(num_steps):
        action = int(policy.greedy_action(encoder(torch.from_numpy(obs)[None]))[0])
        actions.append(int(env.unwrapped.action_to_gym[action]))  # task numbering -> gymnasium's
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    env.close()
    return np.asarray(actions, dtype=np.int64)


def describe(index: int, meta: dict, path: Path) -> str:
    """A label that tells every checkpoint apart: index, what it was trained on, and its run folder."""
    kind = "rel" if meta["relative"] else "abs"
    trained_on = f"{meta['bg_color']} {meta['view']} {meta['task']} {meta['algorithm']} {kind}"
    return f"[{index}] {trained_on} seed {meta['seed']} ({path.parent.name})"


def plot_pair(
    matrices: dict[str, np.ndarray], merits: dict[str, dict], name1: str, name2: str, note: str | None, path: Path
) -> None:
    """Figures 3-5: absolute and relative similarity matrices side by side, each with its colour bar (spanning
    the matrix's own range, so that structure shows even when all similarities are close)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, kind in zip(axes, ("absolute", "relative")):
        if kind not in matrices:
            ax.axis("off")
            ax.text(0.5, 0.5, f"relative: n/a\n({note})", ha="center", va="center", transform=ax.transAxes)
            continue
        image = ax.imshow(matrices[kind], cmap="viridis", interpolation="nearest")  # colour range: the matrix's own
        m = merits[kind]
        ax.set_title(
            f"{kind}: diag {m['diagonal']:.2f}, off-diag {m['off_diagonal']:.2f}, retrieval {m['retrieval']:.2f}", fontsize=9
        )
        ax.set_xlabel(f"frame j, E2(x_j): {name2}", fontsize=8)
        ax.set_ylabel(f"frame i, E1(x_i): {name1}", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, label="cosine similarity")
    fig.suptitle(
        r"$\cos(E_1(x_i^{(1)}), E_2(x_j^{(2)}))$: the same actions on the same track, each encoder in its own colour and view"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: Args) -> None:
    for name, value, minimum in (
        ("--num-steps", args.num_steps, 2),
        ("--retrieval-window", args.retrieval_window, 0),
        ("--torch-threads", args.torch_threads, 1),
    ):
        if value < minimum:
            raise UserError(f"{name} {value} is invalid; accepted: an integer >= {minimum}")
    paths = expand_checkpoint_paths(args.checkpoints)
    if len(paths) < 2:
        raise UserError(f"{len(paths)} checkpoint given ({paths[0]}); accepted: two or more checkpoints to compare")
    torch.set_num_threads(args.torch_threads)
    agents = [load_agent(path) for path in paths]
    try:  # before the replays and latents are computed, so that nothing is lost to an unwritable folder
        ensure_writable_dir(args.out_dir, "--out-dir")
    except ValueError as e:
        raise UserError(str(e)) from None
    names = [describe(i, meta, path) for i, ((*_, meta), path) in enumerate(zip(agents, paths))]
    for name, path in zip(names, paths):
        print(f"{name}: {path}")

    if args.actions_from == "driver":
        actions = record_trajectory(args.track_seed, args.num_steps)
        source = "the anchors' scripted waypoint driver"
    else:
        actions = greedy_gym_actions(expand_checkpoint_paths([args.actions_from])[0], args.track_seed, args.num_steps)
        source = f"greedy actions of {args.actions_from}"
    if len(actions) < 2:
        raise UserError(
            f"the replay from {source} on track {args.track_seed} ends after {len(actions)} step; "
            "accepted: a source that drives >= 2 steps"
        )
    print(f"replaying {len(actions)} actions ({source}) on track {args.track_seed}")

    frames = {}  # one replay per (colour, view) that some encoder sees
    latents = []
    for encoder, _, meta in agents:
        domain = (meta["bg_color"], meta["view"])
        if domain not in frames:
            frames[domain] = render_trajectory(args.track_seed, actions, *domain)
        latents.append(frame_latents(encoder, frames[domain]))

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, j in itertools.combinations(range(len(agents)), 2):
        note = relative_refusal(agents[i][2], agents[j][2])
        matrices = {"absolute": cosine_similarity_matrix(latents[i][0], latents[j][0])}
        if note is None:
            matrices["relative"] = cosine_similarity_matrix(latents[i][1], latents[j][1])
        merits = {kind: figures_of_merit(matrix, args.retrieval_window) for kind, matrix in matrices.items()}
        figure = out_dir / f"similarity_{i}_{j}.png"
        plot_pair(matrices, merits, names[i], names[j], note, figure)
        results.append(
            {
                "encoder_1": names[i],
                "path_1": str(paths[i]),
                "encoder_2": names[j],
                "path_2": str(paths[j]),
                "figure": str(figure),
                "relative_note": note,
                **merits,
            }
        )

    width = max(len(name) for name in names)
    header = f"{'E1':<{width}} {'E2':<{width}} {'latent':<9} {'diag':>6} {'offdiag':>8} {'retrieval':>9}"
    lines = [header, "-" * len(header)]
    for r in results:
        for kind in ("absolute", "relative"):
            if kind in r:
                m = r[kind]
                pair = f"{r['encoder_1']:<{width}} {r['encoder_2']:<{width}} {kind:<9}"
                lines.append(f"{pair} {m['diagonal']:>6.3f} {m['off_diagonal']:>8.3f} {m['retrieval']:>9.3f}")
            else:
                lines.append(f"{r['encoder_1']:<{width}} {r['encoder_2']:<{width}} {kind:<9} n/a: {r['relative_note']}")
    print("\n".join(lines))
    summary = {
        "args": asdict(args),
        "actions": source,
        "track_seed": args.track_seed,
        "num_frames": len(actions),
        "pairs": results,
    }
    (out_dir / "similarity_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {len(results)} figures and similarity_summary.json to {out_dir}")


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except UserError as e:
        fail(str(e))
