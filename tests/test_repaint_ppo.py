"""repaint_ppo.py: the REPAINT pieces on hand-computed batches (selection, advantage scale, losses), paired seeds,
teacher refusal, every --transfer mode, resume and clean stops, precision, CarRacing with a ppo_relative teacher, and
a learning comparison on the gridworld. Most runs execute the script in-process (runpy); the command-line contracts
(exit codes, signals) run it as a subprocess."""

import contextlib
import io
import math
import os
import re
import runpy
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_script_in_process, save_agent_checkpoint

import repaint_ppo
from envs.checkpoint import load_agent_checkpoint, resolve_precision
from repaint_ppo import (
    beta_at,
    clipped_surrogate_loss,
    compute_gae,
    kickstarting_cross_entropy,
    select_teacher_samples,
    teacher_advantage_scale,
)

SCRIPT = repaint_ppo.__file__
ITERATION = re.compile(r"^iteration (\d+)/\d+ step \d+(?: return (\S+))?(?: beta_k (\S+))?(?: kept (\S+))?", re.M)
TINY = ["--num-envs", "2", "--num-steps", "16", "--total-timesteps", "64", "--hidden-size", "16", "--eval-episodes", "1"]


def train(argv, runs_dir) -> tuple[str, str]:
    """Run repaint_ppo.py in this process; returns (stdout, checkpoint path)."""
    out, old_argv = io.StringIO(), sys.argv
    sys.argv = [SCRIPT, "--runs-dir", str(runs_dir)] + list(argv)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(SCRIPT, run_name="__main__")
    finally:
        sys.argv = old_argv
    text = out.getvalue()
    return text, re.search(r"checkpoint saved to (\S+)", text).group(1)


def returns_per_iteration(text):
    return [float(m.group(2)) if m.group(2) else math.nan for m in ITERATION.finditer(text)]


