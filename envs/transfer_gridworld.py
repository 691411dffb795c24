"""A fixed two-room gridworld and its family of single-task goals, for CPU-scale transfer experiments (REPAINT).

Layout (7x7, ``#`` wall, ``S`` start, letters the goal of each task)::

    . . . # d . T      T  target      goal (0, 6)
    . . . # . . s      s  similar     goal (1, 6): one cell below the target's goal
    . . . # . . .      d  different   goal (0, 4): the same corridor, the other side of the room
    . . . . . . .      the door between the rooms is (3, 3)
    . . . # . . .
    . . . # . . .
    S . . # . . .

All tasks share the layout, the start, the observation and the action space; they differ only in the goal
cell, and could differ in the reward weights (`Task.goal_reward`, `Task.step_cost`). This is the teacher/student
setting of REPAINT (Tao et al., ICML 2021, arXiv 2011.11827): a teacher trained on ``similar`` or ``different``
teaches a student on ``target``.

``different`` is the analogue of the paper's DeepRacer lanes (an inner-lane teacher for an outer-lane student):
the teacher drives the same road, but on the wrong side at the end. Its shortest path (north to the door row,
east through the door, north along the wall) is the first 10 of the 12 steps of a shortest target path, so that
part of its behaviour is what the target needs; near the target's goal its policy pulls west, towards (0, 4),
away from (0, 6). Run in the target task, its episodes get the target reward of wherever it goes: the corridor
moves earn advantage under the student's critic, the westward ones lose it.

Dynamics: deterministic. Actions 0 north, 1 east, 2 south, 3 west; a move into a wall or off the grid leaves
the agent in place. Reward per step: ``goal_reward`` on entering the task's goal (which ends the episode,
``terminated``), minus ``step_cost`` on every step. An episode is truncated after `MAX_STEPS` steps.
With the default weights the best return is 1 - 12 * 0.01 = 0.88 (the shortest path has 12 steps).
Observation: one-hot encoding of the agent's cell, float32 of length 49.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

LAYOUT = (
    "...#...",
    "...#...",
    "...#...",
    ".......",
    "...#...",
    "...#...",
    "...#...",
)
SIZE = len(LAYOUT)
WALLS = np.array([[c == "#" for c in row] for row in LAYOUT])
START = (6, 0)
MAX_STEPS = 50
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])  # north, east, south, west as (d_row, d_col)


@dataclass(frozen=True)
class Task:
    """One task of the family: the goal cell and the reward weights."""

    goal: tuple[int, int]
    goal_reward: float = 1.0
    step_cost: float = 0.01


TASKS: dict[str, Task] = {
    "target": Task(goal=(0, 6)),
    "similar": Task(goal=(1, 6)),
    "different": Task(goal=(0, 4)),
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown gridworld task {task!r}: accepted are {', '.join(TASKS)}")
    return task


def shortest_path_length(goal: tuple[int, int], start: tuple[int, int] = START) -> int:
    """Number of moves from `start` to `goal` (breadth-first search over the free cells)."""
    distance = {start: 0}
    frontier = [start]
    while frontier:
        nxt = []
        for r, c in frontier:
            for dr, dc in MOVES:
                cell = (r + dr, c + dc)
                if 0 <= cell[0] < SIZE and 0 <= cell[1] < SIZE and not WALLS[cell] and cell not in distance:
                    distance[cell] = distance[(r, c)] + 1
                    nxt.append(cell)
        frontier = nxt
    return distance[goal]


def optimal_return(task: str) -> float:
    """Return of the shortest path to the task's goal (every step costs, the last one also pays the goal)."""
    spec = TASKS[check_task(task)]
    return spec.goal_reward - spec.step_cost * shortest_path_length(spec.goal)


class TransferGridworld(gym.Env):
    """One task of the family as a gymnasium environment (vectorise with `gym.vector.SyncVectorEnv`)."""

    metadata = {"render_modes": []}

    def __init__(self, task: str = "target"):
        self.task = check_task(task)
        self.spec_task = TASKS[task]
        self.observation_space = gym.spaces.Box(0.0, 1.0, (SIZE * SIZE,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.position = START
        self.elapsed_steps = 0

    def observation(self) -> np.ndarray:
        obs = np.zeros(SIZE * SIZE, dtype=np.float32)
        obs[self.position[0] * SIZE + self.position[1]] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = START
        self.elapsed_steps = 0
        return self.observation(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise gym.error.InvalidAction(f"invalid action {action!r}: expected {self.action_space}")
        r, c = self.position[0] + MOVES[action][0], self.position[1] + MOVES[action][1]
        if 0 <= r < SIZE and 0 <= c < SIZE and not WALLS[r, c]:
            self.position = (int(r), int(c))
        self.elapsed_steps += 1
        terminated = self.position == self.spec_task.goal
        reward = (self.spec_task.goal_reward if terminated else 0.0) - self.spec_task.step_cost
        truncated = self.elapsed_steps >= MAX_STEPS and not terminated
        return self.observation(), reward, terminated, truncated, {}
