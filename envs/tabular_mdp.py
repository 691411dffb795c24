"""Random tabular MDPs (RL^2 / RL^3 task family) and the shared batched value iteration.

A task: 10 states, 5 actions, start state 0, episodes of 10 steps. Transitions
T(.|s,a) ~ Dirichlet(alpha) (alpha = 1 in distribution, 0.25 out of distribution), mean rewards
R(s,a) = 1 + N(0,1), observed reward R(s,a) + N(0,1) (RL^3 paper, Sec. 5; RL^2 paper, Sec. 4.2).

`value_iteration` is the one value-iteration routine of `envs/` (the MDP oracle here; the gridworld oracle and
layout filter); `rl3_meta.py`'s object-level learner runs its own sparse version on the estimated model. Every array
carries a leading batch axis B so that B tasks are solved with one matrix product per sweep.

Randomness: each task owns a `numpy.random.Generator` seeded by its task seed. The task is drawn
from it at `reset`, and so are all the random numbers its meta-episode will use (one block of
uniforms/normals). `step` is then pure array arithmetic, and a batch of B tasks behaves exactly
like B single-task environments with the same seeds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NUM_STATES = 10
NUM_ACTIONS = 5
EPISODE_LENGTH = 10
VARIANTS = {"dirichlet1": 1.0, "dirichlet0.25": 0.25}
"""Task distributions by name -> Dirichlet concentration of the transition rows."""
IN_DISTRIBUTION = "dirichlet1"
OOD_VARIANTS = ("dirichlet0.25",)


def value_iteration(
    P: np.ndarray,
    R: np.ndarray,
    gamma: float,
    max_iters: int,
    tol: float = 0.0,
    V0: np.ndarray | None = None,
    terminal: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Batched synchronous value iteration.

    P: (B, S, A, S) transition probabilities; R: (B, S, A) expected immediate rewards;
    terminal: optional (S,) or (B, S) bool mask of states whose value is fixed to 0.
    Sweeps Q(s,a) = R(s,a) + gamma * sum_s' P(s'|s,a) V(s'), V(s) = max_a Q(s,a) (Bellman optimality),
    starting from V0 (zeros by default), for at most `max_iters` sweeps; stops early once the largest
    change of V over the whole batch is below `tol` (tol = 0 runs exactly `max_iters` sweeps, which with
    gamma = 1 and V0 = 0 is the exact finite-horizon optimal value).
    Returns (Q, V, number of sweeps).
    """
    B, S, A, _ = P.shape
    V = np.zeros((B, S)) if V0 is None else V0.copy()
    keep = 1.0 if terminal is None else (~np.broadcast_to(terminal, (B, S))).astype(np.float64)
    P_flat = P.reshape(B, S * A, S)
    Q = R.copy()
    sweeps = 0
    for sweeps in range(1, max_iters + 1):
        Q = R + gamma * (P_flat @ (V * keep)[:, :, None]).reshape(B, S, A)
        V_new = Q.max(axis=2) * keep
        delta = np.abs(V_new - V).max()
        V = V_new
        if delta < tol:
            break
    return Q, V, sweeps


class TabularMDPEnv:
    """B random tabular MDPs stepped together; one meta-episode of `horizon` steps per `reset` (a horizon that is
    not a multiple of 10 cuts the last task episode short, as in the authors' code)."""

    num_states = NUM_STATES
    num_actions = NUM_ACTIONS
    episode_length = EPISODE_LENGTH
    obs_dim = NUM_STATES

    def __init__(self, num_tasks: int, horizon: int, variant: str = IN_DISTRIBUTION):
        if variant not in VARIANTS:
            raise ValueError(f"unknown tabular MDP variant '{variant}'; expected one of {', '.join(VARIANTS)}")
        if horizon <= 0:
            raise ValueError(f"tabular MDP horizon {horizon} must be a positive integer")
        self.num_tasks, self.horizon, self.alpha = num_tasks, horizon, VARIANTS[variant]

    def reset(self, task_seeds: Sequence[int]) -> np.ndarray:
        """Draw one task per seed; returns the start states (B,)."""
        assert len(task_seeds) == self.num_tasks
        S, A, H = NUM_STATES, NUM_ACTIONS, self.horizon
        self.P = np.empty((self.num_tasks, S, A, S))
        self.R = np.empty((self.num_tasks, S, A))
        self.uniforms = np.empty((self.num_tasks, H))
        self.noise = np.empty((self.num_tasks, H))
        for b, seed in enumerate(task_seeds):  # task sampling only; stepping is vectorised
            rng = np.random.default_rng(seed)
            self.P[b] = rng.dirichlet(np.full(S, self.alpha), size=(S, A))
            self.R[b] = 1.0 + rng.standard_normal((S, A))
            self.uniforms[b] = rng.random(H)
            self.noise[b] = rng.standard_normal(H)
        self.cdf = np.cumsum(self.P, axis=3)
        self.t = 0
        self.episode_step = 0
        self.state = np.zeros(self.num_tasks, dtype=np.int64)
        return self.state.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Returns (next observed state, reward, terminated, episode_end). At an episode end the
        returned state is the reset start state; the model-relevant successor is `self.last_next_state`."""
        b = np.arange(self.num_tasks)
        s, u = self.state, self.uniforms[:, self.t]
        reward = self.R[b, s, actions] + self.noise[:, self.t]
        cdf = self.cdf[b, s, actions]  # (B, S)
        next_state = np.minimum((u[:, None] > cdf).sum(axis=1), NUM_STATES - 1)  # inverse-CDF sampling
        self.last_next_state = next_state
        self.t += 1
        self.episode_step += 1
        episode_end = np.full(self.num_tasks, self.episode_step == EPISODE_LENGTH)
        if self.episode_step == EPISODE_LENGTH:
            self.episode_step = 0
            next_state = np.zeros_like(next_state)
        self.state = next_state
        return next_state.copy(), reward, np.zeros(self.num_tasks, dtype=bool), episode_end

    def observation(self, states: np.ndarray) -> np.ndarray:
        """One-hot state encoding (B, 10)."""
        return np.eye(NUM_STATES)[states]

    def optimal_returns(self) -> np.ndarray:
        """Expected meta-episode return of the oracle that knows the task: floor(H / 10) times the exact 10-step
        optimal value of the start state plus the exact (H mod 10)-step one for a cut-short last episode."""
        _, V, _ = value_iteration(self.P, self.R, gamma=1.0, max_iters=EPISODE_LENGTH)
        _, V_rest, _ = value_iteration(self.P, self.R, gamma=1.0, max_iters=self.horizon % EPISODE_LENGTH)
        return V[:, 0] * (self.horizon // EPISODE_LENGTH) + V_rest[:, 0]
