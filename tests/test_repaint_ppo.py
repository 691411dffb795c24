"""repaint_ppo.py: the REPAINT pieces on hand-computed batches, teacher refusal, every --transfer mode, and a
learning comparison on the gridworld. Training runs execute the script in-process (runpy) to spare the
interpreter start-up; one test runs it as a subprocess for the command-line error contract."""

import contextlib
import io
import math
import re
import runpy
import subprocess
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
import torch

import repaint_ppo
from repaint_ppo import (
    beta_at,
    clipped_surrogate_loss,
    compute_gae,
    kickstarting_cross_entropy,
    select_teacher_samples,
)

ITERATION = re.compile(r"^iteration (\d+)/\d+ step \d+(?: return (\S+))?(?: beta_k (\S+))?(?: kept (\S+))?", re.M)
TINY = ["--num-envs", "2", "--num-steps", "16", "--total-timesteps", "64", "--hidden-size", "16"]


def run_script(argv, tmp_path):
    """Run repaint_ppo.py in this process; returns (stdout, checkpoint path)."""
    out = io.StringIO()
    old_argv = sys.argv
    sys.argv = ["repaint_ppo.py", "--runs-dir", str(tmp_path)] + list(argv)
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(repaint_ppo.__file__, run_name="__main__")
    finally:
        sys.argv = old_argv
    text = out.getvalue()
    return text, re.search(r"checkpoint saved to (\S+)", text).group(1)


def returns_per_iteration(text):
    return [float(m.group(2)) if m.group(2) else math.nan for m in ITERATION.finditer(text)]


