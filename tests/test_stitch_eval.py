"""stitch_eval.py: the refusal rules, checkpoint discovery, that a stitched agent is policy_B(encoder_A(x)) on
A's track, the outputs and their reproducibility, one-line errors, and an end-to-end run on two tiny
ppo_relative.py trainings (red, green) followed by latent_similarity.py."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import stitch_eval
from ddqn_relative import QNetwork
from envs.car_racing import make_color_car_racing
from ppo_relative import Encoder, Policy
from stitch_eval import Args, Job, UserError, expand_checkpoint_paths, run_episode, stitch_refusal

# Subprocesses: one OpenBLAS thread (see stitch_eval.py) and the session's anchor cache (conftest.py).
SUBPROCESS_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}


def save_checkpoint(path, bg_color, relative=True, seed=0, algorithm="ppo", task="standard", num_anchors=16, anchor_set_id="set-a"):
    """A checkpoint per docs/checkpoints.md with randomly initialised networks (random anchor embeddings)."""
    torch.manual_seed(seed)
    num_actions = 4 if task == "no_idle" else 5
    encoder = Encoder(1, relative, num_anchors)
    if relative:
        encoder.projection.update_anchors(torch.randn(num_anchors, 3136))
    policy = (QNetwork if algorithm == "ddqn" else Policy)(encoder.latent_dim, num_actions)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "algorithm": algorithm, "bg_color": bg_color, "task": task, "reward": "standard", "frame_stack": 1,
        "num_actions": num_actions, "relative": relative, "anchor_set_id": anchor_set_id if relative else None,
        "num_anchors": num_anchors if relative else None, "anchor_standardize": False,
        "latent_dim": encoder.latent_dim, "seed": seed, "global_step": 0, "args": {},
    }
    torch.save({"format": "r3l-agent-v1", "encoder": encoder.state_dict(), "policy": policy.state_dict(),
                "metadata": metadata, "training_state": {}}, path)
    return path


META = {"algorithm": "ppo", "bg_color": "green", "task": "standard", "frame_stack": 1, "num_actions": 5, "relative": True,
        "anchor_set_id": "set-a", "num_anchors": 64, "anchor_standardize": False, "latent_dim": 64, "seed": 1}
ABSOLUTE = {**META, "relative": False, "anchor_set_id": None, "num_anchors": None, "latent_dim": 3136}


@pytest.mark.parametrize("encoder, policy, reason", [
    (META, {**META, "bg_color": "red", "seed": 2, "algorithm": "ddqn"}, None),  # colour, seed and algorithm stitch
    (META, {**META, "task": "far"}, None),  # same action order: the policy drives the far camera's encoder
    (ABSOLUTE, {**ABSOLUTE, "bg_color": "red"}, None),  # allowed (and expected to fail at driving)
    (META, ABSOLUTE, "relative encoder with absolute policy"),
    (ABSOLUTE, META, "absolute encoder with relative policy"),
    (META, {**META, "anchor_set_id": "set-b"}, "different anchor_set_id (encoder set-a, policy set-b)"),
    (META, {**META, "num_anchors": 32, "latent_dim": 32}, "different num_anchors (encoder 64, policy 32)"),
    (META, {**META, "anchor_standardize": True}, "different anchor_standardize (encoder False, policy True)"),
    (META, {**META, "frame_stack": 4, "latent_dim": 256}, "different frame_stack (encoder 1, policy 4)"),
    (META, {**META, "task": "no_idle", "num_actions": 4}, "different num_actions (encoder 5, policy 4)"),
    (META, {**META, "task": "scrambled"}, "policy task 'scrambled' orders the actions differently from encoder task 'standard'"),
])
def test_refusal_rules(encoder, policy, reason):
    assert stitch_refusal(encoder, policy) == reason


def test_checkpoint_discovery(tmp_path):
    a = save_checkpoint(tmp_path / "run_a" / "agent.pt", "green")
    b = save_checkpoint(tmp_path / "run_b" / "agent.pt", "red")
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


def test_stitched_agent_is_policy_b_on_encoder_a_track(tmp_path):
    encoder_path = save_checkpoint(tmp_path / "a" / "agent.pt", "red", seed=1)
    policy_path = save_checkpoint(tmp_path / "b" / "agent.pt", "green", seed=2)
    result = run_episode(Job(str(encoder_path), str(policy_path), track_seed=7, episode=0, epsilon=0.0, seed=1, max_episode_steps=25))

    encoder, _, _ = stitch_eval.load_agent(encoder_path)
    _, policy, _ = stitch_eval.load_agent(policy_path)
    env = make_color_car_racing("red")  # the encoder's colour
    obs, _ = env.reset(seed=7)
    rewards = []
    with torch.no_grad():
        for _ in range(25):
            obs, reward, terminated, truncated, _ = env.step(int(policy.greedy_action(encoder(torch.from_numpy(obs)[None]))[0]))
            rewards.append(reward)
            if terminated or truncated:
                break
    assert result["length"] == len(rewards)
    assert result["episode_return"] == pytest.approx(sum(rewards))
    assert result["max_return"] == pytest.approx(np.cumsum(rewards).max())


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_outputs_and_refusals(tmp_path, capsys):
    runs = tmp_path / "runs"
    save_checkpoint(runs / "green_rel" / "agent.pt", "green", seed=1)
    save_checkpoint(runs / "red_rel" / "agent.pt", "red", seed=2)
    save_checkpoint(runs / "green_abs" / "agent.pt", "green", relative=False, seed=1)
    save_checkpoint(runs / "blue_rel_other_anchors" / "agent.pt", "blue", seed=3, anchor_set_id="set-b")
    stitch_eval.main(Args(checkpoints=(str(runs / "*"),), num_tracks=2, max_episode_steps=6, workers=1, out_dir=str(tmp_path / "out")))
    printed = capsys.readouterr().out

    # 16 pairs, 6 evaluated: green/red relative among themselves, green absolute and blue with themselves
    assert "4 checkpoints, 6 pairs evaluated x 2 tracks x 1 episodes = 12 episodes, 10 pairs refused" in printed
    refusals = [line for line in printed.splitlines() if line.startswith("refused:")]
    assert len(refusals) == len(set(refusals)) == 10
    assert "refused: encoder green Rel + policy green Abs: relative encoder with absolute policy" in refusals
    assert "refused: encoder green Abs + policy red Rel: absolute encoder with relative policy" in refusals
    assert "refused: encoder blue Rel + policy red Rel: different anchor_set_id (encoder set-b, policy set-a)" in refusals

    out = tmp_path / "out"
    table = (out / "stitch_table.md").read_text()
    assert table in printed
    header = "| encoder \\ policy | green Rel | green Abs | red Rel | blue Rel |"
    assert table.count(header) == 2  # max return, then episode return
    green_row = next(line for line in table.splitlines() if line.startswith("| green |"))
    cells = [c.strip() for c in green_row.strip("|").split("|")][1:]
    assert "±" in cells[0] and "±" in cells[1] and "±" in cells[2] and cells[3] == "n/a"
    blue_row = next(line for line in table.splitlines() if line.startswith("| blue |"))
    cells = [c.strip() for c in blue_row.strip("|").split("|")][1:]
    assert cells[:3] == ["n/a", "–", "n/a"] and "±" in cells[3]  # –: there is no absolute blue encoder
    rows = read_csv(out / "stitch_episodes.csv")
    assert len(rows) == 12 and {r["track_seed"] for r in rows} == {"1000", "1001"}
    assert all(float(r["max_return"]) >= float(r["episode_return"]) and int(r["length"]) <= 6 for r in rows)
    results = json.loads((out / "stitch_results.json").read_text())
    statuses = [p["status"] for p in results["pairs"]]
    assert statuses.count("evaluated") == 6 and statuses.count("refused") == 10
    assert (out / "stitch_heatmap.png").stat().st_size > 10_000



@pytest.mark.parametrize("overrides, message", [
    (dict(num_tracks=0), "--num-tracks 0 is invalid; accepted: an integer >= 1"),
    (dict(epsilon=1.5), "--epsilon 1.5 is invalid; accepted: a probability in [0, 1]"),
    (dict(episodes_per_track=3), "--episodes-per-track 3 with --epsilon 0 repeats one deterministic episode"),
    (dict(workers=0), "--workers 0 is invalid"),
])
def test_bad_arguments_are_refused(tmp_path, overrides, message):
    path = save_checkpoint(tmp_path / "run" / "agent.pt", "green")
    with pytest.raises(UserError) as error:
        stitch_eval.main(Args(checkpoints=(str(path),), out_dir=str(tmp_path / "out"), **overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_checkpoints_fail_in_one_line(tmp_path, repo_root):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    good = save_checkpoint(tmp_path / "run" / "agent.pt", "green")
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["metadata"]["algorithm"] = "sac"
    torch.save(checkpoint, tmp_path / "sac.pt")
    with pytest.raises(UserError, match="unknown algorithm 'sac'; accepted: ppo, repaint, ddqn"):
        stitch_eval.main(Args(checkpoints=(str(good), str(tmp_path / "sac.pt"))))
    proc = subprocess.run([sys.executable, "stitch_eval.py", str(good), str(tmp_path / "notes.pt")], cwd=repo_root,
                          capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: checkpoint ") and "is not a loadable torch file" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def train_tiny(repo_root, runs_dir, bg_color):
    return subprocess.Popen(
        [sys.executable, "ppo_relative.py", "--bg-color", bg_color, "--total-timesteps", "64", "--num-envs", "1",
         "--num-steps", "64", "--num-anchors", "16", "--anchor-steps-per-track", "10", "--eval-episodes", "0",
         "--runs-dir", str(runs_dir)],
        cwd=repo_root, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_end_to_end_two_colours(tmp_path, repo_root):
    """Two tiny real trainings (red, green) -> stitch table, CSV, JSON, heatmap -> similarity figures."""
    runs = tmp_path / "runs"
    trainings = [train_tiny(repo_root, runs, colour) for colour in ("red", "green")]
    for training in trainings:
        output, _ = training.communicate(timeout=600)
        assert training.returncode == 0, output
    out = tmp_path / "stitch"
    proc = subprocess.run([sys.executable, "stitch_eval.py", str(runs / "*"), "--num-tracks", "2", "--max-episode-steps", "20",
                           "--workers", "2", "--out-dir", str(out)],
                          cwd=repo_root, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "2 checkpoints, 4 pairs evaluated x 2 tracks x 1 episodes = 8 episodes, 0 pairs refused" in proc.stdout
    assert "| encoder \\ policy | green Rel | red Rel |" in proc.stdout
    assert len(read_csv(out / "stitch_episodes.csv")) == 8
    assert (out / "stitch_heatmap.png").is_file() and (out / "stitch_table.md").is_file()
    pairs = json.loads((out / "stitch_results.json").read_text())["pairs"]
    assert {(p["encoder"], p["policy"]) for p in pairs} == {(a, b) for a in ("red", "green") for b in ("red", "green")}
    # Same seeds -> same numbers, in 2 worker processes (above) or in this one.
    stitch_eval.main(Args(checkpoints=(str(runs / "*"),), num_tracks=2, max_episode_steps=20, workers=1, out_dir=str(tmp_path / "serial")))
    assert read_csv(tmp_path / "serial" / "stitch_episodes.csv") == read_csv(out / "stitch_episodes.csv")

    out = tmp_path / "similarity"
    proc = subprocess.run([sys.executable, "latent_similarity.py", str(runs / "*"), "--num-steps", "60", "--out-dir", str(out)],
                          cwd=repo_root, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "similarity_summary.json").read_text())
    (pair,) = summary["pairs"]
    assert {"absolute", "relative"} <= set(pair) and pair["relative_note"] is None
    assert all(-1 <= pair[k][m] <= 1 for k in ("absolute", "relative") for m in ("diagonal", "off_diagonal"))
    assert f"{pair['relative']['retrieval']:>9.3f}" in proc.stdout
    assert (out / "similarity_0_1.png").stat().st_size > 10_000


def test_labels_pair_relative_and_absolute_runs_of_one_experiment():
    def meta(colour, exp_name, relative=True, algorithm="ppo"):
        return {"bg_color": colour, "task": "standard", "algorithm": algorithm, "seed": 1, "relative": relative, "args": {"exp_name": exp_name}}

    metas = [meta("green", "mine"), meta("green", "mine", relative=False), meta("green", "theirs"), meta("red", "mine"),
             meta("green", "x", algorithm="ddqn")]
    assert stitch_eval.checkpoint_labels(metas, ["a", "b", "c", "d", "e"]) == [
        "green ppo mine", "green ppo mine", "green ppo theirs", "red ppo", "green ddqn"]
    assert stitch_eval.checkpoint_labels([meta("red", "x"), meta("red", "x")], ["a", "b"]) == ["red (a)", "red (b)"]
    seeds = [{**meta("red", "x"), "seed": seed} for seed in (1, 2)] + [meta("red", "x", relative=False)]
    assert stitch_eval.checkpoint_labels(seeds, ["a", "b", "c"]) == ["red s1", "red s2", "red s1"]
