"""Colour-variable CarRacing: gymnasium's CarRacing with a chosen background colour and the R3L task variants.

The physics, track generation and reward are gymnasium's own (we subclass
`gymnasium.envs.box2d.car_racing.CarRacing` with discrete actions); this module only changes

* the colours of the background and grass (``bg_color``), the road stays [102, 102, 102];
* the camera (``view``), a visual variation like the colour: ``near`` is gymnasium's camera (zoom 2.7),
  ``far`` sees the same track from further away (zoom 1);
* the task (``task``): the reward rule, the action order and the episode length, as in R3L
  (Ricciardi et al., "R3L: Relative Representations for Reinforcement Learning", arXiv 2404.12917):

  ============  ===========================================================================
  ``standard``  gymnasium's task: Discrete(5), -0.1 per frame, +1000/N per new tile, 1000 steps
  ``slow``      no per-frame penalty; driving faster than 35 gives -100 and ends; 3000 steps
  ``scrambled`` Discrete(5) in another order: 0 left, 1 right, 2 gas, 3 brake, 4 nothing
  ``no_idle``   Discrete(4): left, right, gas, brake (the scrambled order without "nothing")
  ============  ===========================================================================

  What an encoder sees (colour and view) is independent of what the task asks, so every view combines with
  every task. ``task="far"`` is accepted as an alias of ``view="far", task="standard"`` (R3L lists "far" among
  its task variants; `resolve_view_task`).

* the reward (``reward``), as the lanes of the REPAINT paper's DeepRacer experiment (Tao et al. 2021):

  ==============  =========================================================================
  ``standard``    the task's reward
  ``inner_lane``  the task's reward + 0.5 * u per step
  ``outer_lane``  the task's reward - 0.5 * u per step
  ==============  =========================================================================

  where u = o / TRACK_WIDTH is the car's signed lateral offset o from the track centre line (positive towards
  the inside of the loop, `ColorCarRacing.lateral_offset`) divided by the road's half-width (20/3), in [-1, 1]
  on the road; off the road (|u| > 1) both lane variants give -0.5 instead.

"Left" and "right" are the labels of gymnasium's documentation for its actions 1 and 2
(gymnasium issue #1369 notes that action 1 in fact turns the car right); the variants re-order
gymnasium's actions, they do not change what an action does.

`ColorCarRacingObservation` is the observation preprocessing every script shares: the 96x96x3
frame is resized to 84x84 (area interpolation), made channel-first uint8 and optionally stacked.
"""

from __future__ import annotations

import functools
import math
import re
from collections import deque

import gymnasium as gym
import numpy as np
from gymnasium.envs.box2d import car_racing as gym_car_racing

from envs.fast_render import StateRenderer, camera_zoom

ROAD_COLOR = (102, 102, 102)

# (background, grass) RGB of the named colours, from the R3L authors' code; green is gymnasium's default.
NAMED_COLORS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "green": ((102, 204, 102), (102, 230, 102)),
    "red": ((204, 102, 102), (230, 102, 102)),
    "blue": ((102, 102, 204), (102, 102, 230)),
    "yellow": ((230, 230, 102), (255, 255, 102)),
    "violet": ((204, 102, 204), (230, 102, 230)),
    "pink": ((230, 102, 153), (255, 102, 178)),
}

# Grass is the background brightened by this much on every channel above the darkest one (clipped at 255).
GRASS_BRIGHTEN = 26

# Camera views: the zoom of the camera that follows the car (gymnasium's is 2.7).
VIEWS: dict[str, float] = {"near": gym_car_racing.ZOOM, "far": 1.0}

# Task variants: gymnasium's discrete action behind each of the task's actions and the episode step
# limit. Gymnasium's actions: 0 nothing, 1 left, 2 right, 3 gas, 4 brake.
TASKS: dict[str, dict] = {
    "standard": {"actions": (0, 1, 2, 3, 4), "max_steps": 1000},
    "slow": {"actions": (0, 1, 2, 3, 4), "max_steps": 3000},
    "scrambled": {"actions": (1, 2, 3, 4, 0), "max_steps": 1000},
    "no_idle": {"actions": (1, 2, 3, 4), "max_steps": 1000},
}
# Task names that stand for a view: "far" is the standard task seen by the far camera.
TASK_ALIASES: dict[str, tuple[str, str]] = {"far": ("far", "standard")}
# Gymnasium's discrete actions that steer (used to label anchor frames as turning).
STEER_ACTIONS = (1, 2)
SLOW_SPEED_LIMIT = 35.0
PER_FRAME_PENALTY = 0.1  # gymnasium's -0.1 per frame, which the "slow" task removes
OFF_PLAYFIELD_REWARD = -100.0

