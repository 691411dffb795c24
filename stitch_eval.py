"""Zero-shot stitching of CarRacing agents: every encoder with every policy, no training (R3L, Table 1).

Ricciardi et al., "R3L: Relative Representations for Reinforcement Learning" (arXiv 2404.12917): agents trained
independently (other background colour, camera, seed, algorithm or task) are frozen, and the stitched agent
``policy_B(encoder_A(x))`` is played without any training. Relative encoders make the policies' inputs
compatible; absolute ones do not, unless their latent spaces are first translated (``--translate``).

Usage::

    python stitch_eval.py runs/*/agent.pt                  # or run directories, or quoted globs
    python stitch_eval.py 'runs/*' --num-tracks 5 --workers 2 --exclude-same-seed --translate

What a pair is played on (as the authors' ``--playon``). The encoder decides what is seen, the policy decides
what is asked: by default (``--play-on policy``) the pair drives on encoder A's colour and camera view with
policy B's task (reward rule, action set and order, episode length) and reward. ``--play-on encoder`` plays on
A's task instead; the policy's action k then goes through gymnasium's action names into A's action numbering
(a pair is refused there when B has an action A's task lacks, e.g. "nothing" under ``no_idle``). Random
(``--epsilon``) actions are drawn from the policy's action space. Every pair's ``played_on`` is recorded.

What is refused (only what cannot work; one line per pair, listed, "n/a" in the tables):

1. one agent relative and the other absolute, unless ``--translate`` (the latent spaces are different objects);
2. both relative with a different ``anchor_set_id``, ``num_anchors`` or ``anchor_standardize`` (relative
   coordinate j must be the similarity to the same anchor state j, computed the same way);
3. a different ``frame_stack`` or ``latent_dim`` (the policy's input layout; translation maps between latent
   sizes only with ``--translate-method affine``).

Latent space translation (``--translate``; Maiorca et al., "Latent Space Translation via Semantic Alignment",
NeurIPS 2023; the R3L authors' ``--stitching-mode translate``). For a pair involving an absolute agent, the
anchor states of the default anchor recipe are embedded by encoder A in A's colour and view and by policy B's
own encoder in B's colour and view; a map T from A's per-frame latents to B's is fitted on them and applied
before B's policy: ``policy_B(T(encoder_A(x)))``. ``procrustes`` (default): centre, scale to unit mean norm,
and the orthogonal R minimising ||X R - Y|| (R = U V^T from the SVD of X^T Y); ``affine``: least squares
[X 1] W = Y. These pairs form their own blocks ("absolute + translation", ...).

Several checkpoints per configuration (colour, view, task, algorithm, kind; any number of seeds) are pooled:
a cell of a table is every (encoder run, policy run) pair of its row and column configurations x tracks x
episodes, mean +- std over those episodes. As in R3L, a pair whose encoder and policy share colour, view,
task and seed is not stitching: on the diagonal (row = column configuration) only pairs of different seeds
count, and the original agents are shown (marked "own") only where a configuration has a single seed.
``--exclude-same-seed`` also drops off-diagonal pairs whose runs share a seed (same initial weights).

Evaluation. Deterministic greedy actions (PPO's most likely action, DDQN's argmax Q) on K track seeds
(``--num-tracks``, 5 as Table 1). Per episode: the episode return and the *maximum* return reached during the
episode (Table 1's metric). Relative encoders use their stored EMA anchor embeddings (as the authors do).
Figures of merit per block: the mean maximum return off the diagonal divided by that on it, overall and split
into pairs that differ in visuals only, in task, or in algorithm.

Outputs in ``--out-dir`` (checked to be writable before any episode runs): ``stitch_table.md`` (also
printed), ``stitch_episodes.csv`` (one row per episode), ``stitch_results.json`` (checkpoints, every pair with
status, reason, ``played_on``, episodes, and the figures of merit) and ``stitch_heatmap.png``. With ``--videos``,
``videos/``: one GIF per evaluated pair (its first track: the agent's 84x84 view scaled up with nearest
neighbour, the return so far drawn on it) and one mosaic GIF per block (encoders as rows, policies as columns,
all pairs on the same track in lockstep, each tile labelled and greyed once its episode ends; refused pairs are
labelled blank tiles).
"""

import os

# numpy's OpenBLAS starts one thread per core for the environments' small matrix products
# (envs.fast_render); on busy shared cores that costs more than it saves. Must be set before numpy
# is imported; spawned workers inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import concurrent.futures  # noqa: E402
import csv  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import imageio.v3 as iio  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import tyro  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tqdm import tqdm  # noqa: E402

import envs  # noqa: E402, F401  (registers ColorCarRacing-v0)
from ddqn_relative import QNetwork  # noqa: E402
from envs.anchors import load_anchor_set  # noqa: E402
from envs.car_racing import NAMED_COLORS, TASKS, VIEWS, make_color_car_racing  # noqa: E402
from envs.checkpoint import ensure_writable_dir, fail, load_agent_checkpoint  # noqa: E402
from ppo_relative import NATURE_CNN_LATENT, Encoder, Policy  # noqa: E402

# The policy module behind each algorithm (docs/checkpoints.md): PPO and REPAINT keep PPO's actor-critic,
# DDQN its Q-head; all have greedy_action(latent).
POLICY_CLASSES = {"ppo": Policy, "repaint": Policy, "ddqn": QNetwork}
KIND = {True: "Rel", False: "Abs"}
PLAY_ON = ("policy", "encoder")
TRANSLATE_METHODS = ("procrustes", "affine")
GYM_ACTION_NAMES = ("nothing", "left", "right", "gas", "brake")


