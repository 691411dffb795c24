import os

import numpy as np
import pytest

import envs.anchors as anchors
from envs.anchors import AnchorRecipe, WaypointDriver, load_anchor_set, record_trajectory, render_trajectory
from conftest import colour_change_residual
from envs.car_racing import ColorCarRacing
from envs.fast_render import RENDERER_VERSION

# A small recipe so that the mechanics are tested in seconds; the default set is tested below.
SMALL = AnchorRecipe(track_seeds=(2, 5), steps_per_track=80, num_anchors=48)


def test_driver_follows_the_track():
    """The scripted driver stays on the road and keeps collecting tiles on every default track."""
    for track_seed in AnchorRecipe().track_seeds:
        env = ColorCarRacing()
        env.reset(seed=track_seed)
        total = 0.0
        for _ in range(400):
            _, reward, terminated, _, _ = env.step_gym_action(WaypointDriver().act(env))
            total += reward
            assert not terminated
        assert env.tile_visited_count > 50 and total > 100


def test_trajectory_replays_are_bit_identical_and_differ_only_in_colour():
    actions = record_trajectory(2, 60)
    np.testing.assert_array_equal(actions, record_trajectory(2, 60))
    green = render_trajectory(2, actions, "green")
    np.testing.assert_array_equal(green, render_trajectory(2, actions, "green"))
    red = render_trajectory(2, actions, "red")
    assert np.any(red != green)
    assert colour_change_residual(green, red, "green", "red", channel_axis=1) <= 3.0


def test_far_view_renders_the_same_states_with_another_camera():
    actions = record_trajectory(2, 40)
    standard = render_trajectory(2, actions, "green", "near")
    far = render_trajectory(2, actions, "green", view="far")
    assert far.shape == standard.shape and np.abs(far.astype(int) - standard).mean() > 5


def test_set_identity_depends_on_the_recipe_only():
    assert SMALL.set_id == AnchorRecipe(track_seeds=(2, 5), steps_per_track=80, num_anchors=48).set_id
    assert len(SMALL.set_id) == 12
    others = {
        AnchorRecipe(track_seeds=(2, 6), steps_per_track=80, num_anchors=48).set_id,
        AnchorRecipe(track_seeds=(2, 5), steps_per_track=81, num_anchors=48).set_id,
        AnchorRecipe(track_seeds=(2, 5), steps_per_track=80, num_anchors=47).set_id,
        AnchorRecipe(track_seeds=(2, 5), steps_per_track=80, num_anchors=48, index_seed=1).set_id,
        AnchorRecipe(track_seeds=(2, 5), steps_per_track=80, num_anchors=48, driver=WaypointDriver(lookahead=5)).set_id,
    }
    assert SMALL.set_id not in others and len(others) == 5


def test_same_call_gives_the_same_frames_and_the_cache_is_used(tmp_path, monkeypatch):
    first = load_anchor_set("blue", recipe=SMALL, cache_dir=tmp_path)
    assert first.frames.shape == (48, 3, 84, 84) and first.frames.dtype == np.uint8
    assert first.set_id == SMALL.set_id and 0.0 <= first.steer_fraction <= 1.0
    (cache_file,) = tmp_path.glob("anchors-*.npz")

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a valid cache must not be rebuilt")

    monkeypatch.setattr(anchors, "build_anchor_set", no_rebuild)
    cached = load_anchor_set("blue", recipe=SMALL, cache_dir=tmp_path)
    np.testing.assert_array_equal(cached.frames, first.frames)
    np.testing.assert_array_equal(cached.steering, first.steering)
    monkeypatch.undo()

    rebuilt = anchors.build_anchor_set("blue", "near", SMALL)
    np.testing.assert_array_equal(rebuilt.frames, first.frames)
    assert cache_file.name == f"anchors-{SMALL.set_id}-r{RENDERER_VERSION}-blue-near.npz"
    assert first.source == f"built and cached in {cache_file}" and cached.source == f"loaded from {cache_file}"


def test_an_unwritable_cache_warns_and_the_set_is_still_used(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # tests run as root: chmod would not stop writes, a file in the path does
    anchor_set = load_anchor_set("green", recipe=SMALL, cache_dir=blocker / "cache")
    assert anchor_set.frames.shape == (48, 3, 84, 84) and anchor_set.source == "built (not cached)"
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("warning: cannot cache the anchor set in") and "\n" not in warning


def test_frames_cached_by_another_renderer_version_are_redrawn(tmp_path, monkeypatch):
    load_anchor_set("green", recipe=SMALL, cache_dir=tmp_path)
    monkeypatch.setattr(anchors, "RENDERER_VERSION", RENDERER_VERSION + 1)
    built = []
    build = anchors.build_anchor_set
    monkeypatch.setattr(anchors, "build_anchor_set", lambda *args: built.append(args) or build(*args))
    load_anchor_set("green", recipe=SMALL, cache_dir=tmp_path)
    assert len(built) == 1 and len(list(tmp_path.glob("anchors-*.npz"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper"])
def test_corrupt_cache_is_rebuilt_not_trusted(tmp_path, damage):
    original = load_anchor_set("green", recipe=SMALL, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("anchors-*.npz")
    if damage == "truncate":
        cache_file.write_bytes(cache_file.read_bytes()[:500])
    elif damage == "garbage":
        cache_file.write_bytes(os.urandom(2048))
    else:  # a valid npz whose frames no longer match their checksum
        with np.load(cache_file) as cached:
            content = dict(cached)
        content["frames"] = content["frames"].copy()
        content["frames"][0, 0, 0, 0] ^= 1
        np.savez(cache_file, **content)
    reloaded = load_anchor_set("green", recipe=SMALL, cache_dir=tmp_path)
    np.testing.assert_array_equal(reloaded.frames, original.frames)
    assert anchors._read_cache(cache_file, SMALL.set_id, SMALL.num_anchors) is not None  # rewritten valid


def test_anchor_sets_of_two_colours_hold_the_same_states(tmp_path):
    green = load_anchor_set("green", recipe=SMALL, cache_dir=tmp_path)
    pink = load_anchor_set("pink", recipe=SMALL, cache_dir=tmp_path)
    assert green.set_id == pink.set_id
    np.testing.assert_array_equal(green.steering, pink.steering)
    assert not np.array_equal(green.frames, pink.frames)
    assert colour_change_residual(green.frames, pink.frames, "green", "pink", channel_axis=1) <= 3.0


def test_bad_requests_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="'mauve'"):
        load_anchor_set("mauve", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="'sideways'"):
        load_anchor_set("green", view="sideways", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="exceeds"):
        load_anchor_set("green", recipe=AnchorRecipe(track_seeds=(2,), steps_per_track=10, num_anchors=11), cache_dir=tmp_path)


def test_default_anchor_set_covers_straights_and_turns():
    default = load_anchor_set("green")  # conftest points the cache at a per-session directory
    assert default.frames.shape == (3136, 3, 84, 84)
    assert default.set_id == AnchorRecipe().set_id
    assert 0.05 < default.steer_fraction < 0.6
