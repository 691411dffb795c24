"""Stochastic gridworlds of the RL^3 paper (Sec. 5, "Gridworld navigation"), batched.

Layout of a size x size grid (11x11 or 13x13), drawn per task:
- start at the centre; goal uniform among cells at Manhattan distance >= 8 from it
  ("corner" variant: distance 2 * (size // 2), i.e. the four corners);
- 11 wall segments of length 3 (impassable), 5 water segments of length 2, and 2 hazards 'X',
  each surrounded by four '!' tiles (N, E, S, W). Segments are horizontal or vertical and only
  cover blank cells other than start and goal.
Actions: 0 noop, 1 N, 2 E, 3 S, 4 W. A move goes in the intended direction with probability 0.8 and
slips to each perpendicular direction with probability 0.1; on water it always slips. Moving into a
wall or off the grid leaves the agent in place; noop stays. The reward is that of the tile the agent
is on after the move: blank -1, water -2, '!' -10, 'X' -100, goal +100. Entering 'X' or the goal ends
the task episode (absorbing) and the next step starts from the centre again.
A grid is redrawn until its optimal 100-step return from the start lies in [50, 100].
Observation: (row, col) / size.

Out-of-distribution variants: dense (walls of length 4), deterministic (no slip), watery (8 water
segments), dangerous (4 hazards), corner (goal in a corner).

Same API and seeding scheme as `envs.tabular_mdp.TabularMDPEnv`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from envs.tabular_mdp import value_iteration

BLANK, WALL, WATER, WARNING, HAZARD, GOAL = range(6)
TILE_REWARD = np.array([-1.0, 0.0, -2.0, -10.0, -100.0, 100.0])  # indexed by tile; walls are never entered
NUM_ACTIONS = 5
MOVES = np.array([[0, 0], [-1, 0], [0, 1], [1, 0], [0, -1]])  # noop, N, E, S, W as (d_row, d_col)
PERPENDICULAR = np.array([[0, 0], [2, 4], [1, 3], [2, 4], [1, 3]])  # the two slip directions per action
FILTER_STEPS = 100
FILTER_RANGE = (50.0, 100.0)
GOAL_DISTANCE = 8

_STANDARD = dict(num_walls=11, wall_length=3, num_water=5, num_hazards=2, slip=0.2, corner=False)
VARIANTS = {
    "standard": _STANDARD,
    "dense": {**_STANDARD, "wall_length": 4},
    "deterministic": {**_STANDARD, "slip": 0.0},
    "watery": {**_STANDARD, "num_water": 8},
    "dangerous": {**_STANDARD, "num_hazards": 4},
    "corner": {**_STANDARD, "corner": True},
}
IN_DISTRIBUTION = "standard"
OOD_VARIANTS = ("dense", "deterministic", "watery", "dangerous", "corner")
SIZES = (11, 13)


def move_table(tiles: np.ndarray) -> np.ndarray:
    """(S, 5) index of the cell reached from each cell by each move direction (walls and borders block)."""
    size = tiles.shape[0]
    rows, cols = np.divmod(np.arange(size * size), size)
    r = np.clip(rows[:, None] + MOVES[None, :, 0], -1, size)
    c = np.clip(cols[:, None] + MOVES[None, :, 1], -1, size)
    inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
    target = np.where(inside, r * size + c, np.arange(size * size)[:, None])
    blocked = tiles.reshape(-1)[target] == WALL
    return np.where(blocked, np.arange(size * size)[:, None], target)


def transition_model(tiles: np.ndarray, slip: float) -> tuple[np.ndarray, np.ndarray]:
    """True model of one grid: P (S, A, S) and expected reward R (S, A); absorbing cells self-loop."""
    S = tiles.size
    flat = tiles.reshape(-1)
    moves = move_table(tiles)
    slip_s = np.where(flat == WATER, 1.0, slip)  # (S,)
    P = np.zeros((S, NUM_ACTIONS, S))
    s = np.arange(S)
    P[s, 0, moves[:, 0]] = 1.0
    for a in range(1, NUM_ACTIONS):
        np.add.at(P, (s, a, moves[:, a]), 1.0 - slip_s)
        for d in PERPENDICULAR[a]:
            np.add.at(P, (s, a, moves[:, d]), slip_s / 2)
    absorbing = (flat == GOAL) | (flat == HAZARD)
    P[absorbing] = 0.0
    P[absorbing, :, absorbing.nonzero()[0]] = 1.0
    R = P @ TILE_REWARD[flat]
    return P, R


def _place_segment(rng: np.random.Generator, tiles: np.ndarray, length: int, tile: int, reserved) -> bool:
    """Put one horizontal or vertical segment of `tile` on blank, non-reserved cells (100 tries)."""
    size = tiles.shape[0]
    for _ in range(100):
        vertical = rng.random() < 0.5
        r0 = rng.integers(size - (length - 1) * vertical)
        c0 = rng.integers(size - (length - 1) * (not vertical))
        cells = [(r0 + i * vertical, c0 + i * (not vertical)) for i in range(length)]
        if all(tiles[c] == BLANK and c not in reserved for c in cells):
            for c in cells:
                tiles[c] = tile
            return True
    return False


def _place_hazard(rng: np.random.Generator, tiles: np.ndarray, reserved) -> bool:
    """Put an 'X' with its four '!' neighbours on blank, non-reserved, in-grid cells (100 tries)."""
    size = tiles.shape[0]
    for _ in range(100):
        r, c = rng.integers(1, size - 1, size=2)
        cells = [(r, c), (r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
        if all(tiles[x] == BLANK and x not in reserved for x in cells):
            tiles[r, c] = HAZARD
            for x in cells[1:]:
                tiles[x] = WARNING
            return True
    return False


def optimal_filter_return(tiles: np.ndarray, slip: float) -> float:
    """Optimal expected FILTER_STEPS-step return from the centre (exact finite-horizon value iteration)."""
    P, R = transition_model(tiles, slip)
    flat = tiles.reshape(-1)
    terminal = (flat == GOAL) | (flat == HAZARD)
    _, V, _ = value_iteration(P[None], R[None], 1.0, FILTER_STEPS, terminal=terminal)
    centre = tiles.shape[0] // 2
    return float(V[0, centre * tiles.shape[0] + centre])


def sample_grid(rng: np.random.Generator, size: int, variant: str = "standard") -> np.ndarray:
    """Draw one layout (size, size) of tile ids following the rules above, redrawn until it passes the filter."""
    cfg = VARIANTS[variant]
    centre = size // 2
    goal_distance = 2 * centre if cfg["corner"] else GOAL_DISTANCE
    rows, cols = np.divmod(np.arange(size * size), size)
    goal_cells = np.flatnonzero(np.abs(rows - centre) + np.abs(cols - centre) >= goal_distance)
    while True:
        tiles = np.zeros((size, size), dtype=np.int64)
        goal = divmod(int(rng.choice(goal_cells)), size)
        tiles[goal] = GOAL
        reserved = {(centre, centre), goal}
        placed = all(_place_hazard(rng, tiles, reserved) for _ in range(cfg["num_hazards"]))
        placed = placed and all(
            _place_segment(rng, tiles, cfg["wall_length"], WALL, reserved) for _ in range(cfg["num_walls"])
        )
        placed = placed and all(_place_segment(rng, tiles, 2, WATER, reserved) for _ in range(cfg["num_water"]))
        if placed:
            value = optimal_filter_return(tiles, cfg["slip"])
            if FILTER_RANGE[0] <= value <= FILTER_RANGE[1]:
                return tiles


class GridworldEnv:
    """B gridworld tasks stepped together; episodes end only on the goal or a hazard."""

    num_actions = NUM_ACTIONS
    obs_dim = 2

    def __init__(self, num_tasks: int, horizon: int, variant: str = IN_DISTRIBUTION, size: int = 11):
        if variant not in VARIANTS:
            raise ValueError(f"unknown gridworld variant '{variant}'; expected one of {', '.join(VARIANTS)}")
        if size not in SIZES:
            raise ValueError(f"unsupported grid size {size}; expected one of {', '.join(map(str, SIZES))}")
        self.num_tasks, self.horizon, self.variant, self.size = num_tasks, horizon, variant, size
        self.num_states = size * size
        self.episode_length = horizon  # no time limit inside a meta-episode
        self.start = (size // 2) * size + size // 2

    def reset(self, task_seeds: Sequence[int]) -> np.ndarray:
        """Draw one grid per seed; returns the start (centre) states (B,)."""
        assert len(task_seeds) == self.num_tasks
        B, S, H = self.num_tasks, self.num_states, self.horizon
        self.tiles = np.empty((B, self.size, self.size), dtype=np.int64)
        self.uniforms = np.empty((B, H))
        for b, seed in enumerate(task_seeds):  # task sampling only; stepping is vectorised
            rng = np.random.default_rng(seed)
            self.tiles[b] = sample_grid(rng, self.size, self.variant)
            self.uniforms[b] = rng.random(H)
        flat = self.tiles.reshape(B, S)
        self.moves = np.stack([move_table(t) for t in self.tiles])  # (B, S, 5)
        self.slip = np.where(flat == WATER, 1.0, VARIANTS[self.variant]["slip"])  # (B, S)
        self.reward_of = TILE_REWARD[flat]  # (B, S)
        self.absorbing = (flat == GOAL) | (flat == HAZARD)
        self.t = 0
        self.state = np.full(B, self.start, dtype=np.int64)
        return self.state.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Returns (next observed state, reward, terminated, episode_end). After a terminal transition the
        returned state is the centre (new episode); the absorbing cell is in `self.last_next_state`."""
        b = np.arange(self.num_tasks)
        slip = self.slip[b, self.state]
        u = self.uniforms[:, self.t]
        direction = np.where(
            u < 1.0 - slip, actions, np.where(u < 1.0 - slip / 2, PERPENDICULAR[actions, 0], PERPENDICULAR[actions, 1])
        )
        next_state = self.moves[b, self.state, direction]
        reward = self.reward_of[b, next_state]
        terminated = self.absorbing[b, next_state]
        self.last_next_state = next_state
        self.t += 1
        self.state = np.where(terminated, self.start, next_state)
        return self.state.copy(), reward, terminated, terminated

    def observation(self, states: np.ndarray) -> np.ndarray:
        """(row, col) / size, shape (B, 2)."""
        return np.stack(np.divmod(states, self.size), axis=1) / self.size

    def optimal_returns(self) -> np.ndarray:
        """Expected meta-episode return of the oracle that knows the grid: exact H-step value iteration on
        the true model in which entering an absorbing cell collects its reward and restarts at the centre."""
        models = [transition_model(t, VARIANTS[self.variant]["slip"]) for t in self.tiles]
        P = np.stack([m[0] for m in models])
        R = np.stack([m[1] for m in models])
        into_absorbing = P * self.absorbing[:, None, None, :]
        P = P - into_absorbing
        P[:, :, :, self.start] += into_absorbing.sum(axis=3)
        _, V, _ = value_iteration(P, R, 1.0, self.horizon)
        return V[:, self.start]