@dataclass
class Args:
    checkpoints: tyro.conf.Positional[tuple[str, ...]]
    """checkpoint files (agent.pt) and/or run directories holding one; globs are expanded (and skip directories without
    agent.pt)"""
    play_on: str = "policy"
    """policy: the encoder's colour and view with the policy's task (R3L's default); encoder: the encoder's task too"""
    translate: bool = False
    """also play every pair involving an absolute agent through a latent space translation fitted on anchor states"""
    translate_method: str = "procrustes"
    """procrustes (centre, scale, orthogonal map by SVD) or affine (least squares)"""
    translate_anchors: int = 1024
    """anchor states (evenly spaced in the default 3136-frame anchor set) the translation is fitted on"""
    exclude_same_seed: bool = False
    """drop pairs whose encoder and policy runs share a seed (they started from the same weights)"""
    num_tracks: int = 5
    """K: evaluation track seeds first_track_seed, ..., first_track_seed + K - 1 (Table 1 uses 5 tracks)"""
    first_track_seed: int = 1000
    """first evaluation track seed (the anchor recipe drives tracks 1-4)"""
    episodes_per_track: int = 1
    """episodes per track and pair; more than one needs --epsilon > 0 (greedy episodes repeat exactly)"""
    epsilon: float = 0.0
    """probability of a uniformly random action (of the policy's action space) at each step (0: greedy, as Table 1)"""
    max_episode_steps: Optional[int] = None
    """cut episodes after this many steps (default: the played task's own limit, 1000 or 3000 for slow)"""
    seed: int = 1
    """seed of the epsilon-random actions"""
    workers: int = min(4, os.cpu_count() or 1)
    """parallel evaluation processes"""
    out_dir: str = "runs/stitch_eval"
    """where the table, CSV, JSON and heatmap are written"""
    videos: bool = False
    """write a GIF of every evaluated pair's first track and a mosaic GIF per block to {out_dir}/videos/"""
    video_steps: int = 300
    """steps of each episode the GIFs show (pair GIFs: every second step is a frame; mosaics: every third)"""


