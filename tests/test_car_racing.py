import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers ColorCarRacing-v0)
from conftest import colour_change_residual
from envs.car_racing import (
    NAMED_COLORS,
    TASKS,
    ColorCarRacing,
    ColorCarRacingObservation,
    area_resize_matrix,
    grass_from_background,
    make_color_car_racing,
    parse_bg_color,
    preprocess_frame,
)

# A fixed action sequence with gas, both turns, coasting and braking (gymnasium numbering).
ACTIONS = [3] * 25 + [1] * 8 + [3] * 6 + [2] * 10 + [0] * 4 + [4] * 3 + [3] * 4


def rollout(env: ColorCarRacing, seed: int, gym_actions) -> tuple[list, list, list]:
    env.reset(seed=seed)
    frames, rewards, positions = [], [], []
    for a in gym_actions:
        frame, reward, terminated, truncated, _ = env.step_gym_action(a)
        frames.append(frame)
        rewards.append(reward)
        positions.append(tuple(env.car.hull.position) + (env.car.hull.angle,))
    return frames, rewards, positions


@pytest.mark.parametrize("name", list(NAMED_COLORS))
def test_named_colours_set_background_grass_and_grey_road(name):
    env = ColorCarRacing(bg_color=name)
    background, grass = NAMED_COLORS[name]
    assert tuple(env.bg_color) == background and tuple(env.grass_color) == grass
    assert tuple(env.road_color) == (102, 102, 102)


def test_hex_colours_and_the_grass_rule():
    assert parse_bg_color("#66CC66") == NAMED_COLORS["green"]
    assert parse_bg_color("#102030") == ((16, 32, 48), (16, 58, 74))
    assert grass_from_background((90, 90, 90)) == (116, 116, 116)
    # The documented rule reproduces the authors' table (pink differs by one level on blue).
    for name, (background, grass) in NAMED_COLORS.items():
        derived = grass_from_background(background)
        assert np.abs(np.subtract(derived, grass)).max() <= (1 if name == "pink" else 0)


@pytest.mark.parametrize("bad", ["purple", "", "66cc66", "rgb(1,2,3)"])
def test_bad_colour_is_a_one_line_value_error_listing_accepted_names(bad):
    with pytest.raises(ValueError) as err:
        gym.make("ColorCarRacing-v0", bg_color=bad)
    message = str(err.value)
    assert repr(bad) in message and "\n" not in message
    assert all(name in message for name in NAMED_COLORS) and "#rrggbb" in message


@pytest.mark.parametrize("bad", ["#12345", "#1234567", "#gg0000"])
def test_malformed_hex_colour_is_called_malformed_not_unknown(bad):
    with pytest.raises(ValueError) as err:
        parse_bg_color(bad)
    message = str(err.value)
    assert message.startswith(f"malformed hex colour {bad!r}") and "'#rrggbb' with six hex digits" in message


def test_bad_task_is_a_one_line_value_error_listing_accepted_tasks():
    with pytest.raises(ValueError) as err:
        ColorCarRacing(task="fast")
    assert "'fast'" in str(err.value) and all(task in str(err.value) for task in TASKS)


def test_action_spaces_and_step_limits_of_the_tasks():
    expected = {"standard": (5, 1000), "slow": (5, 3000), "scrambled": (5, 1000), "no_idle": (4, 1000)}
    for task, (n_actions, max_steps) in expected.items():
        env = ColorCarRacing(task=task)
        assert env.action_space == gym.spaces.Discrete(n_actions)
        assert env.max_episode_steps == max_steps


@pytest.mark.parametrize("task", ["scrambled", "no_idle"])
def test_reordered_actions_drive_the_same_car(task):
    """The variants only re-order gymnasium's actions: mapping back gives identical trajectories."""
    standard, variant = ColorCarRacing(task="standard"), ColorCarRacing(task=task)
    gym_actions = [a for a in ACTIONS if a != 0] if task == "no_idle" else ACTIONS
    to_variant = {int(g): i for i, g in enumerate(variant.action_to_gym)}
    standard.reset(seed=3)
    variant.reset(seed=3)
    for a in gym_actions:
        _, r_standard, *_ = standard.step(a)
        _, r_variant, *_ = variant.step(to_variant[a])
        assert r_standard == r_variant
        assert tuple(standard.car.hull.position) == tuple(variant.car.hull.position)
    with pytest.raises(gym.error.InvalidAction):
        variant.step(len(variant.action_to_gym))


def test_slow_task_removes_the_frame_penalty_and_ends_above_speed_35():
    standard, slow = ColorCarRacing(task="standard"), ColorCarRacing(task="slow")
    standard.reset(seed=0)
    slow.reset(seed=0)
    # Standing still on the start tile (its tile reward comes with the first frame):
    # -0.1 per frame in standard, 0 in slow.
    standard.step(0)
    slow.step(0)
    assert standard.step(0)[1] == pytest.approx(-0.1)
    assert slow.step(0)[1] == pytest.approx(0.0, abs=1e-9)
    for _ in range(400):  # full gas: speed passes 35 well within 400 frames
        _, reward, terminated, truncated, info = slow.step(3)
        if terminated:
            break
    assert terminated and reward == -100.0 and info["too_fast"]
    assert np.linalg.norm(slow.car.hull.linearVelocity) > 35


