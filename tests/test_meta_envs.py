"""Tests of the meta-RL task families in envs/ (bandit, tabular_mdp, gridworld)."""

import numpy as np
import pytest

from envs import bandit, gridworld, tabular_mdp
from envs.tabular_mdp import value_iteration


def tiny_mdp():
    """2 states, 2 actions. State 0: action 0 stays (reward 1), action 1 moves to state 1 (reward 0).
    State 1 is absorbing with reward 2 for either action."""
    P = np.zeros((1, 2, 2, 2))
    P[0, 0, 0, 0] = P[0, 0, 1, 1] = P[0, 1, :, 1] = 1.0
    R = np.array([[[1.0, 0.0], [2.0, 2.0]]])
    return P, R


def test_value_iteration_matches_closed_form_discounted():
    # V(1) = 2 / (1 - g); V(0) = max(1 / (1 - g), g V(1)) = g * 2 / (1 - g) for g = 0.9
    P, R = tiny_mdp()
    Q, V, sweeps = value_iteration(P, R, gamma=0.9, max_iters=10_000, tol=1e-12)
    np.testing.assert_allclose(V[0], [18.0, 20.0], atol=1e-9)
    np.testing.assert_allclose(Q[0, 0], [1 + 0.9 * 18.0, 0.9 * 20.0], atol=1e-9)
    assert 1 < sweeps < 10_000


