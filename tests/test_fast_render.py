"""The fast state renderer (envs/fast_render.py) against gymnasium's renderer on the same states."""

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers ColorCarRacing-v0)
from envs.car_racing import RENDER_BACKENDS, ColorCarRacing, make_color_car_racing, preprocess_frame
from envs.fast_render import WORLD_ROWS, camera_zoom, car_window

# Per channel, the mean |fast - gymnasium| of the 84x84 preprocessed frames, in [0, 1] units.
FIDELITY_BOUND = 4 / 255

# Gymnasium's actions (0 nothing, 1 left, 2 right, 3 gas, 4 brake): the first second is the zoom
# animation (exact rasterisation), then (ground texture) the car turns off the road onto the grass
# and comes back, visiting tiles and turning the view.
DRIVE = [3] * 50 + [1] * 12 + [3] * 15 + [0] * 5 + [2] * 20 + [3] * 10 + [4] * 3
# (colour, task, seed, steps): named and hex colours, the camera zooms of every task.
CONFIGS = [
    ("green", "standard", 0, len(DRIVE)),
    ("red", "far", 1, 90),
    ("#3050a0", "slow", 2, 60),
    ("violet", "no_idle", 3, 60),
]


def fast_frame(env: ColorCarRacing) -> np.ndarray:
    """The fast backend's frame of the env's current state."""
    return env.state_renderer.render(env.car, camera_zoom(env.t, env.zoom), env.reward)


def channel_errors(gym_frame: np.ndarray, fast: np.ndarray) -> np.ndarray:
    return np.abs(preprocess_frame(gym_frame).astype(np.float64) - preprocess_frame(fast)).mean(axis=(1, 2)) / 255


def test_fast_frames_match_gymnasium_frames_on_the_same_states():
    errors, steady, redrawn_tiles = [], [], 0
    for bg_color, task, seed, steps in CONFIGS:
        env = ColorCarRacing(bg_color=bg_color, task=task, render_backend="gymnasium")
        obs, _ = env.reset(seed=seed)
        track_colors = env.road_poly_colors.copy()
        errors.append(channel_errors(obs, fast_frame(env)))
        steady.append(False)
        for action in DRIVE[:steps]:
            obs, *_ = env.step_gym_action(action)
            errors.append(channel_errors(obs, fast_frame(env)))
            steady.append(env.t >= 1)
        renderer = env.state_renderer
        assert renderer.chunk_built.any()  # the ground texture was drawn and sampled
        redrawn_tiles += (renderer.texture_colors != track_colors).any(axis=1).sum()
    assert redrawn_tiles > 0  # visited tiles were redrawn in the texture
    errors, steady = np.array(errors), np.array(steady)
    assert len(errors) >= 300 and steady.sum() >= 100 and (~steady).sum() >= 150
    # The zoom-in (exact rasteriser) and the steady zoom (texture; the far task's view also reaches
    # past the playfield's edge: exact rasteriser) each within the bound.
    for frames in (steady, ~steady):
        assert errors[frames].mean(axis=0).max() <= FIDELITY_BOUND, errors[frames].mean(axis=0) * 255
    # No single state is far off either (e.g. a missing car or indicator).
    assert errors.mean(axis=1).max() <= 2 * FIDELITY_BOUND


def test_car_and_indicator_bar_match_gymnasium_where_they_are_drawn():
    # The whole-frame bound above hardly sees the car (~1% of the frame): compare the raw 96x96 frames
    # in the car's window and in the indicator bar alone. A missing wheel or a wrongly turned one
    # (~2 output pixels of black) moves the car window's mean by > 8 levels; pygame's fill rules
    # (polygons a window pixel larger) leave ~5.
    env = ColorCarRacing(bg_color="green", render_backend="gymnasium")
    env.reset(seed=0)
    car_errors, bar_errors = [], []
    for action in DRIVE:
        obs, *_ = env.step_gym_action(action)
        (left, top, right, bottom), _, _ = car_window(camera_zoom(env.t, env.zoom))
        difference = np.abs(obs.astype(np.float64) - fast_frame(env))
        car_errors.append(difference[top:bottom, left:right].mean())
        bar_errors.append(difference[WORLD_ROWS:].mean())
    assert np.mean(car_errors) <= 8 and np.mean(bar_errors) <= 1, (np.mean(car_errors), np.mean(bar_errors))


def test_texture_follows_a_new_track_after_reset():
    env = ColorCarRacing(bg_color="pink", task="far", render_backend="gymnasium")
    errors = []
    for seed in (5, 6):  # the second track must not show the first one's texture
        env.reset(seed=seed)
        for step, action in enumerate([3] * 60 + [1] * 15):
            obs, *_ = env.step_gym_action(action)
            if step >= 50:
                errors.append(channel_errors(obs, fast_frame(env)))
        assert env.state_renderer.chunk_built.any()
    assert np.mean(errors, axis=0).max() <= FIDELITY_BOUND, np.mean(errors, axis=0) * 255


def test_view_past_the_playfield_edge_matches_gymnasium():
    env = ColorCarRacing(bg_color="blue", render_backend="gymnasium")
    env.reset(seed=4)
    for _ in range(60):
        env.step_gym_action(3)
    # Move the car near the playfield's corner: the view shows the black outside.
    shift = np.array((310.0, 300.0)) - np.array(env.car.hull.position)
    for body in (env.car.hull, *env.car.wheels):
        body.position = tuple(np.array(body.position) + shift)
    gym_frame = env._render("state_pixels")
    assert (gym_frame[:84] == 0).all(axis=2).mean() > 0.05  # some of the frame is outside
    assert channel_errors(gym_frame, fast_frame(env)).max() <= FIDELITY_BOUND


def test_both_backends_give_the_same_rewards_and_episode_ends():
    actions = [3] * 60 + [1] * 30 + [3] * 40 + [2] * 10 + [4] * 5
    outcomes = {}
    for backend in RENDER_BACKENDS:
        env = gym.make("ColorCarRacing-v0", task="scrambled", render_backend=backend)
        env.reset(seed=7)
        gym_to_task = {g: t for t, g in enumerate(env.unwrapped.action_to_gym)}
        outcomes[backend] = [env.step(gym_to_task[a])[1:4] for a in actions]
    assert outcomes["fast"] == outcomes["gymnasium"]


def test_fast_is_the_default_and_keeps_the_observation_format():
    env = make_color_car_racing(bg_color="yellow", frame_stack=2)
    assert env.unwrapped.render_backend == "fast"
    obs, _ = env.reset(seed=0)
    assert obs.shape == (6, 84, 84) and obs.dtype == np.uint8
    raw, *_ = env.unwrapped.step(0)
    assert raw.shape == (96, 96, 3) and raw.dtype == np.uint8


def test_rgb_array_videos_still_work_with_the_fast_backend():
    env = gym.make("ColorCarRacing-v0", render_mode="rgb_array")
    env.reset(seed=0)
    env.step(3)
    frame = env.render()
    assert frame.shape == (400, 600, 3) and frame.dtype == np.uint8


@pytest.mark.parametrize("bad", ["pygame", "", "FAST", None])
def test_bad_backend_is_a_one_line_value_error_listing_accepted_backends(bad):
    with pytest.raises(ValueError) as err:
        gym.make("ColorCarRacing-v0", render_backend=bad)
    message = str(err.value)
    assert repr(bad) in message and "\n" not in message
    assert all(name in message for name in RENDER_BACKENDS)
