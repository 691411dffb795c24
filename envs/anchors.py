"""Parallel anchor frames for relative representations (R3L, Ricciardi et al., arXiv 2404.12917, section 3.1).

The relative projection compares an observation's embedding with the embeddings of a fixed set of
*anchor* observations. To stitch an encoder trained on red with a policy trained on green, both
must use the *same anchor states*, each seen in its own colour. The R3L authors recorded a trained
agent's actions and replayed them in every colour; here a deterministic scripted driver that follows
the track's own waypoints replaces the trained agent, so anchors exist before any training:

1. `record_trajectory`: the `WaypointDriver` drives a fixed track seed; its gymnasium actions are recorded.
   The driver reads only the physics state, so the same actions come out whatever the colour.
2. `render_trajectory`: the actions are replayed on the same track in any colour and camera view,
   giving frames that differ only in colour (or in camera, for the ``far`` view). The task does not enter:
   the replay uses gymnasium's dynamics and action numbering, so anchors depend on colour and view only.
3. `load_anchor_set`: a fixed, seeded choice of `num_anchors` frames out of the pooled trajectories
   (default 3136 = 64*7*7, the Nature-CNN latent size at 84x84) is the anchor set. Its identity
   `AnchorRecipe.set_id` is a short hash of everything that made it; checkpoints record it, and two
   agents can be stitched only if their anchor sets share it.

Anchor sets are cached on disk (``$R3L_ANCHOR_CACHE``, default ``~/.cache/r3l-anchors``), rebuilt when
missing, when the recipe changes (new identity, new file name), when the renderer draws different
frames (`envs.fast_render.RENDERER_VERSION`, also in the file name) or when a file fails its checksum.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from envs.car_racing import STEER_ACTIONS, ColorCarRacing, check_view, parse_bg_color, preprocess_frame
from envs.fast_render import RENDERER_VERSION

RECIPE_VERSION = 1
DEFAULT_NUM_ANCHORS = 3136

# Gymnasium's discrete actions (0 nothing, 1 left, 2 right, 3 gas, 4 brake). Action 1 turns the car
# clockwise (its hull angle decreases), action 2 counter-clockwise.
NOTHING, CLOCKWISE, COUNTER_CLOCKWISE, GAS, BRAKE = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class WaypointDriver:
    """Steers towards the track waypoint `lookahead` tiles ahead of the nearest one.

    One discrete action per step, in priority order: steer when the heading error exceeds
    `steer_threshold` (radians), brake above `max_speed`, accelerate below `target_speed`,
    otherwise coast. The speeds stay under the ``slow`` task's limit of 35, so a trajectory is
    valid in every task variant.
    """

    lookahead: int = 6
    steer_threshold: float = 0.2
    target_speed: float = 28.0
    max_speed: float = 32.0

    def act(self, env: ColorCarRacing) -> int:
        car = env.car.hull
        x, y = car.position
        waypoints = np.asarray([(wx, wy) for _, _, wx, wy in env.track])
        nearest = int(np.argmin(np.sum((waypoints - (x, y)) ** 2, axis=1)))
        target_x, target_y = waypoints[(nearest + self.lookahead) % len(waypoints)]
        heading = car.angle + math.pi / 2  # the car's forward axis is its local +y
        error = math.atan2(target_y - y, target_x - x) - heading
        error = math.atan2(math.sin(error), math.cos(error))  # wrap to (-pi, pi]
        speed = math.hypot(*car.linearVelocity)
        if abs(error) > self.steer_threshold:
            return COUNTER_CLOCKWISE if error > 0 else CLOCKWISE
        if speed > self.max_speed:
            return BRAKE
        if speed < self.target_speed:
            return GAS
        return NOTHING


@dataclass(frozen=True)
class AnchorRecipe:
    """Everything that determines an anchor set's states (not its colour or task)."""

    track_seeds: tuple[int, ...] = (1, 2, 3, 4)
    steps_per_track: int = 1000
    num_anchors: int = DEFAULT_NUM_ANCHORS
    index_seed: int = 0
    driver: WaypointDriver = WaypointDriver()

    @property
    def set_id(self) -> str:
        """Short hash identifying the anchor states; equal ids mean the same states in every colour."""
        description = json.dumps({"version": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(description.encode()).hexdigest()[:12]


@dataclass
class AnchorSet:
    frames: np.ndarray  # (num_anchors, 3, 84, 84) uint8, one RGB frame per anchor
    steering: np.ndarray  # (num_anchors,) bool: the frame was taken while the driver steered
    set_id: str
    bg_color: str
    view: str
    source: str = "built"  # "loaded from <cache file>", "built and cached in <cache file>" or "built (not cached)"

    @property
    def steer_fraction(self) -> float:
        return float(self.steering.mean())

    def __len__(self) -> int:
        return len(self.frames)


def record_trajectory(track_seed: int, max_steps: int, driver: WaypointDriver = WaypointDriver()) -> np.ndarray:
    """Gymnasium actions of the scripted driver on track `track_seed`, until the episode ends or `max_steps`."""
    env = ColorCarRacing()
    env.reset(seed=track_seed)
    actions = []
    for _ in range(max_steps):
        action = driver.act(env)
        actions.append(action)
        _, _, terminated, _, _ = env.step_gym_action(action)
        if terminated:
            break
    env.close()
    return np.asarray(actions, dtype=np.int64)


def render_trajectory(track_seed: int, actions: np.ndarray, bg_color: str = "green", view: str = "near") -> np.ndarray:
    """Replay gymnasium `actions` on track `track_seed` in a colour and camera view.

    Returns (len(actions), 3, 84, 84) uint8: frame i is the observation after action i. The replay
    uses gymnasium's dynamics directly, so it is the same trajectory in every colour and view."""
    env = ColorCarRacing(bg_color=bg_color, view=view)
    env.reset(seed=track_seed)
    frames = np.empty((len(actions), 3, 84, 84), dtype=np.uint8)
    for i, action in enumerate(actions):
        state, *_ = env.step_gym_action(int(action))
        frames[i] = preprocess_frame(state)
    env.close()
    return frames


def anchor_cache_dir() -> Path:
    return Path(os.environ.get("R3L_ANCHOR_CACHE", Path.home() / ".cache" / "r3l-anchors"))


def _checksum(frames: np.ndarray, steering: np.ndarray) -> str:
    return hashlib.sha256(frames.tobytes() + steering.tobytes()).hexdigest()


def _read_cache(path: Path, set_id: str, num_anchors: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (frames, steering), or None when the file is missing, unreadable or fails its checks."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            frames, steering = cached["frames"], cached["steering"]
            valid = (
                str(cached["set_id"]) == set_id
                and frames.shape == (num_anchors, 3, 84, 84)
                and frames.dtype == np.uint8
                and steering.shape == (num_anchors,)
                and str(cached["checksum"]) == _checksum(frames, steering)
            )
    except Exception:  # any unreadable or truncated file is rebuilt, never trusted
        return None
    return (frames, steering) if valid else None


def _write_cache(path: Path, set_id: str, frames: np.ndarray, steering: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, frames=frames, steering=steering, set_id=set_id, checksum=_checksum(frames, steering))
        os.replace(tmp, path)  # atomic: readers see the old file or the complete new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def build_anchor_set(bg_color: str, view: str, recipe: AnchorRecipe) -> AnchorSet:
    """Drive, replay in (bg_color, view) and pick the recipe's anchor frames (no cache)."""
    pool_frames, pool_steering = [], []
    for track_seed in recipe.track_seeds:
        actions = record_trajectory(track_seed, recipe.steps_per_track, recipe.driver)
        pool_frames.append(render_trajectory(track_seed, actions, bg_color, view))
        pool_steering.append(np.isin(actions, STEER_ACTIONS))
    frames, steering = np.concatenate(pool_frames), np.concatenate(pool_steering)
    if recipe.num_anchors > len(frames):
        raise ValueError(f"num_anchors={recipe.num_anchors} exceeds the {len(frames)} recorded frames of the recipe")
    indices = np.sort(np.random.default_rng(recipe.index_seed).choice(len(frames), recipe.num_anchors, replace=False))
    return AnchorSet(frames[indices], steering[indices], recipe.set_id, bg_color, view)


def load_anchor_set(
    bg_color: str = "green",
    view: str = "near",
    num_anchors: int = DEFAULT_NUM_ANCHORS,
    recipe: AnchorRecipe | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> AnchorSet:
    """The anchor set of `recipe` (default: `AnchorRecipe(num_anchors=num_anchors)`) in a colour and camera view,
    from the on-disk cache when a valid copy exists, built and cached otherwise (`AnchorSet.source` says which).
    An unwritable cache folder costs a warning on stderr, not the run: the set is built and used uncached.

    Same call -> same frames, bit for bit."""
    parse_bg_color(bg_color)
    check_view(view)
    recipe = recipe or AnchorRecipe(num_anchors=num_anchors)
    if recipe.num_anchors < 1:
        raise ValueError(f"num_anchors must be >= 1, got {recipe.num_anchors}")
    file_name = f"anchors-{recipe.set_id}-r{RENDERER_VERSION}-{bg_color.lstrip('#').lower()}-{view}.npz"
    path = Path(cache_dir or anchor_cache_dir()) / file_name
    cached = _read_cache(path, recipe.set_id, recipe.num_anchors)
    if cached is not None:
        return AnchorSet(*cached, recipe.set_id, bg_color, view, source=f"loaded from {path}")
    anchor_set = build_anchor_set(bg_color, view, recipe)
    try:
        _write_cache(path, recipe.set_id, anchor_set.frames, anchor_set.steering)
    except OSError as e:
        print(f"warning: cannot cache the anchor set in {path.parent} ({e.strerror or type(e).__name__}); "
              "using it uncached (set R3L_ANCHOR_CACHE to a writable folder to keep it)", file=sys.stderr)  # fmt: skip
        return replace(anchor_set, source="built (not cached)")
    return replace(anchor_set, source=f"built and cached in {path}")