def test_episode_truncates_at_the_task_step_limit():
    env = ColorCarRacing()
    env.reset(seed=0)
    env.max_episode_steps = 5  # the mechanism; the limits themselves are checked above
    truncations = [env.step(0)[3] for _ in range(5)]
    assert truncations == [False] * 4 + [True]
    env.reset(seed=0)
    assert env.elapsed_steps == 0 and not env.step(0)[3]


def test_far_view_sees_the_same_state_from_further_away():
    standard, far = ColorCarRacing(view="near"), ColorCarRacing(view="far")
    f_standard, r_standard, p_standard = rollout(standard, 5, ACTIONS[:40])
    f_far, r_far, p_far = rollout(far, 5, ACTIONS[:40])
    assert r_standard == r_far and p_standard == p_far
    assert np.abs(f_standard[-1].astype(int) - f_far[-1]).mean() > 5
    # the legacy task name "far" is the far view of the standard task
    alias = ColorCarRacing(task="far")
    assert (alias.view, alias.task, alias.zoom) == ("far", "standard", far.zoom)
    np.testing.assert_array_equal(rollout(alias, 5, ACTIONS[:40])[0][-1], f_far[-1])


@pytest.mark.parametrize("task", list(TASKS))
def test_every_view_combines_with_every_task(task):
    env = make_color_car_racing("blue", task, view="far")
    inner = env.unwrapped
    assert (inner.view, inner.task, inner.zoom) == ("far", task, 1.0)
    assert inner.action_space.n == len(TASKS[task]["actions"]) and inner.max_episode_steps == TASKS[task]["max_steps"]
    obs, _ = env.reset(seed=3)
    for _ in range(60):  # standing still past the zoom-in: the far camera's frames, no new tiles
        obs, reward, *_ = env.step(1)
    assert obs.shape == (3, 84, 84)
    # the task's rule decides the reward: no per-frame penalty under slow, -0.1 per frame otherwise
    assert reward == pytest.approx(0.0 if task == "slow" else -0.1, abs=1e-9)


def test_bad_view_is_a_one_line_value_error():
    with pytest.raises(ValueError) as err:
        ColorCarRacing(view="aerial")
    assert "'aerial'" in str(err.value) and "near, far" in str(err.value) and "\n" not in str(err.value)


def test_colours_change_only_background_and_grass_pixels():
    """Same seed and actions: identical physics and rewards in every colour, and frames that differ
    only where background or grass shows (see conftest.colour_change_residual)."""
    green_frames, green_rewards, green_positions = rollout(ColorCarRacing(bg_color="green"), 7, ACTIONS)
    for colour in ["red", "blue", "#808080"]:
        frames, rewards, positions = rollout(ColorCarRacing(bg_color=colour), 7, ACTIONS)
        assert rewards == green_rewards and positions == green_positions
        for green, other in zip(green_frames[::5], frames[::5]):
            assert np.any(green != other, axis=-1).mean() > 0.2  # the background is visible
            assert colour_change_residual(green, other, "green", colour) <= 3.0


def test_registered_id_works_in_sync_and_async_vector_envs():
    for vector_cls in (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv):
        vec = vector_cls([lambda: make_color_car_racing("red", "no_idle", frame_stack=2) for _ in range(2)])
        obs, _ = vec.reset(seed=1)
        assert obs.shape == (2, 6, 84, 84) and obs.dtype == np.uint8
        obs, *_ = vec.step(np.array([2, 2]))
        assert obs.shape == (2, 6, 84, 84)
        vec.close()


def test_area_resize_preserves_constants_and_mass():
    weights = area_resize_matrix(96, 84)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights.sum(axis=0) * 96 / 84, 1.0, rtol=1e-6)
    flat = np.full((96, 96, 3), (12, 200, 77), dtype=np.uint8)
    out = preprocess_frame(flat)
    assert out.shape == (3, 84, 84) and out.dtype == np.uint8
    assert (out[:, 10, 10] == (12, 200, 77)).all() and (out == out[:, :1, :1]).all()


def test_frame_stack_repeats_the_first_frame_and_shifts():
    env = ColorCarRacingObservation(ColorCarRacing(), frame_stack=3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (9, 84, 84)
    np.testing.assert_array_equal(obs[0:3], obs[6:9])
    for _ in range(5):
        previous = obs
        obs, *_ = env.step(3)
    np.testing.assert_array_equal(obs[0:6], previous[3:9])
    with pytest.raises(ValueError, match="frame_stack"):
        ColorCarRacingObservation(ColorCarRacing(), frame_stack=0)
