"""stitch_eval.py: the pairing rules (only latent reasons refuse), what a pair is played on (encoder's colour and
view, policy's task), action mapping under --play-on encoder, latent space translation, pooling of seeds,
cross-algorithm pairs, the outputs and their reproducibility, one-line errors, and an end-to-end run on two tiny
ppo_relative.py trainings (red, green) followed by latent_similarity.py."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import random_orthogonal, save_agent_checkpoint

import stitch_eval
from envs.anchors import AnchorRecipe, load_anchor_set
from envs.car_racing import make_color_car_racing
from stitch_eval import Args, Job, UserError, action_map, expand_checkpoint_paths, played_on, run_episode, stitch_refusal

# Subprocesses: one OpenBLAS thread (see stitch_eval.py) and the session's anchor cache (conftest.py).
SUBPROCESS_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
IDENTITY = (0, 1, 2, 3, 4)

META = {"algorithm": "ppo", "bg_color": "green", "view": "near", "task": "standard", "reward": "standard", "frame_stack": 1,
        "num_actions": 5, "relative": True, "anchor_set_id": "set-a", "num_anchors": 64, "anchor_standardize": False,
        "latent_dim": 64, "seed": 1}  # fmt: skip
ABSOLUTE = {**META, "relative": False, "anchor_set_id": None, "num_anchors": None, "latent_dim": 3136}


@pytest.mark.parametrize(
    "encoder, policy, reason",
    [
        (META, {**META, "bg_color": "red", "seed": 2, "algorithm": "ddqn"}, None),  # colour, seed and algorithm stitch
        (META, {**META, "view": "far"}, None),
        (META, {**META, "task": "slow"}, None),
        (META, {**META, "task": "scrambled"}, None),  # an encoder produces no actions: tasks never refuse a pair
        (META, {**META, "task": "no_idle", "num_actions": 4}, None),
        (ABSOLUTE, {**ABSOLUTE, "bg_color": "red"}, None),  # allowed (and expected to fail at driving)
        (META, ABSOLUTE, "relative encoder with absolute policy (stitchable only with --translate)"),
        (ABSOLUTE, META, "absolute encoder with relative policy (stitchable only with --translate)"),
        (META, {**META, "anchor_set_id": "set-b"}, "different anchor_set_id (encoder set-a, policy set-b)"),
        (META, {**META, "num_anchors": 32, "latent_dim": 32}, "different num_anchors (encoder 64, policy 32)"),
        (META, {**META, "anchor_standardize": True}, "different anchor_standardize (encoder False, policy True)"),
        (
            META,
            {**META, "frame_stack": 4, "latent_dim": 256},
            "different frame_stack (encoder 1, policy 4): the policy's input layout",
        ),
    ],
)
def test_refusal_rules_name_only_latent_reasons(encoder, policy, reason):
    assert stitch_refusal(encoder, policy) == reason


def test_translated_pairs_need_only_the_input_layout():
    assert stitch_refusal(META, ABSOLUTE, translated=True, method="affine") is None
    assert stitch_refusal(ABSOLUTE, {**ABSOLUTE, "bg_color": "red"}, translated=True) is None
    assert "procrustes maps equal sizes" in stitch_refusal(META, ABSOLUTE, translated=True, method="procrustes")
    assert "frame_stack" in stitch_refusal(ABSOLUTE, {**ABSOLUTE, "frame_stack": 2}, translated=True)


def test_played_on_takes_the_encoders_visuals_and_the_chosen_agents_task():
    encoder = {**META, "bg_color": "red", "view": "far"}
    policy = {**META, "task": "slow"}
    assert played_on(encoder, policy, "policy") == {"bg_color": "red", "view": "far", "task": "slow", "reward": "standard"}
    assert played_on(encoder, policy, "encoder") == {
        "bg_color": "red",
        "view": "far",
        "task": "standard",
        "reward": "standard",
    }


def test_action_map_matches_gymnasium_action_names():
    assert action_map("scrambled", "scrambled") == IDENTITY
    assert action_map("scrambled", "standard") == (1, 2, 3, 4, 0)  # scrambled's "left" is standard's action 1
    assert action_map("no_idle", "standard") == (1, 2, 3, 4)
    assert action_map("standard", "no_idle") == "policy task 'standard' has action(s) nothing that task 'no_idle' lacks"


def test_translation_undoes_an_orthogonal_transform_scale_and_shift():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(300, 24, generator=generator, dtype=torch.float64)
    rotation = random_orthogonal(24, generator)
    target = 3.0 * source @ rotation + torch.randn(24, generator=generator, dtype=torch.float64)
    for method, anchors in (("procrustes", 300), ("procrustes", 20), ("affine", 300)):  # 20 < 24: the thin solution
        translation = stitch_eval.fit_translation(source[:anchors], target[:anchors], method)
        # fewer anchors than dimensions: exact on the anchors' span (here the anchors themselves), not beyond it
        fresh = torch.randn(7, 24, generator=generator, dtype=torch.float64) if anchors > 24 else source[:7]
        expected = 3.0 * fresh @ rotation + (target[0] - 3.0 * source[0] @ rotation)
        torch.testing.assert_close(stitch_eval.apply_translation(translation, fresh), expected, rtol=1e-9, atol=1e-9)
    # frame stacks: the per-frame map is applied to every frame's block
    translation = stitch_eval.fit_translation(source, target)
    stacked = torch.cat([source[:5], source[5:10]], dim=1)
    expected = torch.cat([target[:5], target[5:10]], dim=1)
    torch.testing.assert_close(
        stitch_eval.apply_translation(translation, stacked, frame_stack=2), expected, rtol=1e-9, atol=1e-9
    )


def test_checkpoint_discovery(tmp_path):
    a = save_agent_checkpoint(tmp_path / "run_a" / "agent.pt", "green")
    b = save_agent_checkpoint(tmp_path / "run_b" / "agent.pt", "red")
    (tmp_path / "tensorboard_only").mkdir()
    assert expand_checkpoint_paths([str(tmp_path / "*")]) == [a, b]  # a glob skips directories without agent.pt
    assert expand_checkpoint_paths([str(tmp_path / "run_b"), str(a), str(tmp_path / "run_*")]) == [b, a]
    with pytest.raises(UserError, match="does not exist"):
        expand_checkpoint_paths([str(tmp_path / "tensorboard_only")])
    with pytest.raises(UserError, match="matches nothing"):
        expand_checkpoint_paths([str(tmp_path / "nope*")])
    with pytest.raises(UserError, match="no checkpoint: none found in .*tensorboard_"):
        expand_checkpoint_paths([str(tmp_path / "tensorboard_*")])
    with pytest.raises(UserError, match="no checkpoint: none given"):
        expand_checkpoint_paths([])


def job(encoder_path, policy_path, task="standard", actions=IDENTITY, bg_color="red", view="near", epsilon=0.0, steps=25):
    return Job(str(encoder_path), str(policy_path), bg_color=bg_color, view=view, task=task, reward="standard",
               actions=actions, track_seed=7, episode=0, epsilon=epsilon, seed=1, max_episode_steps=steps)  # fmt: skip


def test_stitched_agent_is_policy_b_on_encoder_a_track(tmp_path):
    encoder_path = save_agent_checkpoint(tmp_path / "a" / "agent.pt", "red", seed=1)
    policy_path = save_agent_checkpoint(tmp_path / "b" / "agent.pt", "green", seed=2)
    result = run_episode(job(encoder_path, policy_path))

    encoder, _, _ = stitch_eval.load_agent(encoder_path)
    _, policy, _ = stitch_eval.load_agent(policy_path)
    env = make_color_car_racing("red")  # the encoder's colour
    obs, _ = env.reset(seed=7)
    rewards = []
    with torch.no_grad():
        for _ in range(25):
            obs, reward, terminated, truncated, _ = env.step(
                int(policy.greedy_action(encoder(torch.from_numpy(obs)[None]))[0])
            )
            rewards.append(reward)
            if terminated or truncated:
                break
    assert result["length"] == len(rewards)
    assert result["episode_return"] == pytest.approx(sum(rewards))
    assert result["max_return"] == pytest.approx(np.cumsum(rewards).max())


def test_red_encoder_with_green_slow_scrambled_and_no_idle_policies(tmp_path):
    """Played on red with the policy's task: the live environment's task, action set and reward rule."""
    encoder_path = save_agent_checkpoint(tmp_path / "red" / "agent.pt", "red", seed=1)
    runs = {task: save_agent_checkpoint(tmp_path / task / "agent.pt", "green", seed=2, task=task)
            for task in ("standard", "slow", "scrambled", "no_idle")}  # fmt: skip
    encoder_meta = stitch_eval.load_agent(encoder_path)[2]
    results = {}
    for task, path in runs.items():
        policy_meta = stitch_eval.load_agent(path)[2]
        play = played_on(encoder_meta, policy_meta, "policy")
        assert play == {"bg_color": "red", "view": "near", "task": task, "reward": "standard"}
        actions = action_map(task, play["task"])
        results[task] = run_episode(job(encoder_path, path, task=task, actions=actions, epsilon=1.0, steps=30))
        assert results[task]["env_task"] == task
    assert len(results["no_idle"]["action_counts"]) == 4 and len(results["scrambled"]["action_counts"]) == 5
    # the same seeded random actions drive the same car under standard and slow (same action order): the
    # returns differ by exactly the standard task's -0.1 per frame, which slow does not charge
    assert results["slow"]["length"] == results["standard"]["length"] == 30
    assert results["slow"]["episode_return"] - results["standard"]["episode_return"] == pytest.approx(3.0)
    # --play-on encoder: the scrambled policy's actions are renamed into the standard task's numbering
    scrambled_on_standard = run_episode(job(encoder_path, runs["scrambled"], actions=action_map("scrambled", "standard"),
                                            epsilon=1.0, steps=30))  # fmt: skip
    assert scrambled_on_standard["env_task"] == "standard"
    counts = results["scrambled"]["action_counts"]
    assert scrambled_on_standard["action_counts"] == [counts[4], counts[0], counts[1], counts[2], counts[3]]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_outputs_pooling_and_refusals(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    save_agent_checkpoint(runs / "green_rel_s1" / "agent.pt", "green", seed=1)
    save_agent_checkpoint(runs / "green_rel_s2" / "agent.pt", "green", seed=2)
    save_agent_checkpoint(runs / "red_rel_s3" / "agent.pt", "red", seed=3)
    save_agent_checkpoint(runs / "red_slow_rel_s4" / "agent.pt", "green", seed=4, task="slow")
    save_agent_checkpoint(runs / "green_abs_s1" / "agent.pt", "green", relative=False, seed=1)
    save_agent_checkpoint(runs / "blue_rel_other_anchors" / "agent.pt", "blue", seed=5, anchor_set_id="set-b")
    stitch_eval.main(
        Args(checkpoints=(str(runs / "*"),), num_tracks=1, max_episode_steps=4, workers=1, out_dir=str(tmp_path / "out"))
    )
    printed = capsys.readouterr().out

    # 36 pairs: the 4 set-a relative runs among themselves (16), the absolute and the blue run with themselves
    assert "6 checkpoints, 18 pairs evaluated x 1 track x 1 episode = 18 episodes, 18 pairs refused" in printed
    refusals = [line for line in printed.splitlines() if line.startswith("refused:")]
    assert len(refusals) == 18 and all("task" not in line for line in refusals)
    out = tmp_path / "out"
    table = (out / "stitch_table.md").read_text()
    assert table in printed
    assert "## relative: maximum return during the episode" in table and "## absolute: episode return" in table
    header = "| encoder \\ policy | green standard | green slow | red standard | blue standard |"
    assert header in table
    green_row = next(line for line in table.splitlines() if line.startswith("| green standard |"))
    cells = [c.strip() for c in green_row.strip("|").split("|")][1:]
    # green -> green pools the two different-seed pairs (s1 -> s2, s2 -> s1); the own agents are not stitching
    assert cells[0].endswith("(2 pairs)") and cells[1].endswith("(2 pairs)") and cells[3] == "n/a"
    blue_row = next(line for line in table.splitlines() if line.startswith("| blue standard |"))
    assert blue_row.rstrip().endswith("(1 pair own) |")  # one blue run: its own agent is the reference
    played = next(
        line for line in table.split("played on (colour · view · task)")[1].splitlines() if line.startswith("| green standard")
    )
    assert "green · near · slow" in played  # the green encoder with the slow policy played the slow task
    results = json.loads((out / "stitch_results.json").read_text())
    slow_pair = next(p for p in results["pairs"] if p["encoder_path"].endswith("green_rel_s1/agent.pt")
                     and p["policy_path"].endswith("red_slow_rel_s4/agent.pt"))  # fmt: skip
    assert slow_pair["played_on"] == {"bg_color": "green", "view": "near", "task": "slow", "reward": "standard"}
    assert slow_pair["episodes"][0]["env_task"] == "slow"
    merit = results["figures_of_merit"]["relative"]
    assert merit["diagonal_max_return"] is not None and set(merit) >= {"off-diagonal", "cross-visual", "cross-task"}
    rows = read_csv(out / "stitch_episodes.csv")
    assert len(rows) == 18 and all(int(r["length"]) <= 4 for r in rows)
    assert (out / "stitch_heatmap.png").stat().st_size > 10_000

    # --translate: absolute pairs are played raw and through a map fitted on anchor states (a small anchor set
    # here); relative (16-d) <-> absolute (3136-d) pairs cannot be maps of equal size
    small = AnchorRecipe(track_seeds=(2,), steps_per_track=40, num_anchors=32)
    monkeypatch.setattr(
        stitch_eval, "load_anchor_set", lambda bg_color, view: load_anchor_set(bg_color, view=view, recipe=small)
    )
    extra = save_agent_checkpoint(tmp_path / "extra" / "green_abs_s6" / "agent.pt", "green", relative=False, seed=6)
    stitch_eval.main(Args(checkpoints=(str(runs / "*"), str(extra)), num_tracks=1, max_episode_steps=4, workers=1,
                          out_dir=str(tmp_path / "out2"), exclude_same_seed=True, translate=True))  # fmt: skip
    results = json.loads((tmp_path / "out2" / "stitch_results.json").read_text())
    translated = [p for p in results["pairs"] if p["translated"]]
    assert all("absolute" in p["block"] for p in translated)
    evaluated = {(p["encoder_path"][-21:], p["policy_path"][-21:]) for p in translated if p["status"] == "evaluated"}
    assert evaluated == {
        ("green_abs_s1/agent.pt", "green_abs_s6/agent.pt"),
        ("green_abs_s6/agent.pt", "green_abs_s1/agent.pt"),
    }
    assert all("procrustes maps equal sizes" in p["reason"] for p in translated if p["status"] == "refused")
    assert "absolute + translation" in results["figures_of_merit"]


def test_cross_algorithm_pairs_play_like_any_other(tmp_path):
    ppo = save_agent_checkpoint(tmp_path / "ppo" / "agent.pt", "green", seed=1)
    ddqn = save_agent_checkpoint(tmp_path / "ddqn" / "agent.pt", "red", seed=2, algorithm="ddqn")
    stitch_eval.main(
        Args(checkpoints=(str(ppo), str(ddqn)), num_tracks=1, max_episode_steps=5, workers=1, out_dir=str(tmp_path / "out"))
    )
    pairs = json.loads((tmp_path / "out" / "stitch_results.json").read_text())["pairs"]
    assert all(p["status"] == "evaluated" and p["episodes"][0]["length"] == 5 for p in pairs)
    cross = next(p for p in pairs if p["encoder_path"] == str(ppo) and p["policy_path"] == str(ddqn))
    assert cross["played_on"]["bg_color"] == "green"


@pytest.mark.parametrize("overrides, message", [
    (dict(num_tracks=0), "--num-tracks 0 is invalid; accepted: an integer >= 1"),
    (dict(epsilon=1.5), "--epsilon 1.5 is invalid; accepted: a probability in [0, 1]"),
    (dict(episodes_per_track=3), "--episodes-per-track 3 with --epsilon 0 repeats one deterministic episode"),
    (dict(workers=0), "--workers 0 is invalid"),
    (dict(play_on="both"), "--play-on 'both' is invalid; accepted: policy or encoder"),
    (dict(translate_method="cca"), "--translate-method 'cca' is invalid; accepted: procrustes or affine"),
])  # fmt: skip
def test_bad_arguments_are_refused(tmp_path, overrides, message):
    path = save_agent_checkpoint(tmp_path / "run" / "agent.pt", "green")
    with pytest.raises(UserError) as error:
        stitch_eval.main(Args(checkpoints=(str(path),), out_dir=str(tmp_path / "out"), **overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unwritable_out_dir_fails_before_any_episode(tmp_path, capsys):
    path = save_agent_checkpoint(tmp_path / "run" / "agent.pt", "green")
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(UserError, match="--out-dir .* is not a writable folder"):
        stitch_eval.main(Args(checkpoints=(str(path),), out_dir=str(tmp_path / "file" / "out")))
    assert "episodes" not in capsys.readouterr().out


def test_bad_checkpoints_fail_in_one_line(tmp_path, repo_root):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    good = save_agent_checkpoint(tmp_path / "run" / "agent.pt", "green")
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["metadata"]["algorithm"] = "sac"
    torch.save(checkpoint, tmp_path / "sac.pt")
    with pytest.raises(UserError, match="unknown algorithm 'sac'; accepted: ppo, repaint, ddqn"):
        stitch_eval.main(Args(checkpoints=(str(good), str(tmp_path / "sac.pt"))))
    proc = subprocess.run([sys.executable, "stitch_eval.py", str(good), str(tmp_path / "notes.pt")], cwd=repo_root,
                          capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "is not a checkpoint of this collection" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_checkpoints_without_a_view_still_load(tmp_path):
    path = save_agent_checkpoint(tmp_path / "old" / "agent.pt", "green", task="far")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["metadata"]["view"]
    torch.save(checkpoint, path)
    meta = stitch_eval.load_agent(path)[2]
    assert (meta["view"], meta["task"]) == ("far", "standard")


def train_tiny(repo_root, runs_dir, bg_color, seed):
    return subprocess.Popen(
        [sys.executable, "ppo_relative.py", "--bg-color", bg_color, "--total-timesteps", "64", "--num-envs", "1",
         "--num-steps", "64", "--num-anchors", "16", "--anchor-steps-per-track", "10", "--eval-episodes", "0",
         "--seed", str(seed), "--runs-dir", str(runs_dir)],
        cwd=repo_root, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_end_to_end_two_colours(tmp_path, repo_root):
    """Two tiny real trainings (red, green) -> stitch table, CSV, JSON, heatmap -> similarity figures."""
    runs = tmp_path / "runs"
    trainings = [train_tiny(repo_root, runs, colour, seed) for colour, seed in (("red", 1), ("green", 2))]
    for training in trainings:
        output, _ = training.communicate(timeout=600)
        assert training.returncode == 0, output
    out = tmp_path / "stitch"
    proc = subprocess.run([sys.executable, "stitch_eval.py", str(runs / "*"), "--num-tracks", "2", "--max-episode-steps", "20",
                           "--workers", "2", "--out-dir", str(out)],
                          cwd=repo_root, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 checkpoints, 4 pairs evaluated x 2 tracks x 1 episode = 8 episodes, 0 pairs refused" in proc.stdout
    assert "| encoder \\ policy | green | red |" in proc.stdout
    assert len(read_csv(out / "stitch_episodes.csv")) == 8
    assert (out / "stitch_heatmap.png").is_file() and (out / "stitch_table.md").is_file()
    pairs = json.loads((out / "stitch_results.json").read_text())["pairs"]
    assert {(p["encoder"], p["policy"]) for p in pairs} == {(a, b) for a in ("red", "green") for b in ("red", "green")}
    # Same seeds -> same numbers, in 2 worker processes (above) or in this one.
    stitch_eval.main(
        Args(checkpoints=(str(runs / "*"),), num_tracks=2, max_episode_steps=20, workers=1, out_dir=str(tmp_path / "serial"))
    )
    assert read_csv(tmp_path / "serial" / "stitch_episodes.csv") == read_csv(out / "stitch_episodes.csv")

    out = tmp_path / "similarity"
    proc = subprocess.run(
        [sys.executable, "latent_similarity.py", str(runs / "*"), "--num-steps", "60", "--out-dir", str(out)],
        cwd=repo_root,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "similarity_summary.json").read_text())
    (pair,) = summary["pairs"]
    assert {"absolute", "relative"} <= set(pair) and pair["relative_note"] is None
    assert all(-1 <= pair[k][m] <= 1 for k in ("absolute", "relative") for m in ("diagonal", "off_diagonal"))
    assert f"{pair['relative']['retrieval']:>9.3f}" in proc.stdout
    assert (out / "similarity_0_1.png").stat().st_size > 10_000


def test_config_labels_leave_out_the_seed_and_name_what_varies():
    def meta(colour, task="standard", algorithm="ppo", seed=1, view="near"):
        return {"bg_color": colour, "view": view, "task": task, "algorithm": algorithm, "reward": "standard", "seed": seed}

    assert stitch_eval.config_labels([meta("green"), meta("green", seed=2), meta("red")]) == ["green", "green", "red"]
    assert stitch_eval.config_labels([meta("green"), meta("green", task="slow"), meta("red", algorithm="ddqn")]) == [
        "green standard ppo",
        "green slow ppo",
        "red standard ddqn",
    ]
    assert stitch_eval.config_labels([meta("green"), meta("green", view="far")]) == ["green near", "green far"]


def test_videos_are_readable_gifs_of_the_expected_size_and_length(tmp_path):
    import imageio.v3 as iio

    runs = tmp_path / "runs"
    save_agent_checkpoint(runs / "green" / "agent.pt", "green", seed=1)
    save_agent_checkpoint(runs / "red" / "agent.pt", "red", seed=2)
    save_agent_checkpoint(runs / "blue" / "agent.pt", "blue", seed=3, anchor_set_id="set-b")  # refused with the others
    out = tmp_path / "out"
    stitch_eval.main(Args(checkpoints=(str(runs / "*"),), num_tracks=2, max_episode_steps=9, workers=1, out_dir=str(out),
                          videos=True))  # fmt: skip
    videos = out / "videos"
    pair_gifs = sorted(videos.glob("pair_*.gif"))
    assert len(pair_gifs) == 5  # 2 x 2 set-a pairs and blue with itself; refused pairs have no episode to film
    frames = iio.imread(pair_gifs[0], index=None)
    assert frames.shape == (5, 84 * stitch_eval.VIDEO_SCALE, 84 * stitch_eval.VIDEO_SCALE, 3)  # steps 0, 2, ..., 8 of 9
    (mosaic,) = videos.glob("mosaic_*.gif")
    frames = iio.imread(mosaic, index=None)
    tile, band = 84 * stitch_eval.TILE_SCALE, stitch_eval.LABEL_HEIGHT
    assert frames.shape == (4, band + 3 * (band + tile), 3 * tile, 3)  # steps 0, 3, 6, 9
    assert not np.array_equal(frames[0], frames[-1])  # the tiles play
    assert mosaic.stat().st_size < 5_000_000
