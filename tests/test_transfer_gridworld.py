import gymnasium as gym
import numpy as np
import pytest

from envs.transfer_gridworld import (
    MAX_STEPS,
    SIZE,
    START,
    TASKS,
    WALLS,
    TransferGridworld,
    optimal_return,
    shortest_path_length,
)

NORTH, EAST, SOUTH, WEST = range(4)
# The shortest path to the target goal: up to the door row, through the door, up and right to the corner.
TARGET_PATH = [NORTH] * 3 + [EAST] * 6 + [NORTH] * 3


def test_layout_is_two_rooms_joined_by_one_door_and_goals_are_free_cells():
    assert WALLS.shape == (SIZE, SIZE) and not WALLS[START]
    assert [r for r in range(SIZE) if not WALLS[r, 3]] == [3]  # the door
    for task in TASKS.values():
        assert not WALLS[task.goal]
    assert len({task.goal for task in TASKS.values()}) == len(TASKS)


def test_shortest_paths_and_optimal_returns():
    assert shortest_path_length(TASKS["target"].goal) == 12
    assert shortest_path_length(TASKS["similar"].goal) == 11
    assert shortest_path_length(TASKS["different"].goal) == 10
    assert optimal_return("target") == pytest.approx(1.0 - 0.12)


def test_shortest_path_reaches_the_goal_with_the_optimal_return():
    env = TransferGridworld("target")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (SIZE * SIZE,) and obs.dtype == np.float32 and obs[START[0] * SIZE + START[1]] == 1.0
    total = 0.0
    for i, action in enumerate(TARGET_PATH):
        obs, reward, terminated, truncated, _ = env.step(action)
        total += reward
        assert terminated == (i == len(TARGET_PATH) - 1) and not truncated
    assert total == pytest.approx(optimal_return("target"))
    assert obs.argmax() == 0 * SIZE + 6 and obs.sum() == 1.0


def test_walls_and_borders_block_and_other_goals_do_not_end_the_task():
    env = TransferGridworld("target")
    env.reset()
    env.step(WEST)  # border
    env.step(SOUTH)  # border
    assert env.position == START
    env.position = (2, 2)
    env.step(EAST)  # wall at (2, 3)
    assert env.position == (2, 2)
    env.position = (0, 5)
    _, reward, terminated, _, _ = env.step(WEST)  # the "different" goal is an ordinary cell here
    assert env.position == (0, 4) and not terminated and reward == pytest.approx(-0.01)


def test_different_goal_lies_on_a_shortest_target_path_then_the_paths_part():
    """The lane analogue: the different task's shortest path is the first 10 of 12 steps of a shortest target path;
    from its goal the target's goal is two steps east, and the different task rewards stopping there."""
    env = TransferGridworld("different")
    env.reset()
    different_path = [NORTH] * 3 + [EAST] * 4 + [NORTH] * 3
    for i, action in enumerate(different_path):
        _, _, terminated, _, _ = env.step(action)
        assert terminated == (i == len(different_path) - 1)
    target = TransferGridworld("target")
    target.reset()
    total = sum(target.step(action)[1] for action in different_path + [EAST, EAST])
    assert target.position == TASKS["target"].goal and total == pytest.approx(optimal_return("target"))


def test_truncation_after_max_steps():
    env = TransferGridworld("similar")
    env.reset()
    for step in range(MAX_STEPS):
        _, _, terminated, truncated, _ = env.step(WEST)
        assert not terminated and truncated == (step == MAX_STEPS - 1)


def test_bad_task_is_a_one_line_error():
    with pytest.raises(ValueError) as err:
        TransferGridworld("nearby")
    message = str(err.value)
    assert "'nearby'" in message and "\n" not in message and all(name in message for name in TASKS)


def test_vector_env_resets_on_the_step_after_the_goal():
    envs = gym.vector.SyncVectorEnv([lambda: TransferGridworld("target")] * 2)  # as repaint_ppo.py builds it
    envs.reset(seed=0)
    for action in TARGET_PATH:
        obs, _, terminated, _, _ = envs.step(np.array([action, WEST]))
    assert terminated.tolist() == [True, False] and obs[0].argmax() == 6
    obs, reward, terminated, truncated, _ = envs.step(np.array([EAST, WEST]))  # the action of env 0 is ignored
    assert obs[0].argmax() == START[0] * SIZE + START[1] and reward[0] == 0.0 and not terminated[0]
