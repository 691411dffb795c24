"""Bernoulli multi-armed bandits (RL^2 / RL^3 task family), batched.

A task: 5 arms with success probabilities p_k ~ U(0, 1) ("uniform", in distribution) or
p_k ~ N(0.5, 0.5) ("normal", out of distribution: an arm with p < 0 never pays, p > 1 always pays).
Each task episode is one pull; a meta-episode is `horizon` pulls of the same task.
For the object-level learner the bandit is a one-state MDP whose every step terminates.

Same API and seeding scheme as `envs.tabular_mdp.TabularMDPEnv`: every task draws its arms and
all the uniforms of its meta-episode from its own generator at `reset`; `step` is array arithmetic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NUM_ARMS = 5
VARIANTS = ("uniform", "normal")
IN_DISTRIBUTION = "uniform"
OOD_VARIANTS = ("normal",)


class BanditEnv:
    """B Bernoulli bandit tasks pulled together."""

    num_states = 1
    num_actions = NUM_ARMS
    episode_length = 1
    obs_dim = 1

    def __init__(self, num_tasks: int, horizon: int, variant: str = IN_DISTRIBUTION):
        if variant not in VARIANTS:
            raise ValueError(f"unknown bandit variant '{variant}'; expected one of {', '.join(VARIANTS)}")
        self.num_tasks, self.horizon, self.variant = num_tasks, horizon, variant

    def reset(self, task_seeds: Sequence[int]) -> np.ndarray:
        """Draw one task per seed; returns the (only) state 0 of each task, shape (B,)."""
        assert len(task_seeds) == self.num_tasks
        self.p = np.empty((self.num_tasks, NUM_ARMS))
        self.uniforms = np.empty((self.num_tasks, self.horizon))
        for b, seed in enumerate(task_seeds):  # task sampling only; stepping is vectorised
            rng = np.random.default_rng(seed)
            if self.variant == "uniform":
                self.p[b] = rng.random(NUM_ARMS)
            else:
                self.p[b] = np.clip(rng.normal(0.5, 0.5, NUM_ARMS), 0.0, 1.0)
            self.uniforms[b] = rng.random(self.horizon)
        self.t = 0
        return np.zeros(self.num_tasks, dtype=np.int64)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pull arm `actions[b]` of task b: reward 1 with probability p. Every pull ends an episode."""
        reward = (self.uniforms[:, self.t] < self.p[np.arange(self.num_tasks), actions]).astype(np.float64)
        self.t += 1
        self.last_next_state = np.zeros(self.num_tasks, dtype=np.int64)
        done = np.ones(self.num_tasks, dtype=bool)
        return self.last_next_state.copy(), reward, done, done

    def observation(self, states: np.ndarray) -> np.ndarray:
        """One-hot of the single state: a constant 1 per task, shape (B, 1)."""
        return np.ones((len(states), 1))

    def optimal_returns(self) -> np.ndarray:
        """Expected meta-episode return of the oracle that always pulls the best arm: H * max_k p_k."""
        return self.horizon * self.p.max(axis=1)
