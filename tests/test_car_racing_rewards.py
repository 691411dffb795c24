"""The lane reward variants of ColorCarRacing (REPAINT's inner-lane / outer-lane tasks)."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.box2d.car_racing import TRACK_WIDTH
from matplotlib.path import Path

import envs  # noqa: F401  (registers ColorCarRacing-v0)
from envs.car_racing import LANE_WEIGHT, REWARDS, ColorCarRacing, make_color_car_racing

# gymnasium numbering: gas, then a right and a left turn, so the car leaves the centre line both ways
GYM_ACTIONS = [3] * 20 + [1] * 6 + [3] * 8 + [2] * 10 + [3] * 8


def test_bad_reward_is_a_one_line_value_error_listing_accepted_variants():
    with pytest.raises(ValueError) as err:
        gym.make("ColorCarRacing-v0", reward="middle_lane")
    message = str(err.value)
    assert "'middle_lane'" in message and "\n" not in message and all(name in message for name in REWARDS)


def test_lateral_offset_is_signed_towards_the_inside_of_the_loop():
    env = ColorCarRacing(reward="inner_lane")
    env.reset(seed=3)
    loop = Path(env.track_xy)
    for i in range(0, len(env.track_xy), 17):
        p, q = env.track_xy[i], env.track_xy[(i + 1) % len(env.track_xy)]
        tangent = (q - p) / np.linalg.norm(q - p)
        inward = env.inside_sign * np.array([-tangent[1], tangent[0]])
        assert loop.contains_point(p + 3.0 * inward) and not loop.contains_point(p - 3.0 * inward)
        for offset in (-4.0, 0.0, 2.5):
            env.car.hull.position = tuple(p + 0.2 * (q - p) + offset * inward)
            assert env.lateral_offset() == pytest.approx(offset, abs=1e-4)  # Box2D stores float32
            u = offset / TRACK_WIDTH
            assert env.lane_reward() == pytest.approx(LANE_WEIGHT * u, abs=1e-4)
    env.car.hull.position = tuple(env.track_xy[0] + 2.0 * TRACK_WIDTH * inward)  # on the grass
    assert env.lane_reward() == -LANE_WEIGHT


def test_lane_rewards_add_the_opposite_lane_terms_to_the_standard_reward():
    variants = {name: make_color_car_racing(reward=name) for name in REWARDS}
    for env in variants.values():
        env.reset(seed=5)
    largest = 0.0
    for action in GYM_ACTIONS:
        steps = {name: env.unwrapped.step_gym_action(action) for name, env in variants.items()}
        rewards = {}
        for name, env in variants.items():  # the task's step() adds the lane term on top of gymnasium's reward
            rewards[name] = steps[name][1] + (env.unwrapped.lane_reward() if name != "standard" else 0.0)
        u = variants["inner_lane"].unwrapped.lateral_offset() / TRACK_WIDTH
        assert abs(u) <= 1.0  # the car stays on the road
        assert rewards["inner_lane"] - rewards["standard"] == pytest.approx(LANE_WEIGHT * u, abs=1e-9)
        assert rewards["outer_lane"] - rewards["standard"] == pytest.approx(-LANE_WEIGHT * u, abs=1e-9)
        largest = max(largest, abs(u))
    assert largest > 0.1  # the trajectory does leave the centre line


def test_task_step_applies_the_lane_reward():
    standard, outer = ColorCarRacing(), ColorCarRacing(reward="outer_lane")
    standard.reset(seed=2)
    outer.reset(seed=2)
    for action in [3] * 12 + [1] * 6:  # task "standard": gymnasium's numbering
        _, r_standard, _, _, _ = standard.step(action)
        _, r_outer, _, _, _ = outer.step(action)
        assert r_outer - r_standard == pytest.approx(outer.lane_reward(), abs=1e-9)