class UserError(Exception):
    """Bad input: reported as one line, exit status 2."""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------- checkpoints
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
                raise UserError(
                    f"checkpoint {pattern!r} does not exist; accepted: an agent.pt file or a run directory holding one"
                )
            found = [path]
        paths += [p for p in found if p not in paths]
    if not paths:
        given = f"none found in {' '.join(patterns)!r}" if patterns else "none given"
        raise UserError(f"no checkpoint: {given}; accepted: agent.pt files or run directories (globs welcome)")
    return paths


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, checked against the contract (envs.checkpoint) and for what stitching needs: an
    algorithm with a known policy module, a CarRacing task and view."""
    try:
        checkpoint = load_agent_checkpoint(str(path))
    except ValueError as e:
        raise UserError(str(e)) from None
    metadata = checkpoint["metadata"]
    if metadata["algorithm"] not in POLICY_CLASSES:
        raise UserError(f"{path}: unknown algorithm {metadata['algorithm']!r}; accepted: {', '.join(POLICY_CLASSES)}")
    if metadata["task"] not in TASKS or metadata["view"] not in VIEWS:
        raise UserError(f"{path}: unknown task/view {metadata['task']!r}/{metadata['view']!r}; accepted: tasks "
                        f"{', '.join(TASKS)} and views {', '.join(VIEWS)}")  # fmt: skip
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
        raise UserError(
            f"{path}: weights do not match the metadata ({first_line(e)}); accepted: an unmodified agent.pt"
        ) from None
    return encoder.eval(), policy.eval()


def load_agent(path: str | Path) -> tuple[Encoder, torch.nn.Module, dict]:
    checkpoint = read_checkpoint(path)
    return *build_agent(checkpoint, path), checkpoint["metadata"]


# ------------------------------------------------------------------------------------- pairing rules
def stitch_refusal(encoder_meta: dict, policy_meta: dict, translated: bool = False, method: str = "procrustes") -> str | None:
    """Why policy_B(encoder_A(x)) (through a translation if `translated`) cannot be played, or None.
    Only latent reasons: tasks and action sets never refuse a pair (the policy's task is played by default)."""
    e, p = encoder_meta, policy_meta
    if e["frame_stack"] != p["frame_stack"]:
        return f"different frame_stack (encoder {e['frame_stack']}, policy {p['frame_stack']}): the policy's input layout"
    if translated:
        if method == "procrustes" and e["latent_dim"] != p["latent_dim"]:
            return f"different latent_dim (encoder {e['latent_dim']}, policy {p['latent_dim']}): procrustes maps equal sizes"
        return None
    if e["relative"] != p["relative"]:
        kinds = ("relative", "absolute") if e["relative"] else ("absolute", "relative")
        return f"{kinds[0]} encoder with {kinds[1]} policy (stitchable only with --translate)"
    keys = ("anchor_set_id", "num_anchors", "anchor_standardize") if e["relative"] else ()
    for key in (*keys, "latent_dim"):
        if e[key] != p[key]:
            return f"different {key} (encoder {e[key]}, policy {p[key]})"
    return None


def played_on(encoder_meta: dict, policy_meta: dict, play_on: str) -> dict:
    """The environment a pair drives in: the encoder's colour and view, the task and reward of `play_on`'s agent."""
    task_owner = policy_meta if play_on == "policy" else encoder_meta
    return {"bg_color": encoder_meta["bg_color"], "view": encoder_meta["view"], "task": task_owner["task"],
            "reward": task_owner["reward"]}  # fmt: skip


def action_map(policy_task: str, env_task: str) -> tuple[int, ...] | str:
    """The env action behind each of the policy's actions, matched by gymnasium's action names (identity when the
    tasks share the order), or a one-line reason when one of the policy's actions does not exist in `env_task`."""
    policy_gym, env_gym = TASKS[policy_task]["actions"], TASKS[env_task]["actions"]
    missing = [GYM_ACTION_NAMES[g] for g in policy_gym if g not in env_gym]
    if missing:
        return f"policy task {policy_task!r} has action(s) {', '.join(missing)} that task {env_task!r} lacks"
    return tuple(env_gym.index(g) for g in policy_gym)


# ------------------------------------------------------------------------------ latent space translation
@torch.no_grad()
def frame_latents(encoder: Encoder, frames: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """(N, 3, 84, 84) uint8 single frames -> (N, per-frame latent) as the policy sees each frame of a stack."""
    latents = []
    for chunk in frames.split(chunk_size):
        latent = encoder.embed_frames(chunk)
        latents.append(encoder.projection(latent) if encoder.projection is not None else latent)
    return torch.cat(latents)


def fit_translation(source: torch.Tensor, target: torch.Tensor, method: str = "procrustes") -> dict:
    """A map T with T(source_i) ~ target_i, fitted on parallel anchor latents (N, d_source) and (N, d_target).

    procrustes (Maiorca et al. 2023): standardise both sides (subtract the mean, divide by the mean row norm),
    then R = argmin_{R orthogonal} ||X R - Y||_F = U V^T where U S V^T = svd(X^T Y) (Schoenemann 1966);
    T(x) = ((x - mu_X) / s_X) R s_Y + mu_Y. With fewer anchors N than dimensions d, X^T Y has rank <= N: R is
    taken from the N x N problem (QR of X^T and Y^T, SVD of R_X R_Y^T), O(d N^2) instead of O(d^3), and kept as
    two d x N factors; it maps the anchors' span as the full solution does and discards what lies outside it.
    affine: [X 1] W = Y by least squares; T(x) = [x 1] W."""
    if method == "affine":
        source, target = source.to(solve_dtype(source, target)), target.to(solve_dtype(source, target))
        design = torch.cat([source, torch.ones(len(source), 1, dtype=source.dtype)], dim=1)
        solution = torch.linalg.lstsq(design, target, driver="gelsd").solution
        return {"method": "affine", "matrix": solution[:-1], "bias": solution[-1]}
    dtype = solve_dtype(source, target)
    return procrustes_from_sides(procrustes_side(source, dtype), procrustes_side(target, dtype))


def solve_dtype(source: torch.Tensor, target: torch.Tensor) -> torch.dtype:
    # float64 for exactness; the default 3136-wide problems in float32 (its SVD is several times faster)
    return torch.float64 if max(source.shape[1], target.shape[1]) < 1024 else torch.float32


def procrustes_side(latents: torch.Tensor, dtype: torch.dtype) -> dict:
    """One side of a Procrustes problem: mean, mean row norm, the standardised rows, and (fewer rows than
    columns) the QR factors of their transpose. Depends on that side only, so it is computed once per encoder."""
    latents = latents.to(dtype)
    mean = latents.mean(0)
    centred = latents - mean
    scale = centred.norm(dim=1).mean()
    side = {"mean": mean, "scale": scale, "x": centred / scale}
    if len(latents) < latents.shape[1]:
        side["q"], side["r"] = torch.linalg.qr(side["x"].T)
    return side


def procrustes_from_sides(source: dict, target: dict) -> dict:
    if (
        "q" in source and "q" in target
    ):  # R = Q_X U_M V_M^T Q_Y^T with U_M S V_M^T = svd(R_X R_Y^T), X^T = Q_X R_X, Y^T = Q_Y R_Y
        u, _, vh = torch.linalg.svd(source["r"] @ target["r"].T)
        left, right = source["q"] @ u, vh @ target["q"].T
    else:
        left, right = torch.linalg.svd(source["x"].T @ target["x"], full_matrices=False)[::2]
    return {"method": "procrustes", "source_mean": source["mean"], "source_scale": source["scale"], "left": left,
            "right": right, "target_scale": target["scale"], "target_mean": target["mean"]}  # fmt: skip


def apply_translation(translation: dict, latent: torch.Tensor, frame_stack: int = 1) -> torch.Tensor:
    """T applied to every frame's block of a (B, frame_stack * d) latent."""
    frames = latent.to(translation["target_mean" if translation["method"] == "procrustes" else "bias"].dtype)
    frames = frames.reshape(latent.shape[0] * frame_stack, -1)
    if translation["method"] == "affine":
        out = frames @ translation["matrix"] + translation["bias"]
    else:
        standardised = (frames - translation["source_mean"]) / translation["source_scale"]
        out = (
            standardised @ translation["left"] @ translation["right"] * translation["target_scale"]
            + translation["target_mean"]
        )
    return out.reshape(latent.shape[0], -1).to(latent.dtype)


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Job:
    encoder_path: str
    policy_path: str
    bg_color: str
    view: str
    task: str
    reward: str
    actions: tuple[int, ...]  # env action behind each policy action
    track_seed: int
    episode: int
    epsilon: float
    seed: int
    max_episode_steps: Optional[int]
    translation_path: Optional[str] = None
    frames_path: Optional[str] = None  # where to keep the episode's frames and returns (videos), or None


_AGENTS: dict[str, tuple[Encoder, torch.nn.Module, dict]] = {}  # per worker process: path -> loaded agent
_TRANSLATIONS: dict[str, dict] = {}


def _init_worker() -> None:
    torch.set_num_threads(1)


def _agent(path: str) -> tuple[Encoder, torch.nn.Module, dict]:
    if path not in _AGENTS:
        _AGENTS[path] = load_agent(path)
    return _AGENTS[path]


@torch.no_grad()
def run_episode(job: Job) -> dict:
    """One episode of policy_B(encoder_A(x)) (or policy_B(T(encoder_A(x)))) in the job's environment."""
    encoder, _, encoder_meta = _agent(job.encoder_path)
    _, policy, policy_meta = _agent(job.policy_path)
    translation = None
    if job.translation_path is not None:
        if job.translation_path not in _TRANSLATIONS:
            _TRANSLATIONS[job.translation_path] = torch.load(job.translation_path, weights_only=True)
        translation = _TRANSLATIONS[job.translation_path]
    env = make_color_car_racing(job.bg_color, job.task, encoder_meta["frame_stack"], view=job.view, reward=job.reward)
    limit = job.max_episode_steps or env.unwrapped.max_episode_steps
    rng = np.random.default_rng([job.seed, job.track_seed, job.episode])
    obs, _ = env.reset(seed=job.track_seed)  # the track seed decides the track
    action_counts = [0] * int(env.action_space.n)
    episode_return, max_return, length, done = 0.0, -np.inf, 0, False
    frames, returns = [obs[-3:].transpose(1, 2, 0)], [0.0]  # the newest RGB frame of the stack, (84, 84, 3)
    # a controller acts at its own rate: DDQN trained with --action-repeat k holds each action for k frames
    repeat = int(policy_meta.get("args", {}).get("action_repeat", 1))
    while not done and length < limit:
        if rng.random() < job.epsilon:
            policy_action = int(rng.integers(policy_meta["num_actions"]))
        else:
            latent = encoder(torch.from_numpy(obs)[None])
            if translation is not None:
                latent = apply_translation(translation, latent, encoder_meta["frame_stack"])
            policy_action = int(policy.greedy_action(latent)[0])
        action = job.actions[policy_action]
        for _ in range(repeat):
            action_counts[action] += 1
            obs, reward, terminated, truncated, _ = env.step(action)
            episode_return += reward
            max_return = max(max_return, episode_return)  # Table 1: the best return reached during the episode
            length += 1
            done = terminated or truncated
            if job.frames_path is not None:
                frames.append(obs[-3:].transpose(1, 2, 0))
                returns.append(episode_return)
            if done or length >= limit:
                break
    env.close()
    if job.frames_path is not None:
        np.savez_compressed(job.frames_path, frames=np.stack(frames), returns=np.asarray(returns))
    return {
        "track_seed": job.track_seed,
        "episode": job.episode,
        "episode_return": episode_return,
        "max_return": max_return,
        "length": length,
        "env_task": env.unwrapped.task,
        "action_counts": action_counts,
    }


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
CONFIG_KEYS = ("bg_color", "view", "task", "algorithm", "reward")


def config_labels(metas: list[dict]) -> list[str]:
    """A name per checkpoint's configuration, without the seed (runs that differ only in seed share it): the
    colour, plus view, task, algorithm and reward where these vary among the checkpoints."""
    varying = [k for k in CONFIG_KEYS[1:] if len({m[k] for m in metas}) > 1]
    return [" ".join([str(m["bg_color"])] + [str(m[k]) for k in varying]) for m in metas]


def label_order(label_meta: dict[str, dict]) -> list[str]:
    """Labels sorted like Table 1: named colours in their usual order, then view, task, algorithm."""
    colour_rank = {name: i for i, name in enumerate(NAMED_COLORS)}

    def key(label: str):
        m = label_meta[label]
        colour = str(m["bg_color"]).lower()
        return (
            colour_rank.get(colour, len(colour_rank)),
            colour,
            m["view"],
            list(TASKS).index(m["task"]),
            m["algorithm"],
            label,
        )

    return sorted(label_meta, key=key)


def block_name(encoder_kind: str, policy_kind: str, translated: bool) -> str:
    kinds = {"Rel": "relative", "Abs": "absolute"}
    name = (
        kinds[encoder_kind] if encoder_kind == policy_kind else f"{kinds[encoder_kind]} encoder, {kinds[policy_kind]} policy"
    )
    return name + (" + translation" if translated else "")


def pair_category(encoder_meta: dict, policy_meta: dict) -> str:
    """What separates the two runs of an off-diagonal pair: algorithm, else task, else the visuals only."""
    if encoder_meta["algorithm"] != policy_meta["algorithm"]:
        return "cross-algorithm"
    if encoder_meta["task"] != policy_meta["task"] or encoder_meta["reward"] != policy_meta["reward"]:
        return "cross-task"
    return "cross-visual"


def build_blocks(checkpoints: list[dict], pairs: list[dict], exclude_same_seed: bool) -> dict[str, dict]:
    """{block name: {"rows", "columns", "cells": {(row, column): [pair, ...]}, "own": {cells shown with own agents}}}.

    A cell pools the pairs of its row (encoder) and column (policy) configurations. Stitching pairs share no
    (colour, view, task, seed); a diagonal cell falls back on the original agents only when no other pair exists."""
    blocks: dict[str, dict] = {}
    for pair in pairs:
        if pair["status"] != "evaluated":
            continue
        e, p = checkpoints[pair["encoder_index"]], checkpoints[pair["policy_index"]]
        same_seed = e["metadata"]["seed"] == p["metadata"]["seed"]
        original = (
            same_seed
            and e["kind"] == p["kind"]
            and all(e["metadata"][k] == p["metadata"][k] for k in ("bg_color", "view", "task"))
        )
        if exclude_same_seed and same_seed and not original:
            continue
        block = blocks.setdefault(pair["block"], {"cells": {}, "own": {}, "labels": {}})
        key = (e["config"], p["config"])
        block["labels"][e["config"]], block["labels"][p["config"]] = e["metadata"], p["metadata"]
        block["own" if original else "cells"].setdefault(key, []).append(pair)
    for block in blocks.values():
        for key, own in block["own"].items():
            if key not in block["cells"]:
                block["cells"][key] = own
            else:
                block["own"][key] = []
        block["own"] = {key for key, own in block["own"].items() if own}
        order = label_order(block["labels"])
        block["rows"] = [label for label in order if any(key[0] == label for key in block["cells"])]
        block["columns"] = [label for label in order if any(key[1] == label for key in block["cells"])]
    return blocks


def episodes_of(cell_pairs: list[dict], metric: str) -> list[float]:
    return [episode[metric] for pair in cell_pairs for episode in pair["episodes"]]


def figures_of_merit(block: dict, checkpoints_by_config: dict[str, dict], reference: Optional[dict] = None) -> dict:
    """Mean maximum return on the diagonal and off it (pooled over episodes), their ratio, and the same for the
    off-diagonal pairs split by what separates the runs (visuals only, task, algorithm). A block without a
    diagonal of its own (translated pairs of one seed per configuration) is compared with `reference`'s diagonal:
    the untranslated agents of the policies' kind."""
    diagonal = [v for (r, c), ps in block["cells"].items() if r == c for v in episodes_of(ps, "max_return")]
    if not diagonal and reference is not None:
        diagonal = [v for (r, c), ps in reference["cells"].items() if r == c for v in episodes_of(ps, "max_return")]
    groups: dict[str, list[float]] = {}
    for (r, c), ps in block["cells"].items():
        if r != c:
            category = pair_category(checkpoints_by_config[r], checkpoints_by_config[c])
            groups.setdefault("off-diagonal", []).extend(episodes_of(ps, "max_return"))
            groups.setdefault(category, []).extend(episodes_of(ps, "max_return"))
    merit = {"diagonal_max_return": float(np.mean(diagonal)) if diagonal else None}
    for name, values in groups.items():
        mean = float(np.mean(values))
        ratio = mean / merit["diagonal_max_return"] if merit["diagonal_max_return"] else None
        merit[name] = {"max_return": mean, "ratio_to_diagonal": ratio, "episodes": len(values)}
    return merit


def format_cell(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def block_table(block: dict, cell_text, empty: str) -> str:
    """Markdown table of a block, encoders as rows and policies as columns: `cell_text(pairs, row, column)` in each cell
    that has pairs, `empty` in the others."""
    lines = ["| encoder \\ policy | " + " | ".join(block["columns"]) + " |", "|" + "---|" * (len(block["columns"]) + 1)]
    for row in block["rows"]:
        cells = [(block["cells"].get((row, column)), column) for column in block["columns"]]
        entries = [cell_text(cell, row, column) if cell else empty for cell, column in cells]
        lines.append(f"| {row} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def markdown_table(block: dict, metric: str) -> str:
    """Mean ± std of `metric` over a cell's episodes, with its number of pairs ("own": an agent with itself)."""

    def text(cell: list, row: str, column: str) -> str:
        own = " own" if (row, column) in block["own"] else ""
        return f"{format_cell(episodes_of(cell, metric))} ({len(cell)} pair{'s' if len(cell) > 1 else ''}{own})"

    return block_table(block, text, "n/a")


def played_on_table(block: dict) -> str:
    """What each cell was played on: colour · view · task (· reward when not standard)."""

    def text(cell: list, row: str, column: str) -> str:
        played = {" · ".join(v for k, v in p["played_on"].items() if k != "reward" or v != "standard") for p in cell}
        return ", ".join(sorted(played))

    return block_table(block, text, "–")


def plot_heatmap(blocks: dict[str, dict], path: Path) -> None:
    """Mean maximum return per (encoder, policy) configuration, one panel per block; missing cells grey."""
    means = [np.mean(episodes_of(ps, "max_return")) for b in blocks.values() for ps in b["cells"].values() if ps]
    vmin, vmax = (min(means), max(means)) if means else (0.0, 1.0)
    vmax = vmax if vmax > vmin else vmin + 1.0
    width = sum(1.8 + 1.1 * len(b["columns"]) for b in blocks.values())
    height = 2.6 + 0.6 * max((len(b["rows"]) for b in blocks.values()), default=1)
    fig, axes = plt.subplots(1, max(len(blocks), 1), figsize=(2.0 + width, height), squeeze=False, layout="constrained")
    for ax, (name, block) in zip(axes[0], blocks.items()):
        grid = np.full((len(block["rows"]), len(block["columns"])), np.nan)
        ax.set_facecolor("0.85")
        for i, row in enumerate(block["rows"]):
            for j, column in enumerate(block["columns"]):
                cell = block["cells"].get((row, column))
                if not cell:
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=8)
                    continue
                values = episodes_of(cell, "max_return")
                grid[i, j] = np.mean(values)
                dark = grid[i, j] < (vmin + vmax) / 2
                own = "\n(own)" if (row, column) in block["own"] else ""
                ax.text(j, i, f"{np.mean(values):.0f}\n±{np.std(values):.0f}{own}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(block["columns"])), block["columns"], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(block["rows"])), block["rows"], fontsize=8)
        ax.set_xlabel("policy")
        ax.set_ylabel("encoder")
        ax.set_title("\n".join(textwrap.wrap(name, 28)), fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), label="max return, mean over episodes")
    fig.suptitle("Zero-shot stitching policy_B(encoder_A(x)):\nencoder A's colour and view, "
                 "the played task per stitch_table.md (R3L, Table 1)", fontsize=10)  # fmt: skip
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- videos
VIDEO_SCALE = 3  # pair GIFs: 84 x 84 views shown at 252 x 252
TILE_SCALE = 2  # mosaic tiles: 168 x 168
LABEL_HEIGHT = 24
FRAME_STRIDE = 2  # pair GIFs: every second step, 25 frames per second of the simulator's 50
MOSAIC_STRIDE = 3  # mosaics: every third step, so that a 3 x 3 mosaic of 300 steps stays near 3 MB


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling: every pixel becomes a scale x scale block, so the agent's pixels stay crisp."""
    return frame.repeat(scale, axis=0).repeat(scale, axis=1)


def draw_text(image: np.ndarray, lines: list[str], xy=(3, 2), fill=(255, 255, 255)) -> np.ndarray:
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((xy[0] + 1, xy[1] + 1 + 11 * i), line, fill=(0, 0, 0))  # a shadow keeps it readable on any colour
        draw.text((xy[0], xy[1] + 11 * i), line, fill=fill)
    return np.asarray(canvas)


def pair_gif(recording: dict, label: str, path: Path, steps: int) -> None:
    """The agent's view of one episode, upscaled, with the pair and the return so far drawn on it."""
    frames = [
        draw_text(upscale(frame, VIDEO_SCALE), [label, f"return {ret:7.1f}"])
        for frame, ret in zip(
            recording["frames"][: steps + 1 : FRAME_STRIDE], recording["returns"][: steps + 1 : FRAME_STRIDE]
        )
    ]
    iio.imwrite(path, np.stack(frames), duration=40, loop=0)


def mosaic_gif(rows: list[str], columns: list[str], tiles: dict, path: Path, steps: int, title: str) -> None:
    """Encoders as rows, policies as columns, every pair on the same track in lockstep. `tiles[(i, j)]` is a
    recording (frames, returns) or a reason string (refused: a labelled blank tile). A finished episode's tile
    keeps its last frame, greyed."""
    size = 84 * TILE_SCALE
    length = min(steps + 1, max((len(t["frames"]) for t in tiles.values() if isinstance(t, dict)), default=1))
    header = np.full((LABEL_HEIGHT, size * len(columns), 3), 30, dtype=np.uint8)
    header = draw_text(header, [title[: size * len(columns) // 6]])
    frames = []
    for t in range(0, length, MOSAIC_STRIDE):
        grid_rows = []
        for i, row in enumerate(rows):
            cells = []
            for j, column in enumerate(columns):
                tile = tiles.get((i, j), "no such pair")
                band = np.full((LABEL_HEIGHT, size, 3), 30, dtype=np.uint8)
                if isinstance(tile, str):
                    image = np.full((size, size, 3), 90, dtype=np.uint8)
                    image = draw_text(image, ["refused:"] + textwrap.wrap(tile, size // 6)[:6], xy=(3, 20))
                else:
                    k = min(t, len(tile["frames"]) - 1)
                    image = upscale(tile["frames"][k], TILE_SCALE)
                    if t >= len(tile["frames"]):  # the episode has ended: grey
                        image = (image.mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.5 + 60).astype(np.uint8)
                    image = draw_text(image, [f"{tile['returns'][k]:.0f}"])
                cells.append(
                    np.concatenate(
                        [draw_text(band, [f"E: {row}"[: size // 6], f"P: {column}"[: size // 6]], xy=(2, 0)), image]
                    )
                )
            grid_rows.append(np.concatenate(cells, axis=1))
        frames.append(np.concatenate([header, *grid_rows], axis=0))
    iio.imwrite(path, np.stack(frames), duration=40, loop=0)


def write_videos(checkpoints: list[dict], pairs: list[dict], folder: Path, out_dir: Path, steps: int) -> list[Path]:
    """Pair GIFs from the recorded first-track episodes, and one mosaic per block over that block's runs."""
    videos = out_dir / "videos"
    videos.mkdir(exist_ok=True)
    names = [f"{c['config']} {c['kind']} s{c['metadata']['seed']}" for c in checkpoints]
    written, blocks = [], {}
    for index, pair in enumerate(pairs):
        blocks.setdefault(pair["block"], []).append(index)
        if pair["status"] == "evaluated":
            with np.load(folder / f"frames_{index}.npz") as recording:
                pair["recording"] = {"frames": recording["frames"], "returns": recording["returns"]}
            slug = f"{pair['encoder_index']}-{pair['policy_index']}{'-translated' if pair['translated'] else ''}"
            path = videos / f"pair_{slug}.gif"
            pair_gif(pair["recording"], f"{names[pair['encoder_index']]} + {names[pair['policy_index']]}", path, steps)
            written.append(path)
    for block, indices in blocks.items():
        encoders = sorted({pairs[i]["encoder_index"] for i in indices})
        policies = sorted({pairs[i]["policy_index"] for i in indices})
        tiles = {}
        for i in indices:
            key = (encoders.index(pairs[i]["encoder_index"]), policies.index(pairs[i]["policy_index"]))
            tiles[key] = pairs[i].get("recording", pairs[i]["reason"])
        path = videos / f"mosaic_{block.replace(' ', '_').replace(',', '').replace('+', 'plus')}.gif"
        mosaic_gif([names[e] for e in encoders], [names[p] for p in policies], tiles, path, steps,
                   f"{block}: rows encoders, columns policies")  # fmt: skip
        written.append(path)
    for pair in pairs:
        pair.pop("recording", None)
    return written


# ------------------------------------------------------------------------------------------------- main
def check_args(args: Args) -> None:
    for name, value, ok, accepted in (
        ("--num-tracks", args.num_tracks, args.num_tracks >= 1, "an integer >= 1"),
        ("--episodes-per-track", args.episodes_per_track, args.episodes_per_track >= 1, "an integer >= 1"),
        ("--epsilon", args.epsilon, 0.0 <= args.epsilon <= 1.0, "a probability in [0, 1]"),
        ("--workers", args.workers, args.workers >= 1, "an integer >= 1"),
        (
            "--max-episode-steps",
            args.max_episode_steps,
            args.max_episode_steps is None or args.max_episode_steps >= 1,
            "an integer >= 1",
        ),
        ("--play-on", args.play_on, args.play_on in PLAY_ON, " or ".join(PLAY_ON)),
        (
            "--translate-method",
            args.translate_method,
            args.translate_method in TRANSLATE_METHODS,
            " or ".join(TRANSLATE_METHODS),
        ),
        ("--translate-anchors", args.translate_anchors, 2 <= args.translate_anchors <= 3136, "an integer in [2, 3136]"),
        ("--video-steps", args.video_steps, args.video_steps >= 1, "an integer >= 1"),
    ):
        if not ok:
            raise UserError(f"--{name.lstrip('-')} {value!r} is invalid; accepted: {accepted}")
    if args.episodes_per_track > 1 and args.epsilon == 0.0:
        raise UserError(
            f"--episodes-per-track {args.episodes_per_track} with --epsilon 0 repeats one deterministic episode; "
            "accepted: --episodes-per-track 1, or --epsilon > 0"
        )


def fit_translations(args: Args, checkpoints: list[dict], agents: list, todo: set, folder: Path) -> dict[tuple[int, int], str]:
    """Fit every needed translation (encoder a -> policy b's encoder) on the anchor states; file per pair."""
    anchor_latents: dict[int, torch.Tensor] = {}
    sides: dict[tuple[int, torch.dtype], dict] = {}  # Procrustes: each encoder's standardisation and QR, once
    paths = {}
    for a, b in tqdm(sorted(todo), desc="translations", file=sys.stderr):
        for i in (a, b):
            if i not in anchor_latents:
                m = checkpoints[i]["metadata"]
                frames = load_anchor_set(m["bg_color"], view=m["view"]).frames
                chosen = np.linspace(0, len(frames) - 1, min(args.translate_anchors, len(frames))).round().astype(int)
                anchor_latents[i] = frame_latents(agents[i][0], torch.from_numpy(frames[chosen]))
        if args.translate_method == "procrustes":
            dtype = solve_dtype(anchor_latents[a], anchor_latents[b])
            for i in (a, b):
                if (i, dtype) not in sides:
                    sides[i, dtype] = procrustes_side(anchor_latents[i], dtype)
            translation = procrustes_from_sides(sides[a, dtype], sides[b, dtype])
        else:
            translation = fit_translation(anchor_latents[a], anchor_latents[b], args.translate_method)
        paths[a, b] = str(folder / f"translation_{a}_{b}.pt")
        torch.save(translation, paths[a, b])
    return paths


def main(args: Args) -> None:
    check_args(args)
    paths = expand_checkpoint_paths(args.checkpoints)
    agents = [load_agent(path) for path in paths]  # every agent loaded up front: a bad file fails before the long run
    out_dir = Path(args.out_dir)
    try:
        ensure_writable_dir(str(out_dir), "--out-dir")
    except ValueError as e:
        raise UserError(str(e)) from None
    metas = [meta for *_, meta in agents]
    checkpoints = [
        {"path": str(path), "run": path.parent.name, "config": label, "kind": KIND[m["relative"]],
         "metadata": {k: v for k, v in m.items() if k != "args"}}
        for path, label, m in zip(paths, config_labels(metas), metas)
    ]  # fmt: skip
    checkpoints_by_config = {c["config"]: c["metadata"] for c in checkpoints}

    track_seeds = range(args.first_track_seed, args.first_track_seed + args.num_tracks)
    pairs: list[dict] = []
    for a, encoder in enumerate(checkpoints):
        for b, policy in enumerate(checkpoints):
            modes = [False]
            if args.translate and a != b and not (encoder["metadata"]["relative"] and policy["metadata"]["relative"]):
                modes = [True] if encoder["kind"] != policy["kind"] else [False, True]
            for translated in modes:
                play = played_on(encoder["metadata"], policy["metadata"], args.play_on)
                actions = action_map(policy["metadata"]["task"], play["task"])
                reason = stitch_refusal(encoder["metadata"], policy["metadata"], translated, args.translate_method)
                reason = reason or (actions if isinstance(actions, str) else None)
                pairs.append({
                    "encoder": encoder["config"], "encoder_index": a, "encoder_path": encoder["path"],
                    "policy": policy["config"], "policy_index": b, "policy_path": policy["path"],
                    "block": block_name(encoder["kind"], policy["kind"], translated), "translated": translated,
                    "played_on": play, "actions": None if reason else list(actions),
                    "status": "refused" if reason else "evaluated", "reason": reason, "episodes": [],
                })  # fmt: skip
    refused = [p for p in pairs if p["status"] == "refused"]
    for pair in refused:
        print(f"refused: encoder {pair['encoder']} ({pair['encoder_path']}) + policy {pair['policy']} "
              f"({pair['policy_path']}): {pair['reason']}")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="stitch_translations_") as folder:
        todo = {(p["encoder_index"], p["policy_index"]) for p in pairs if p["translated"] and p["status"] == "evaluated"}
        translation_paths = fit_translations(args, checkpoints, agents, todo, Path(folder)) if todo else {}
        jobs, job_pairs = [], []
        for index, pair in enumerate(pairs):
            if pair["status"] != "evaluated":
                continue
            translation = translation_paths.get((pair["encoder_index"], pair["policy_index"])) if pair["translated"] else None
            for track_seed in track_seeds:
                for episode in range(args.episodes_per_track):
                    record = args.videos and track_seed == track_seeds[0] and episode == 0
                    jobs.append(
                        Job(
                            pair["encoder_path"],
                            pair["policy_path"],
                            **pair["played_on"],
                            actions=tuple(pair["actions"]),
                            track_seed=track_seed,
                            episode=episode,
                            epsilon=args.epsilon,
                            seed=args.seed,
                            max_episode_steps=args.max_episode_steps,
                            translation_path=translation,
                            frames_path=str(Path(folder) / f"frames_{index}.npz") if record else None,
                        )
                    )
                    job_pairs.append(index)
        print(
            f"{len(checkpoints)} checkpoints, {len(pairs) - len(refused)} pairs evaluated x {len(track_seeds)} track"
            f"{'s' if len(track_seeds) > 1 else ''} x {args.episodes_per_track} episode"
            f"{'s' if args.episodes_per_track > 1 else ''} = {len(jobs)} episodes, {len(refused)} pairs refused"
        )
        for index, result in zip(job_pairs, evaluate(jobs, args.workers)):
            pairs[index]["episodes"].append(result)
        videos = write_videos(checkpoints, pairs, Path(folder), out_dir, args.video_steps) if args.videos else []
    for pair in pairs:
        if pair["episodes"]:
            pair["summary"] = {
                f"{metric}_{stat}": float(fn([e[metric] for e in pair["episodes"]]))
                for metric in ("max_return", "episode_return")
                for stat, fn in (("mean", np.mean), ("std", np.std))
            }

    blocks = build_blocks(checkpoints, pairs, args.exclude_same_seed)
    merits = {}
    for name, block in blocks.items():  # translated blocks: the untranslated agents of the policies' kind as reference
        policy_kind = "relative" if "relative policy" in name or name.startswith("relative +") else "absolute"
        merits[name] = figures_of_merit(
            block, checkpoints_by_config, blocks.get(policy_kind) if "translation" in name else None
        )
    n_tracks = len(track_seeds)
    tracks = (f"{n_tracks} track{'s' if n_tracks > 1 else ''} (seeds {track_seeds.start}-{track_seeds.stop - 1}) x "
              f"{args.episodes_per_track} episode{'s' if args.episodes_per_track > 1 else ''} per pair")  # fmt: skip
    played = ("the encoder's colour and view with the policy's task" if args.play_on == "policy"
              else "the encoder's colour, view and task (policy actions mapped by name)")  # fmt: skip
    sections = [f"Every pair played on {played}; cells pool all (encoder run, policy run) pairs of the row and column "
                f"configurations, mean ± std over {tracks}; on the diagonal only pairs of different seeds count "
                "(\"own\": the original agents, where a configuration has one seed)"
                + ("; pairs whose runs share a seed are excluded" if args.exclude_same_seed else "") + "."]  # fmt: skip
    for name, block in blocks.items():
        sections += [f"## {name}: maximum return during the episode (R3L Table 1 metric)", markdown_table(block, "max_return"),
                     f"## {name}: episode return", markdown_table(block, "episode_return"),
                     f"## {name}: played on (colour · view · task)", played_on_table(block)]  # fmt: skip
    merit_lines = []
    for name, merit in merits.items():
        diagonal = merit["diagonal_max_return"]
        for group in ("off-diagonal", "cross-visual", "cross-task", "cross-algorithm"):
            if group in merit and diagonal:
                m = merit[group]
                merit_lines.append(f"- {name}: {group} / diagonal max return = {m['max_return']:.1f} / {diagonal:.1f} = "
                                   f"{m['ratio_to_diagonal']:.3f} ({m['episodes']} episodes)")  # fmt: skip
    sections.append("## Figures of merit\n\n" + ("\n".join(merit_lines) or "none (no diagonal or no off-diagonal cell)"))
    sections.append("## Refused pairs\n\n" + ("\n".join(
        f"- encoder {p['encoder']} `{p['encoder_path']}` + policy {p['policy']} `{p['policy_path']}`: {p['reason']}"
        for p in refused) or "none"))  # fmt: skip
    sections.append("## Checkpoints\n\n" + "\n".join(
        f"- {c['config']} {c['kind']} seed {c['metadata']['seed']}: `{c['path']}` ({c['metadata']['algorithm']}, "
        f"view {c['metadata']['view']}, task {c['metadata']['task']}, {c['metadata']['global_step']} steps)"
        for c in checkpoints))  # fmt: skip
    report = "\n\n".join(sections)
    (out_dir / "stitch_table.md").write_text(report + "\n")
    with open(out_dir / "stitch_episodes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["encoder", "policy", "block", "encoder_path", "policy_path", "bg_color", "view", "task", "reward",
                         "track_seed", "episode", "episode_return", "max_return", "length"])  # fmt: skip
        for pair in pairs:
            for e in pair["episodes"]:
                writer.writerow([pair["encoder"], pair["policy"], pair["block"], pair["encoder_path"], pair["policy_path"],
                                 *pair["played_on"].values(), e["track_seed"], e["episode"], e["episode_return"],
                                 e["max_return"], e["length"]])  # fmt: skip
    with open(out_dir / "stitch_results.json", "w") as f:
        json.dump({"args": asdict(args), "checkpoints": checkpoints, "pairs": pairs, "figures_of_merit": merits}, f, indent=1)
    plot_heatmap(blocks, out_dir / "stitch_heatmap.png")
    print(report)
    print("\n".join(merit_lines))
    print(f"wrote {out_dir}/stitch_table.md, stitch_episodes.csv, stitch_results.json, stitch_heatmap.png"
          + (f" and {len(videos)} GIFs in {out_dir}/videos" if videos else ""))  # fmt: skip


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except UserError as e:
        fail(str(e))