def test_value_iteration_finite_horizon_and_terminal():
    P, R = tiny_mdp()
    # undiscounted 3-step values: V1 = (1, 2), V2 = (2, 4), V3 = (max(1 + 2, 0 + 4), 6) = (4, 6)
    _, V, sweeps = value_iteration(P, R, gamma=1.0, max_iters=3)
    np.testing.assert_allclose(V[0], [4.0, 6.0])
    assert sweeps == 3
    # a terminal state has value 0, so moving there is worth only its immediate reward 0
    Q, V, _ = value_iteration(P, R, gamma=0.9, max_iters=10_000, tol=1e-12, terminal=np.array([False, True]))
    np.testing.assert_allclose(V[0], [10.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(Q[0, 0], [10.0, 0.0], atol=1e-9)


def test_value_iteration_is_batched():
    P, R = tiny_mdp()
    _, V_pair, _ = value_iteration(np.concatenate([P, P[:, ::-1]]), np.concatenate([R, R[:, ::-1]]), 0.9, 500)
    _, V_one, _ = value_iteration(P, R, 0.9, 500)
    np.testing.assert_allclose(V_pair[0], V_one[0])
    assert not np.allclose(V_pair[1], V_one[0])


def check_layout(tiles, variant):
    cfg = gridworld.VARIANTS[variant]
    size = tiles.shape[0]
    centre = size // 2
    assert tiles[centre, centre] == gridworld.BLANK
    (goal,) = np.argwhere(tiles == gridworld.GOAL)
    distance = abs(goal[0] - centre) + abs(goal[1] - centre)
    assert distance >= (2 * centre if cfg["corner"] else 8)
    # segments never overlap (they only cover blank cells), so the tile counts are exact
    assert (tiles == gridworld.WALL).sum() == cfg["num_walls"] * cfg["wall_length"]
    assert (tiles == gridworld.WATER).sum() == cfg["num_water"] * 2
    hazards = np.argwhere(tiles == gridworld.HAZARD)
    assert len(hazards) == cfg["num_hazards"]
    assert (tiles == gridworld.WARNING).sum() == 4 * cfg["num_hazards"]
    for r, c in hazards:
        assert all(tiles[r + dr, c + dc] == gridworld.WARNING for dr, dc in [(-1, 0), (1, 0), (0, -1), (0, 1)])
    value = gridworld.optimal_filter_return(tiles, cfg["slip"])
    assert 50.0 <= value <= 100.0


@pytest.mark.parametrize("variant", list(gridworld.VARIANTS))
def test_gridworld_generator_rules(variant):
    seeds = 40 if variant == "standard" else 8
    for seed in range(seeds):
        for size in gridworld.SIZES:
            check_layout(gridworld.sample_grid(np.random.default_rng(seed), size, variant), variant)


def test_gridworld_filter_rejects_grids_outside_range():
    # a goal walled off from the start has no positive return: such a grid would be redrawn
    tiles = np.zeros((11, 11), dtype=np.int64)
    tiles[0, 0] = gridworld.GOAL
    tiles[1, 0:2] = tiles[0, 1] = gridworld.WALL
    assert gridworld.optimal_filter_return(tiles, 0.2) < 50.0
    # in an open grid the goal at distance 10 is worth 100 minus about a dozen -1 steps
    tiles[1, 0:2] = tiles[0, 1] = gridworld.BLANK
    assert 80.0 < gridworld.optimal_filter_return(tiles, 0.2) < 92.0


def test_gridworld_transition_model_slip_and_water():
    tiles = np.zeros((11, 11), dtype=np.int64)
    tiles[5, 6] = gridworld.WATER
    P, R = gridworld.transition_model(tiles, 0.2)
    centre, north, east, south, west = 60, 49, 61, 71, 59
    np.testing.assert_allclose(P[centre, 1, [north, east, west]], [0.8, 0.1, 0.1])
    np.testing.assert_allclose(P[centre, 3, [south, east, west]], [0.8, 0.1, 0.1])
    assert P[centre, 0, centre] == 1.0
    np.testing.assert_allclose(
        P[east, 1, [east - 11, east + 11, east + 1, centre]], [0.0, 0.0, 0.5, 0.5]
    )  # water always slips
    np.testing.assert_allclose(P.sum(axis=2), 1.0)
    np.testing.assert_allclose(R[centre, 2], 0.8 * -2.0 + 0.2 * -1.0)  # entering water costs 2


ENVS = {
    "bandit": lambda n, variant: bandit.BanditEnv(n, 30, variant),
    "mdp": lambda n, variant: tabular_mdp.TabularMDPEnv(n, 30, variant),
    "gridworld": lambda n, variant: gridworld.GridworldEnv(n, 60, variant, 11),
}
VARIANTS = {"bandit": bandit.VARIANTS, "mdp": list(tabular_mdp.VARIANTS), "gridworld": list(gridworld.VARIANTS)}


def play(env, seeds, actions):
    trace = [env.reset(seeds)]
    for a in actions:
        trace.extend(env.step(a))
        trace.append(env.last_next_state.copy())
    return [np.asarray(x) for x in trace]


@pytest.mark.parametrize("domain", list(ENVS))
def test_batched_env_equals_single_task_envs(domain):
    seeds = [11, 22, 33, 44]
    for variant in VARIANTS[domain]:
        batched = ENVS[domain](len(seeds), variant)
        actions = np.random.default_rng(0).integers(batched.num_actions, size=(batched.horizon, len(seeds)))
        batched_trace = play(batched, seeds, actions)
        for b, seed in enumerate(seeds):
            single_trace = play(ENVS[domain](1, variant), [seed], actions[:, b : b + 1])
            for x, y in zip(batched_trace, single_trace):
                np.testing.assert_array_equal(x[b : b + 1], y)


def test_gridworld_steps_follow_true_model():
    env = gridworld.GridworldEnv(8, 200, "standard", 11)
    states = env.reset(list(range(8)))
    models = [gridworld.transition_model(t, 0.2)[0] for t in env.tiles]
    rng = np.random.default_rng(1)
    for _ in range(env.horizon):
        actions = rng.integers(5, size=8)
        next_states, reward, terminated, _ = env.step(actions)
        for b in range(8):
            s2 = env.last_next_state[b]
            assert models[b][states[b], actions[b], s2] > 0
            assert reward[b] == gridworld.TILE_REWARD[env.tiles[b].reshape(-1)[s2]]
            assert terminated[b] == (env.tiles[b].reshape(-1)[s2] in (gridworld.GOAL, gridworld.HAZARD))
            assert next_states[b] == (env.start if terminated[b] else s2)
        states = next_states


def test_task_distributions():
    env = bandit.BanditEnv(500, 10, "normal")
    env.reset(list(range(500)))
    assert env.p.min() == 0.0 and env.p.max() == 1.0  # clipped normal: some arms never / always pay
    env = bandit.BanditEnv(500, 10, "uniform")
    env.reset(list(range(500)))
    assert 0.0 < env.p.min() and env.p.max() < 1.0 and abs(env.p.mean() - 0.5) < 0.02
    np.testing.assert_allclose(env.optimal_returns(), 10 * env.p.max(axis=1))

    mdp = tabular_mdp.TabularMDPEnv(200, 10, "dirichlet1")
    mdp.reset(list(range(200)))
    np.testing.assert_allclose(mdp.P.sum(axis=3), 1.0)
    assert abs(mdp.R.mean() - 1.0) < 0.05 and abs(mdp.R.std() - 1.0) < 0.05
    sparse = tabular_mdp.TabularMDPEnv(200, 10, "dirichlet0.25")
    sparse.reset(list(range(200)))
    assert sparse.P.max(axis=3).mean() > mdp.P.max(axis=3).mean() + 0.15  # alpha 0.25: peakier rows


def test_mdp_episodes_and_oracle():
    env = tabular_mdp.TabularMDPEnv(3, 30, "dirichlet1")
    env.reset([5, 6, 7])
    ends = [env.step(np.zeros(3, dtype=np.int64))[3][0] for _ in range(30)]
    assert [t + 1 for t, end in enumerate(ends) if end] == [10, 20, 30]
    # the oracle return is 3 episodes of the exact 10-step optimal value, here checked by backward induction
    env.reset([5, 6, 7])
    V = np.zeros((3, 10))
    for _ in range(10):
        V = (env.R + np.einsum("bsaz,bz->bsa", env.P, V)).max(axis=2)
    np.testing.assert_allclose(env.optimal_returns(), 3 * V[:, 0])


def test_mdp_horizon_not_a_multiple_of_the_episode_length_cuts_the_last_episode():
    env = tabular_mdp.TabularMDPEnv(3, 16, "dirichlet1")
    env.reset([5, 6, 7])
    ends = [env.step(np.zeros(3, dtype=np.int64))[3][0] for _ in range(16)]
    assert [t + 1 for t, end in enumerate(ends) if end] == [10]
    env.reset([5, 6, 7])
    V = [np.zeros((3, 10))]
    for _ in range(10):
        V.append((env.R + np.einsum("bsaz,bz->bsa", env.P, V[-1])).max(axis=2))
    np.testing.assert_allclose(env.optimal_returns(), V[10][:, 0] + V[6][:, 0])  # 10 steps, then a 6-step episode


def test_baselines_play_the_same_tasks_and_summary_normalises_per_task():
    env = bandit.BanditEnv(200, 100)
    seeds = list(range(200))
    results = bandit.baseline_returns(env, seeds, seed=0)
    assert set(results) == {"random", "thompson", "ucb1"}
    env.reset(seeds)
    oracle = env.optimal_returns()
    random_policy, thompson = bandit.summary(results["random"], oracle), bandit.summary(results["thompson"], oracle)
    assert thompson["normalized_mean"] > random_policy["normalized_mean"] + 0.2
    np.testing.assert_allclose(random_policy["normalized_mean"], np.mean(results["random"] / oracle))
    assert set(bandit.baseline_returns(tabular_mdp.TabularMDPEnv(2, 10), [0, 1], seed=0)) == {"random"}


def test_gridworld_oracle_is_an_upper_bound_of_a_good_policy():
    # the meta-episode oracle restarts at the centre after the goal: it must beat the single-episode value
    env = gridworld.GridworldEnv(4, 250, "deterministic", 11)
    env.reset([1, 2, 3, 4])
    single = np.array([gridworld.optimal_filter_return(t, 0.0) for t in env.tiles])
    assert np.all(env.optimal_returns() > 2 * single)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="expected one of standard, dense"):
        gridworld.GridworldEnv(1, 10, "lava")
    with pytest.raises(ValueError, match="must be a positive integer"):
        tabular_mdp.TabularMDPEnv(1, 0)