def expect_refusal(argv, tmp_path, capsys, *needles):
    with pytest.raises(SystemExit) as exit_info:
        run_script(argv, tmp_path)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and err.startswith("repaint_ppo.py: error:")
    for needle in needles:
        assert needle in err
    return err


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A good gridworld teacher: plain PPO on the "similar" task (goal one cell from the target's)."""
    text, path = run_script(["--task", "similar", "--total-timesteps", "8192", "--learning-rate", "0.002", "--seed", "7"],
                            tmp_path_factory.mktemp("teacher"))
    assert np.mean(returns_per_iteration(text)[-4:]) > 0.85  # near the best return 0.89 of the similar task
    return path


# ---- the pieces, on hand-computed batches


def test_selection_keeps_valid_teacher_samples_with_advantage_at_least_zeta():
    advantages = torch.tensor([[0.5, -0.1, 0.0], [2.0, 0.3, -3.0]])
    valid = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    assert select_teacher_samples(advantages, valid, 0.0).tolist() == [[True, False, True], [False, True, False]]
    assert select_teacher_samples(advantages, valid, 0.4).tolist() == [[True, False, False], [False, False, False]]
    assert select_teacher_samples(advantages, valid, -5.0).sum() == 5  # every valid sample


def test_clipped_surrogate_on_student_samples_is_minus_l_clip():
    # ratios 1.5, 0.5, 1.0 with advantages 1, 1, -2 and eps 0.2:
    # min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; min(-2, -2) = -2 -> L_clip = -0.3 / 3 = -0.1, loss = +0.1
    old = torch.log(torch.tensor([0.2, 0.4, 0.3]))
    new = torch.log(torch.tensor([0.3, 0.2, 0.3])).requires_grad_()
    loss = clipped_surrogate_loss(new, old, torch.tensor([1.0, 1.0, -2.0]), 0.2)
    assert loss.item() == pytest.approx(0.1, abs=1e-6)
    loss.backward()
    # the clipped first sample gives no gradient; the others give -A * ratio / 3
    assert new.grad.tolist() == pytest.approx([0.0, -0.5 / 3, 2.0 / 3], abs=1e-6)


def test_instance_loss_uses_the_ratio_to_the_teacher_and_clips_it():
    # pi_theta / pi_teacher = 0.6 / 0.3 = 2 (clipped to 1.2) with A = 0.5 -> 0.6;
    # 0.1 / 0.4 = 0.25 with A = 2 -> min(0.5, 1.6) = 0.5. L_ins = 0.55, loss = -0.55.
    student = torch.log(torch.tensor([0.6, 0.1]))
    teacher = torch.log(torch.tensor([0.3, 0.4]))
    assert clipped_surrogate_loss(student, teacher, torch.tensor([0.5, 2.0]), 0.2).item() == pytest.approx(-0.55, abs=1e-6)


def test_kickstarting_cross_entropy_hand_computed():
    teacher_logits = torch.log(torch.tensor([[0.25, 0.75]]))
    uniform = torch.zeros(1, 2, requires_grad=True)
    ce = kickstarting_cross_entropy(teacher_logits, uniform)
    assert ce.item() == pytest.approx(math.log(2.0), abs=1e-6)
    ce.backward()  # d CE / d logits = softmax(student) - pi_teacher: descending moves towards the teacher
    assert uniform.grad.tolist()[0] == pytest.approx([0.25, -0.25], abs=1e-6)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert kickstarting_cross_entropy(teacher_logits, teacher_logits).item() == pytest.approx(entropy, abs=1e-6)


def test_beta_schedules():
    assert [beta_at(k, 2.0, "exponential", 0.5, 10) for k in (1, 2, 3)] == [2.0, 1.0, 0.5]
    assert [beta_at(k, 2.0, "linear", 0.5, 4) for k in (1, 3, 5, 9)] == [2.0, 1.0, 0.0, 0.0]
    assert [beta_at(k, 2.0, "constant", 0.5, 4) for k in (1, 50)] == [2.0, 2.0]


def test_gae_stops_at_episode_ends_bootstraps_truncations_and_masks_reset_steps():
    # one env, 4 steps, gamma 0.5, lambda 1: step 0 -> 1 truncated at step 1, step 2 is the reset step,
    # step 3 is a new episode that goes on (next value 4).
    rewards = torch.tensor([[1.0], [1.0], [0.0], [1.0]])
    values = torch.tensor([[0.0], [0.0], [8.0], [0.0]])  # values[2] = V(final observation of episode 1)
    terminations = torch.zeros(4, 1)
    dones = torch.tensor([[0.0], [1.0], [0.0], [0.0]])
    valid = torch.tensor([[1.0], [1.0], [0.0], [1.0]])
    adv, ret = compute_gae(rewards, values, torch.tensor([4.0]), terminations, dones, valid, 0.5, 1.0)
    # step 3: 1 + 0.5 * 4 = 3; step 1: 1 + 0.5 * 8 (truncation bootstrap) = 5; step 0: 1 + 0.5 * (0 + 5) = 3.5
    assert adv[:, 0].tolist() == pytest.approx([3.5, 5.0, 0.0, 3.0])
    assert ret[:, 0].tolist() == pytest.approx([3.5, 5.0, 0.0, 3.0])
    adv, _ = compute_gae(rewards, values, torch.tensor([4.0]), dones, dones, valid, 0.5, 1.0)  # now terminated
    assert adv[1, 0].item() == pytest.approx(1.0)


# ---- teacher refusal


def fake_envs(obs_shape, num_actions):
    return types.SimpleNamespace(single_observation_space=gym.spaces.Box(0, 1, obs_shape),
                                 single_action_space=gym.spaces.Discrete(num_actions))


def test_teacher_with_other_observation_space_is_refused_from_the_command_line(teacher_path, tmp_path):
    checkpoint = torch.load(teacher_path, weights_only=True)
    checkpoint["metadata"]["observation_shape"] = [81]
    bad = tmp_path / "bad.pt"
    torch.save(checkpoint, bad)
    result = subprocess.run([sys.executable, repaint_ppo.__file__, "--teacher", str(bad), "--transfer", "repaint",
                             "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert str(bad) in err and "(81,)" in err and "(49,)" in err and "observation space" in err


def test_teacher_with_other_action_space_is_refused(teacher_path, tmp_path, capsys):
    checkpoint = torch.load(teacher_path, weights_only=True)
    checkpoint["metadata"]["num_actions"] = 5
    bad = tmp_path / "bad.pt"
    torch.save(checkpoint, bad)
    expect_refusal(["--teacher", str(bad), "--transfer", "ks"] + TINY, tmp_path, capsys, "action space", str(bad))


def test_carracing_teachers_are_checked_against_the_target(tmp_path, capsys):
    """A CarRacing checkpoint (docs/checkpoints.md) for the gridworld, and a ``scrambled`` teacher for a
    ``standard`` target (same Discrete(5), other meaning of the actions), are refused before any weight is read."""
    metadata = dict(algorithm="ppo", bg_color="green", task="scrambled", reward="standard", frame_stack=1,
                    num_actions=5, relative=False, anchor_set_id=None, num_anchors=None, anchor_standardize=False,
                    latent_dim=3136, seed=1, global_step=0, args={})
    path = tmp_path / "car.pt"
    torch.save({"format": "r3l-agent-v1", "encoder": {}, "policy": {}, "metadata": metadata}, path)
    expect_refusal(["--teacher", str(path), "--transfer", "it"] + TINY, tmp_path, capsys, "(3, 84, 84)", "(49,)")
    args = repaint_ppo.Args(env="carracing", task="standard", teacher=str(path), transfer="it")
    with pytest.raises(SystemExit):
        repaint_ppo.load_teacher(str(path), args, fake_envs((3, 84, 84), 5))
    err = capsys.readouterr().err
    assert "'scrambled'" in err and "(1, 2, 3, 4, 0)" in err and "(0, 1, 2, 3, 4)" in err and "action space" in err


def test_unreadable_teacher_and_bad_options_are_one_line_errors(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    expect_refusal(["--teacher", str(junk), "--transfer", "repaint"] + TINY, tmp_path, capsys, str(junk))
    expect_refusal(["--transfer", "distill"] + TINY, tmp_path, capsys, "'distill'", "none, ks, it, repaint, warm_start")
    expect_refusal(["--transfer", "ks"] + TINY, tmp_path, capsys, "--teacher")
    expect_refusal(["--task", "far"] + TINY, tmp_path, capsys, "'far'", "target, similar, different")
    expect_refusal(["--beta-schedule", "cosine"] + TINY, tmp_path, capsys, "'cosine'", "exponential")


# ---- every --transfer mode


@pytest.mark.parametrize("transfer", ["none", "ks", "it", "repaint", "warm_start"])
def test_every_transfer_mode_trains_and_saves_a_teacher_usable_checkpoint(transfer, teacher_path, tmp_path):
    extra = [] if transfer == "none" else ["--teacher", teacher_path]
    text, path = run_script(["--transfer", transfer, "--seed", "3"] + TINY + extra, tmp_path)
    lines = ITERATION.findall(text)
    assert len(lines) == 2
    assert all(bool(beta) == (transfer in ("ks", "repaint")) for _, _, beta, _ in lines)
    assert all(bool(kept) == (transfer in ("it", "repaint")) for _, _, _, kept in lines)
    if transfer in ("ks", "repaint"):  # exponential schedule, beta 1, decay 0.9
        assert [float(beta) for _, _, beta, _ in lines] == [1.0, 0.9]
    if transfer in ("it", "repaint"):
        assert all(0.0 <= float(kept) <= 1.0 for _, _, _, kept in lines)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["format"] == "repaint-gridworld-v1" and checkpoint["metadata"]["algorithm"] == "repaint"
    assert checkpoint["metadata"]["global_step"] == 64 and checkpoint["metadata"]["args"]["transfer"] == transfer
    if transfer == "repaint":  # a student's checkpoint can teach in turn (the fixture's teacher is a plain run)
        run_script(["--transfer", "ks", "--teacher", path] + TINY, tmp_path)


def test_warm_start_starts_from_the_teachers_weights(teacher_path, tmp_path):
    _, path = run_script(["--transfer", "warm_start", "--teacher", teacher_path, "--learning-rate", "0"]
                         + TINY[:-2], tmp_path)
    student, teacher = torch.load(path, weights_only=True), torch.load(teacher_path, weights_only=True)
    assert student["metadata"]["hidden_size"] == teacher["metadata"]["hidden_size"] == 64
    for name, tensor in teacher["policy"].items():
        assert torch.equal(student["policy"][name], tensor)


# ---- learning: a good teacher speeds the student up


def iterations_to(target, returns):
    reached = [i + 1 for i, r in enumerate(returns) if r >= target]
    return reached[0] if reached else len(returns) + 1


def test_repaint_with_a_good_teacher_reaches_the_target_in_fewer_iterations(teacher_path, tmp_path):
    target = 0.7  # 80% of the best return 0.88; the random policy scores about -0.45
    seeds = (1, 2, 3)
    budget = ["--total-timesteps", "4096"]  # 16 iterations of 8 x 32 steps
    baseline = [iterations_to(target, returns_per_iteration(run_script(["--seed", str(s)] + budget, tmp_path)[0]))
                for s in seeds]
    repaint = [iterations_to(target, returns_per_iteration(run_script(
        ["--seed", str(s), "--transfer", "repaint", "--teacher", teacher_path] + budget, tmp_path)[0])) for s in seeds]
    assert np.mean(repaint) < np.mean(baseline) - 3, (baseline, repaint)


# ---- CarRacing: a relative ppo_relative.py teacher teaches a student on the outer-lane reward


def test_carracing_repaint_with_a_relative_ppo_relative_teacher(tmp_path):
    import ppo_relative

    torch.manual_seed(0)
    encoder = ppo_relative.Encoder(frame_stack=1, relative=True, num_anchors=16)
    encoder.projection.update_anchors(torch.randn(16, ppo_relative.NATURE_CNN_LATENT))
    policy = ppo_relative.Policy(encoder.latent_dim, 5)
    metadata = dict(algorithm="ppo", bg_color="red", task="standard", reward="standard", frame_stack=1,
                    num_actions=5, relative=True, anchor_set_id="abc123", num_anchors=16, anchor_standardize=False,
                    latent_dim=16, seed=1, global_step=0, args={})
    teacher = tmp_path / "agent.pt"
    ppo_relative.save_checkpoint(str(teacher), encoder, policy, metadata, {})
    # the copied networks compute what ppo_relative's compute
    copy = repaint_ppo.build_agent(metadata, "carracing")
    checkpoint = torch.load(teacher, weights_only=True)
    copy.encoder.load_state_dict(checkpoint["encoder"])
    copy.policy.load_state_dict(checkpoint["policy"])
    frames = torch.randint(0, 256, (3, 3, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(copy(frames)[0], policy(encoder(frames))[0])

    text, path = run_script(["--env", "carracing", "--reward", "outer_lane", "--transfer", "repaint", "--teacher",
                             str(teacher), "--num-envs", "1", "--num-steps", "8", "--total-timesteps", "16",
                             "--num-minibatches", "2", "--update-epochs", "1"], tmp_path)
    assert [beta for _, _, beta, _ in ITERATION.findall(text)] == ["1.000", "0.900"]
    # the student's checkpoint follows the contract: ppo_relative.py reads it
    checkpoint = ppo_relative.load_checkpoint(path)
    meta = checkpoint["metadata"]
    assert (meta["algorithm"], meta["reward"], meta["relative"], meta["latent_dim"]) == ("repaint", "outer_lane", False, 3136)
    assert meta["num_anchors"] is None and meta["anchor_set_id"] is None and meta["frame_stack"] == 1
    student_encoder = ppo_relative.Encoder(frame_stack=1, relative=False)
    student_encoder.load_state_dict(checkpoint["encoder"])
    ppo_relative.Policy(student_encoder.latent_dim, 5).load_state_dict(checkpoint["policy"])