def expect_refusal(argv, tmp_path, capsys, *needles):
    code, out, err = run_script_in_process(SCRIPT, argv, tmp_path, capsys)
    err = err.strip()
    assert code == 2 and "\n" not in err and err.startswith("error:"), err
    assert "weights_only=False" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A good gridworld teacher: plain PPO on the "similar" task (goal one cell from the target's)."""
    text, path = train(
        ["--task", "similar", "--total-timesteps", "8192", "--learning-rate", "0.002", "--seed", "1"],
        tmp_path_factory.mktemp("teacher"),
    )
    assert float(re.search(r"eval_return_mean=(\S+)", text).group(1)) == pytest.approx(0.89)  # the optimum of similar
    return path


# ---- the pieces, on hand-computed batches


def test_selection_keeps_valid_teacher_samples_with_advantage_at_least_zeta():
    advantages = torch.tensor([[0.5, -0.1, 0.0], [2.0, 0.3, -3.0]])
    valid = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    assert select_teacher_samples(advantages, valid, 0.0).tolist() == [[True, False, True], [False, True, False]]
    assert select_teacher_samples(advantages, valid, 0.4).tolist() == [[True, False, False], [False, False, False]]
    assert select_teacher_samples(advantages, valid, -5.0).sum() == 5  # every valid sample


def test_kept_teacher_advantages_are_scaled_by_the_teacher_batch_std_not_centred():
    # early on every student episode times out: the student's advantages are tiny (std 0.05), the teacher's are not
    student = torch.tensor([0.05, -0.05, 0.05, -0.05])
    teacher = torch.tensor([[2.0, -2.0], [2.0, 100.0]])
    valid = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the 100 is a reset step: not part of the statistics
    scale = teacher_advantage_scale(teacher, valid, student, "teacher")
    assert scale.item() == pytest.approx(torch.tensor([2.0, -2.0, 2.0]).std().item())
    kept = select_teacher_samples(teacher, valid, 0.0)
    normalised = teacher[kept] / scale
    assert normalised.tolist() == pytest.approx([2.0 / scale.item()] * 2) and (normalised > 0).all()  # sign kept
    assert normalised.abs().max() < 1.0  # unit scale, whatever the student's batch looks like
    # the student-batch rule divides by 0.058: the same samples weigh 30x the normalised PPO advantages
    student_scale = teacher_advantage_scale(teacher, valid, student, "student")
    assert student_scale.item() == pytest.approx(student.std().item()) and (teacher[kept] / student_scale).min() > 30


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


# ---- paired seeds


def test_seeds_are_paired_across_modes_zero_weight_transfer_is_plain_ppo(teacher_path, tmp_path):
    """The teacher is built before the seeding and samples with its own generator: with the transfer terms weighted 0,
    every mode trains exactly the baseline's network (same initial weights, same student draws)."""
    common = ["--seed", "5", "--beta", "0", "--alpha-ins", "0"] + TINY
    weights = {}
    for mode in ("none", "ks", "it", "repaint"):
        extra = [] if mode == "none" else ["--transfer", mode, "--teacher", teacher_path]
        weights[mode] = torch.load(train(common + extra, tmp_path)[1], weights_only=True)["policy"]
    for mode in ("ks", "it", "repaint"):
        assert all(torch.equal(weights[mode][k], weights["none"][k]) for k in weights["none"]), mode


# ---- teacher refusal and bad input


def test_teacher_with_other_observation_space_is_refused_from_the_command_line(teacher_path, tmp_path):
    checkpoint = torch.load(teacher_path, weights_only=True)
    checkpoint["metadata"]["observation_shape"] = [81]
    bad = tmp_path / "bad.pt"
    torch.save(checkpoint, bad)
    result = subprocess.run(
        [sys.executable, SCRIPT, "--teacher", str(bad), "--transfer", "repaint", "--runs-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    """A CarRacing checkpoint for the gridworld, and a ``scrambled`` teacher for a ``standard`` target (same
    Discrete(5), other meaning of the actions), are refused before any weight is read."""
    path = save_agent_checkpoint(tmp_path / "car.pt", "green", relative=False, seed=1, task="scrambled")
    expect_refusal(["--teacher", str(path), "--transfer", "it"] + TINY, tmp_path, capsys, "(3, 84, 84)", "(49,)")
    err = expect_refusal(["--env", "carracing", "--teacher", str(path), "--transfer", "it"], tmp_path, capsys)
    assert "'scrambled'" in err and "(1, 2, 3, 4, 0)" in err and "(0, 1, 2, 3, 4)" in err and "action space" in err


def test_unreadable_files_and_bad_options_are_one_line_errors(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    expect_refusal(
        ["--teacher", str(junk), "--transfer", "repaint"] + TINY,
        tmp_path,
        capsys,
        str(junk),
        "not a checkpoint of this collection",
    )
    expect_refusal(["--resume", str(junk)], tmp_path, capsys, str(junk), "not a checkpoint of this collection")
    expect_refusal(["--teacher", str(tmp_path / "missing.pt"), "--transfer", "ks"], tmp_path, capsys, "does not exist")
    expect_refusal(["--transfer", "distill"] + TINY, tmp_path, capsys, "'distill'", "none, ks, it, repaint, warm_start")
    expect_refusal(["--transfer", "ks"] + TINY, tmp_path, capsys, "--teacher")
    expect_refusal(["--task", "far"] + TINY, tmp_path, capsys, "'far'", "target, similar, different")
    expect_refusal(["--beta-schedule", "cosine"] + TINY, tmp_path, capsys, "'cosine'", "exponential")
    expect_refusal(["--precision", "fp16"] + TINY, tmp_path, capsys, "'fp16'", "fp32, bf16, auto")
    expect_refusal(["--env", "carracing", "--view", "wide"], tmp_path, capsys, "'wide'", "near, far")
    expect_refusal(["--capture-video"] + TINY, tmp_path, capsys, "--capture-video", "--env carracing")
    expect_refusal(["--total-timesteps", "16"] + TINY[:4], tmp_path, capsys, "--total-timesteps", "32")
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # tests run as root: a folder below a file cannot be created whatever the permissions
    expect_refusal(["--runs-dir", str(blocker / "runs")] + TINY, tmp_path, capsys, "--runs-dir", str(blocker / "runs"))


# ---- every --transfer mode, the final evaluation, the checkpoint


@pytest.mark.parametrize("transfer", ["none", "ks", "it", "repaint", "warm_start"])
def test_every_transfer_mode_trains_evaluates_and_saves_a_teacher_usable_checkpoint(transfer, teacher_path, tmp_path):
    extra = [] if transfer == "none" else ["--teacher", teacher_path]
    text, path = train(["--transfer", transfer, "--seed", "3"] + TINY + extra, tmp_path)
    lines = ITERATION.findall(text)
    assert len(lines) == 2
    assert all(bool(beta) == (transfer in ("ks", "repaint")) for _, _, beta, _ in lines)
    assert all(bool(kept) == (transfer in ("it", "repaint")) for _, _, _, kept in lines)
    if transfer in ("ks", "repaint"):  # exponential schedule, beta 1, decay 0.9
        assert [float(beta) for _, _, beta, _ in lines] == [1.0, 0.9]
    assert re.search(r"^eval_return_mean=-?\d+\.\d+ eval_return_std=\d+\.\d+ ", text, re.M)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["format"] == "repaint-gridworld-v1" and checkpoint["metadata"]["algorithm"] == "repaint"
    assert checkpoint["metadata"]["global_step"] == 64 and checkpoint["metadata"]["args"]["transfer"] == transfer
    if transfer == "repaint":  # a student's checkpoint can teach in turn
        train(["--transfer", "ks", "--teacher", os.path.dirname(path)] + TINY, tmp_path)


def test_warm_start_starts_from_the_teachers_weights(teacher_path, tmp_path):
    _, path = train(["--transfer", "warm_start", "--teacher", teacher_path, "--learning-rate", "0"] + TINY[:-4], tmp_path)
    student, teacher = torch.load(path, weights_only=True), torch.load(teacher_path, weights_only=True)
    assert student["metadata"]["hidden_size"] == teacher["metadata"]["hidden_size"] == 64
    for name, tensor in teacher["policy"].items():
        assert torch.equal(student["policy"][name], tensor)


def test_fp32_is_reproducible_and_bf16_trains_with_fp32_checkpoints(tmp_path):
    runs = {
        name: torch.load(train(["--seed", "2", "--precision", precision] + TINY, tmp_path / name)[1], weights_only=True)
        for name, precision in (("a", "fp32"), ("b", "fp32"), ("bf16", "bf16"))
    }
    assert all(torch.equal(runs["a"]["policy"][k], runs["b"]["policy"][k]) for k in runs["a"]["policy"])
    assert all(t.dtype == torch.float32 for t in runs["bf16"]["policy"].values())
    assert runs["bf16"]["metadata"]["args"]["precision"] == "bf16"
    # auto: bf16 where the CPU multiplies bf16 natively, fp32 elsewhere; the checkpoint stores what it resolved to
    auto = torch.load(train(["--seed", "2", "--precision", "auto"] + TINY, tmp_path / "auto")[1], weights_only=True)
    assert auto["metadata"]["args"]["precision"] == resolve_precision("auto", torch.device("cpu"))


# ---- clean stops and resume


def test_sigterm_writes_the_checkpoint_prints_one_line_and_resume_continues(tmp_path, capsys):
    process = subprocess.Popen(
        [
            sys.executable,
            SCRIPT,
            "--runs-dir",
            str(tmp_path),
            "--total-timesteps",
            "1000000",
            "--num-envs",
            "2",
            "--num-steps",
            "16",
            "--hidden-size",
            "16",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    for line in process.stdout:  # wait until training has started
        if line.startswith("iteration 2/"):
            break
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("stopped by SIGTERM: checkpoint at ")
    path = re.search(r"checkpoint at (\S+) \(global_step=(\d+)\)", last)
    assert f"resume with: python repaint_ppo.py --resume {path.group(1)}" in last
    checkpoint = torch.load(path.group(1), weights_only=True)
    step = int(path.group(2))
    assert checkpoint["metadata"]["global_step"] == step and step % 32 == 0 and step >= 64
    # resume: the run's flags come from the checkpoint; a larger budget continues it in the same folder
    code, out, err = run_script_in_process(
        SCRIPT,
        ["--resume", os.path.dirname(path.group(1)), "--total-timesteps", str(step + 64), "--eval-episodes", "0"],
        tmp_path,
        capsys,
    )
    assert code == 0, err
    assert re.findall(r"^iteration (\d+)/", out, re.M) == [str(step // 32 + 1), str(step // 32 + 2)]
    assert torch.load(path.group(1), weights_only=True)["metadata"]["global_step"] == step + 64
    expect_refusal(
        ["--resume", path.group(1), "--total-timesteps", str(step + 128), "--beta", "0.5"],
        tmp_path,
        capsys,
        "--beta 0.5",
        "differs from the resumed run's 1.0",
    )
    expect_refusal(["--resume", path.group(1)], tmp_path, capsys, "already at step", "--total-timesteps >= ")


def test_save_every_counts_environment_steps(tmp_path, capsys, monkeypatch):
    import envs.checkpoint

    saved, original = [], envs.checkpoint.save_atomic
    # the script run by runpy imports save_atomic from envs.checkpoint when it starts: patch it there
    monkeypatch.setattr(
        envs.checkpoint,
        "save_atomic",
        lambda payload, path: saved.append(payload["metadata"]["global_step"]) or original(payload, path),
    )
    argv = [
        "--num-envs",
        "2",
        "--num-steps",
        "16",
        "--total-timesteps",
        "128",
        "--save-every",
        "64",
        "--hidden-size",
        "16",
        "--eval-episodes",
        "0",
    ]
    code, _, err = run_script_in_process(SCRIPT, argv, tmp_path, capsys)
    assert code == 0, err
    assert saved == [64, 128, 128]  # every 64 steps, and at the end


# ---- learning: a good teacher speeds the student up


def iterations_to(target, returns):
    reached = [i + 1 for i, r in enumerate(returns) if r >= target]
    return reached[0] if reached else len(returns) + 1


def test_repaint_with_a_good_teacher_reaches_the_target_in_fewer_iterations(teacher_path, tmp_path):
    target = 0.7  # 80% of the best return 0.88; the random policy scores about -0.45
    seeds = (1, 2, 3)
    budget = ["--total-timesteps", "4096", "--eval-episodes", "0"]  # 16 iterations of 8 x 32 steps
    baseline = [iterations_to(target, returns_per_iteration(train(["--seed", str(s)] + budget, tmp_path)[0])) for s in seeds]
    repaint = [
        iterations_to(
            target,
            returns_per_iteration(
                train(["--seed", str(s), "--transfer", "repaint", "--teacher", teacher_path] + budget, tmp_path)[0]
            ),
        )
        for s in seeds
    ]
    assert np.mean(repaint) < np.mean(baseline) - 3, (baseline, repaint)


# ---- CarRacing: a relative ppo_relative.py teacher teaches a student on the outer-lane reward, far view


def test_carracing_repaint_with_a_relative_ppo_relative_teacher(tmp_path, monkeypatch):
    import ppo_relative

    teacher = save_agent_checkpoint(tmp_path / "agent.pt", "red", relative=True, num_anchors=16, anchor_set_id="abc123")
    checkpoint = torch.load(teacher, weights_only=True)
    metadata = checkpoint["metadata"]
    encoder = ppo_relative.Encoder(frame_stack=1, relative=True, num_anchors=16)
    encoder.load_state_dict(checkpoint["encoder"])
    policy = ppo_relative.Policy(encoder.latent_dim, 5)
    policy.load_state_dict(checkpoint["policy"])
    # the copied networks compute what ppo_relative's compute
    copy = repaint_ppo.build_agent(metadata)
    copy.encoder.load_state_dict(checkpoint["encoder"])
    copy.policy.load_state_dict(checkpoint["policy"])
    frames = torch.randint(0, 256, (3, 3, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(copy(frames)[0], policy(encoder(frames))[0])

    monkeypatch.chdir(tmp_path)  # videos/ goes to the working folder
    text, path = train(
        [
            "--env",
            "carracing",
            "--view",
            "far",
            "--reward",
            "outer_lane",
            "--transfer",
            "repaint",
            "--teacher",
            str(teacher),
            "--num-envs",
            "1",
            "--num-steps",
            "8",
            "--total-timesteps",
            "16",
            "--num-minibatches",
            "2",
            "--update-epochs",
            "1",
            "--eval-episodes",
            "1",
            "--capture-video",
            "--precision",
            "bf16",
        ],
        tmp_path,
    )
    assert re.search(r"^eval_return_mean=\S+ eval_return_std=0.000 \(1 deterministic", text, re.M)
    gif = tmp_path / "videos" / os.path.basename(os.path.dirname(path)) / "eval-episode-0.gif"
    assert gif.stat().st_size > 0
    assert [beta for _, _, beta, _ in ITERATION.findall(text)] == ["1.000", "0.900"]
    # the student's checkpoint follows the contract: the shared loader and ppo_relative's networks read it
    checkpoint = load_agent_checkpoint(path)
    meta = checkpoint["metadata"]
    assert (meta["algorithm"], meta["reward"], meta["view"], meta["task"]) == ("repaint", "outer_lane", "far", "standard")
    assert (meta["relative"], meta["latent_dim"], meta["num_anchors"], meta["anchor_set_id"]) == (False, 3136, None, None)
    assert all(t.dtype == torch.float32 for t in checkpoint["encoder"].values() if t.is_floating_point())
    student_encoder = ppo_relative.Encoder(frame_stack=1, relative=False)
    student_encoder.load_state_dict(checkpoint["encoder"])
    ppo_relative.Policy(student_encoder.latent_dim, 5).load_state_dict(checkpoint["policy"])
