"""Bernoulli multi-armed bandits (RL^2 / RL^3 task family), batched.

A task: 5 arms with success probabilities p_k ~ U(0, 1) ("uniform", in distribution) or
p_k ~ N(0.5, 0.5) ("normal", out of distribution: an arm with p < 0 never pays, p > 1 always pays).
Each task episode is one pull; a meta-episode is `horizon` pulls of the same task.
For the object-level learner the bandit is a one-state MDP whose every step terminates.
`baseline_returns` plays the classical non-learning baselines (random actions on any task family of `envs/`,
Thompson sampling and UCB1 on bandits); `summary` gives mean +- std of raw and oracle-normalised returns.

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


def baseline_returns(env, task_seeds: Sequence[int], seed: int) -> dict:
    """Meta-episode returns of the non-learning baselines on the tasks `task_seeds` of `env` (any batched env of
    `envs/`; through the env's pre-drawn random numbers the baselines also see the same reward draws): random
    actions everywhere; on bandits also Thompson sampling with Beta(1, 1) priors and UCB1 (each arm once, then
    mean + sqrt(2 ln t / n))."""
    rng = np.random.default_rng(seed)
    B, A = env.num_tasks, env.num_actions
    policies = ["random"] + (["thompson", "ucb1"] if isinstance(env, BanditEnv) else [])
    results = {}
    for name in policies:
        env.reset(task_seeds)
        pulls, wins, total = np.zeros((B, A)), np.zeros((B, A)), np.zeros(B)
        for t in range(env.horizon):
            if name == "random":
                action = rng.integers(A, size=B)
            elif name == "thompson":
                action = rng.beta(1.0 + wins, 1.0 + pulls - wins).argmax(axis=1)
            else:
                bonus = np.sqrt(2.0 * np.log(max(t, 1)) / np.maximum(pulls, 1))
                action = np.where(t < A, t, (wins / np.maximum(pulls, 1) + bonus).argmax(axis=1))
            _, reward, _, _ = env.step(action)
            pulls[np.arange(B), action] += 1
            wins[np.arange(B), action] += reward
            total += reward
        results[name] = total
    return results


def summary(returns: np.ndarray, oracle: np.ndarray) -> dict:
    """Mean +- std over tasks of the meta-episode return and of the oracle-normalised return (return / oracle)."""
    normalized = returns / oracle
    return dict(
        mean=float(returns.mean()),
        std=float(returns.std()),
        normalized_mean=float(normalized.mean()),
        normalized_std=float(normalized.std()),
    )