# Reward variants: the lane term's weight per step (see the module docstring).
REWARDS = ("standard", "inner_lane", "outer_lane")
LANE_WEIGHT = 0.5

OBS_SIZE = 84
# How the 96x96 state frame is drawn: "fast" (envs/fast_render.py, arrays at observation
# resolution; ~25x gymnasium's steps/s, docs/fast_render.md) or "gymnasium" (gymnasium's pygame
# renderer, kept for comparison).
RENDER_BACKENDS = ("fast", "gymnasium")
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


def grass_from_background(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Grass colour for a custom background: brighten every channel above the darkest one by
    `GRASS_BRIGHTEN`, clipped to 255 (all channels if the background is grey). This reproduces the
    table of named colours exactly except pink (179 instead of 178 on blue)."""
    darkest = min(background)
    grey = all(c == darkest for c in background)
    return tuple(min(c + GRASS_BRIGHTEN, 255) if (grey or c > darkest) else c for c in background)


def parse_bg_color(bg_color: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Return (background, grass) RGB for a colour name or a '#rrggbb' string; ValueError otherwise."""
    if isinstance(bg_color, str):
        name = bg_color.strip().lower()
        if name in NAMED_COLORS:
            return NAMED_COLORS[name]
        if _HEX_COLOR.match(name):
            background = tuple(int(name[i : i + 2], 16) for i in (1, 3, 5))
            return background, grass_from_background(background)
        if name.startswith("#"):
            raise ValueError(f"malformed hex colour {bg_color!r}: accepted is '#rrggbb' with six hex digits (e.g. '#66cc66')")
    raise ValueError(f"unknown bg_color {bg_color!r}: accepted are {', '.join(NAMED_COLORS)} or a hex colour '#rrggbb'")


def check_choice(name: str, value: str, accepted, hint: str = "") -> str:
    """`value` if it is one of `accepted`, else a one-line ValueError naming it and what is accepted."""
    if value not in accepted:
        raise ValueError(f"unknown {name} {value!r}: accepted are {', '.join(accepted)}{hint}")
    return value


def check_task(task: str) -> str:
    return check_choice("task", task, TASKS, " (or 'far', an alias of view='far')")


def check_view(view: str) -> str:
    return check_choice("view", view, VIEWS)


def resolve_view_task(view: str, task: str) -> tuple[str, str]:
    """(view, task) with the alias ``task="far"`` resolved: ("near", "far") -> ("far", "standard").
    Raises a one-line ValueError for an unknown view or task."""
    check_view(view)
    if task in TASK_ALIASES:
        return TASK_ALIASES[task]
    return view, check_task(task)


class ColorCarRacing(gym_car_racing.CarRacing):
    """CarRacing (discrete actions) with a background colour, a camera view and an R3L task variant.

    Observations are gymnasium's 96x96x3 uint8 frames; wrap with `ColorCarRacingObservation`
    for the 84x84 channel-first frames the agents use. The step limit is part of the task, so the
    environment truncates by itself (1000 steps, 3000 for ``slow``).

    ``render_backend="fast"`` draws the observation with `envs.fast_render.StateRenderer`;
    ``"gymnasium"`` with gymnasium's own renderer. Video frames (``render_mode="rgb_array"``) always
    come from gymnasium's renderer.
    """

    def __init__(
        self,
        bg_color: str = "green",
        task: str = "standard",
        render_mode: str | None = None,
        render_backend: str = "fast",
        reward: str = "standard",
        view: str = "near",
    ):
        self.background_rgb, self.grass_rgb = parse_bg_color(bg_color)
        self.bg_color_name = bg_color
        self.view, self.task = resolve_view_task(view, task)
        # the reward variant (gymnasium's own self.reward is the running episode reward)
        self.reward_variant = check_choice("reward", reward, REWARDS)
        self.render_backend = check_choice("render_backend", render_backend, RENDER_BACKENDS)
        self.zoom = VIEWS[self.view]
        self.state_renderer = StateRenderer(self.background_rgb, self.grass_rgb, self.zoom)
        spec = TASKS[self.task]
        self.action_to_gym = np.array(spec["actions"], dtype=np.int64)
        self.max_episode_steps = spec["max_steps"]
        super().__init__(render_mode=render_mode, continuous=False, domain_randomize=False)
        self.gym_action_space = self.action_space  # gymnasium's Discrete(5)
        self.action_space = gym.spaces.Discrete(len(self.action_to_gym))
        self.elapsed_steps = 0

    def _init_colors(self):
        self.road_color = np.array(ROAD_COLOR)
        self.bg_color = np.array(self.background_rgb)
        self.grass_color = np.array(self.grass_rgb)

    def _create_track(self):
        created = super()._create_track()
        if created:
            self._share_tile_colors()
            self._measure_centre_line()
            self.state_renderer.set_track(self.road_poly, self.road_poly_colors)
        return created

    def _measure_centre_line(self):
        """Centre-line waypoints (x, y) of `self.track` and the loop's orientation: +1 when it runs
        counter-clockwise (positive shoelace area), so that the inside of the loop is on the left."""
        self.track_xy = np.array([(x, y) for _, _, x, y in self.track])
        x, y = self.track_xy[:, 0], self.track_xy[:, 1]
        self.inside_sign = 1.0 if np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0 else -1.0

    def lateral_offset(self) -> float:
        """Signed distance of the car from the track centre line, positive towards the inside of the loop:
        the car's position relative to the nearest waypoint p_i, projected on the left normal of the
        segment p_i -> p_(i+1), times the loop's orientation."""
        position = np.array(self.car.hull.position, dtype=np.float64)
        i = int(np.argmin(((self.track_xy - position) ** 2).sum(axis=1)))
        tangent = self.track_xy[(i + 1) % len(self.track_xy)] - self.track_xy[i]
        left = np.array([-tangent[1], tangent[0]]) / np.linalg.norm(tangent)
        return float(self.inside_sign * (position - self.track_xy[i]) @ left)

    def lane_reward(self) -> float:
        """The lane term of the ``inner_lane`` / ``outer_lane`` rewards (module docstring)."""
        u = self.lateral_offset() / gym_car_racing.TRACK_WIDTH
        if abs(u) > 1.0:
            return -LANE_WEIGHT
        return LANE_WEIGHT * (u if self.reward_variant == "inner_lane" else -u)

    def _share_tile_colors(self):
        """Keep the colours of all road polygons in one (N, 3) array, `road_poly_colors`.

        Gymnasium repaints a tile in place (``tile.color[:] = road_color``) when the car touches it;
        making each tile's colour a row of this array lets the fast renderer read every colour at
        once. Gymnasium's renderer reads the same rows through `road_poly`.
        """
        tiles = {id(tile.color): tile for tile in self.road}
        self.road_poly_colors = np.array([color for _, color in self.road_poly], dtype=np.float64)
        for i, (vertices, color) in enumerate(self.road_poly):
            tile = tiles.get(id(color))
            if tile is not None:
                tile.color = self.road_poly_colors[i]
                self.road_poly[i] = (vertices, tile.color)

    def _render(self, mode: str):
        if mode == "state_pixels" and self.render_backend == "fast":
            return self.state_renderer.render(self.car, camera_zoom(self.t, self.zoom), self.reward)
        # Gymnasium reads the camera zoom from its module constant; the "far" view swaps it in for
        # the duration of one render call only.
        default_zoom = gym_car_racing.ZOOM
        gym_car_racing.ZOOM = self.zoom
        try:
            return super()._render(mode)
        finally:
            gym_car_racing.ZOOM = default_zoom

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.elapsed_steps = 0
        return super().reset(seed=seed, options=options)

    def step_gym_action(self, gym_action: int | None):
        """One step of gymnasium's own dynamics and reward with gymnasium's action numbering
        (0 nothing, 1 left, 2 right, 3 gas, 4 brake), whatever the task variant's action space.
        The task's steps go through here; anchor replays call it directly to drive any variant."""
        task_action_space, self.action_space = self.action_space, self.gym_action_space
        try:  # gymnasium validates the action against self.action_space
            return super().step(gym_action)
        finally:
            self.action_space = task_action_space

    def step(self, action):
        if action is None:  # gymnasium's reset() renders the first frame through step(None)
            return self.step_gym_action(None)
        if not self.action_space.contains(action):
            raise gym.error.InvalidAction(f"invalid action {action!r} for task {self.task!r}: expected {self.action_space}")
        obs, reward, terminated, truncated, info = self.step_gym_action(int(self.action_to_gym[action]))
        self.elapsed_steps += 1
        if self.reward_variant != "standard":
            reward += self.lane_reward()
        if self.task == "slow":
            left_playfield = terminated and info.get("lap_finished") is False
            if not left_playfield:
                reward += PER_FRAME_PENALTY  # undo gymnasium's -0.1 per frame
            if float(np.linalg.norm(self.car.hull.linearVelocity)) > SLOW_SPEED_LIMIT:
                reward, terminated = OFF_PLAYFIELD_REWARD, True
                info["too_fast"] = True
        if self.elapsed_steps >= self.max_episode_steps and not terminated:
            truncated = True
        return obs, float(reward), terminated, truncated, info


def area_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix M such that M @ x is area (box-filter) interpolation of x:
    each output pixel averages the input interval it covers, weighted by overlap."""
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    for o in range(out_size):
        lo, hi = o * scale, (o + 1) * scale
        for i in range(int(np.floor(lo)), int(np.ceil(hi))):
            weights[o, i] = min(hi, i + 1) - max(lo, i)
    return weights / scale


@functools.lru_cache(maxsize=8)
def _area_resize_block(in_size: int, out_size: int) -> tuple[int, int, np.ndarray]:
    """Area interpolation is periodic: with g = gcd(in, out), every block of in/g input pixels maps to
    out/g output pixels with the same weights (96 -> 84: 8 -> 7). Returns (in/g, out/g, block matrix)."""
    g = math.gcd(in_size, out_size)
    return in_size // g, out_size // g, area_resize_matrix(in_size // g, out_size // g)


def preprocess_frame(frame: np.ndarray, size: int = OBS_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 frame -> (3, size, size) uint8, area-interpolated, channel-first.

    Resizing block by block keeps every matrix product tiny: one (H, W) x (W, size) product would be
    handed to a multi-threaded BLAS, which costs far more than it saves on a busy machine."""
    h, w, _ = frame.shape
    col_in, col_out, col_block = _area_resize_block(w, size)
    row_in, row_out, row_block = _area_resize_block(h, size)
    image = frame.transpose(2, 0, 1).astype(np.float32)  # (3, H, W)
    image = (image.reshape(3, h, w // col_in, col_in) @ col_block.T).reshape(3, h, size)
    image = (row_block @ image.reshape(3, h // row_in, row_in, size)).reshape(3, size, size)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


class ColorCarRacingObservation(gym.ObservationWrapper):
    """84x84 RGB channel-first uint8 observations, the last `frame_stack` frames concatenated
    along the channel axis (shape (3 * frame_stack, 84, 84)); reset repeats the first frame."""

    def __init__(self, env: gym.Env, frame_stack: int = 1):
        super().__init__(env)
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        self.frame_stack = frame_stack
        self.frames: deque[np.ndarray] = deque(maxlen=frame_stack)
        self.observation_space = gym.spaces.Box(0, 255, (3 * frame_stack, OBS_SIZE, OBS_SIZE), dtype=np.uint8)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        frame = preprocess_frame(obs)
        for _ in range(self.frame_stack):
            self.frames.append(frame)
        return np.concatenate(self.frames, axis=0), info

    def observation(self, observation):
        self.frames.append(preprocess_frame(observation))
        return np.concatenate(self.frames, axis=0)


def make_color_car_racing(
    bg_color: str = "green",
    task: str = "standard",
    frame_stack: int = 1,
    render_mode: str | None = None,
    render_backend: str = "fast",
    reward: str = "standard",
    view: str = "near",
) -> gym.Env:
    """`ColorCarRacing-v0` with the shared preprocessing: what every CarRacing script trains on."""
    env = gym.make(
        "ColorCarRacing-v0", bg_color=bg_color, task=task, render_mode=render_mode, render_backend=render_backend,
        reward=reward, view=view,
    )  # fmt: skip
    return ColorCarRacingObservation(env, frame_stack=frame_stack)
