"""Tests for iqrl_td3.py: FSQ, n-step targets, sequence sampling, the three modes, bad input, learning."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_script_in_process
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
import iqrl_td3  # noqa: E402
from iqrl_td3 import FSQ, SequenceReplayBuffer, n_step_targets, round_ste  # noqa: E402

SCRIPT = str(REPO_ROOT / "iqrl_td3.py")
TINY = [
    "--total-timesteps", "80", "--learning-starts", "40", "--batch-size", "8", "--buffer-size", "1000",
    "--mlp-dims", "16", "16", "--enc-mlp-dims", "16", "--latent-dim", "4", "--log-every", "10",
    "--eval-episodes", "1", "--exploration-noise-decay-steps", "20",
]


def run_script(args, tmp_path, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, SCRIPT, "--runs-dir", str(tmp_path / "runs"), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env,
    )


def run_in_process(args, tmp_path, capsys):
    return run_script_in_process(SCRIPT, args, tmp_path, capsys)


def checkpoint_path(tmp_path) -> Path:
    (path,) = (tmp_path / "runs").glob("*/iqrl_td3.cleanrl_model")
    return path


# ----------------------------------------------------------------------------------------------- FSQ
@pytest.mark.parametrize("levels", [[8, 8], [8, 6, 5], [2, 3]])
def test_fsq_outputs_lie_on_the_level_grid(levels):
    torch.manual_seed(0)
    fsq = FSQ(levels)
    z = torch.randn(1000, 4 * len(levels)) * 5.0
    q = fsq(z).unflatten(-1, (4, len(levels)))
    for i, level in enumerate(levels):
        half_width = level // 2
        scaled = q[..., i] * half_width
        assert torch.allclose(scaled, scaled.round(), atol=1e-5), "not on the integer grid"
        low = -half_width
        high = half_width - 1 if level % 2 == 0 else half_width
        assert scaled.min() >= low - 1e-5 and scaled.max() <= high + 1e-5
        assert len(torch.unique(scaled.round())) == level  # every level is reachable
    assert q.abs().max() <= 1.0


@pytest.mark.parametrize("levels", [[8, 8], [8, 6, 5]])
def test_fsq_number_of_distinct_codes_is_prod_levels(levels):
    fsq = FSQ(levels)
    axes = [torch.linspace(-4, 4, 61)] * len(levels)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(levels))  # one group
    q = fsq(grid)
    assert len(torch.unique(q, dim=0)) == int(np.prod(levels))
    codes = fsq.codes(q)
    assert codes.min() >= 0 and codes.max() < fsq.codebook_size
    assert len(torch.unique(codes)) == int(np.prod(levels))  # codes() is a bijection of the grid points


def test_codebook_usage_counts_used_codes_per_group():
    fsq = FSQ([8, 8])
    z = torch.randn(64, 6) * 3
    z[:, 2:4] = 0.1  # group 1: a single code for the whole batch
    usage = iqrl_td3.codebook_usage(fsq, fsq(z))
    assert usage.shape == (3,)
    assert usage[1].item() == pytest.approx(1 / 64)
    assert usage[0].item() > 1 / 64


def test_straight_through_gradient_is_identity():
    x = (torch.randn(50) * 3).requires_grad_()
    round_ste(x).backward(torch.arange(50.0))
    assert torch.equal(x.grad, torch.arange(50.0))

    # through FSQ, rounding is invisible to the gradient: same grad as the un-rounded bounded map
    levels = [8, 6, 5]
    fsq = FSQ(levels)
    z = torch.randn(7, 6).requires_grad_()
    upstream = torch.randn(7, 6)
    fsq(z).backward(upstream)
    z2 = z.detach().clone().requires_grad_()
    groups = z2.unflatten(-1, (-1, 3))
    unrounded = (torch.tanh(groups + fsq._shift) * fsq._half_l - fsq._offset) / fsq._half_width
    unrounded.flatten(-2).backward(upstream)
    assert torch.allclose(z.grad, z2.grad)


def test_rank_diagnostic():
    torch.manual_seed(0)
    full = torch.randn(64, 32)
    collapsed = torch.randn(64, 4) @ torch.randn(4, 32)
    assert iqrl_td3.latent_rank_percent(full, 1e-3) == pytest.approx(100.0)
    assert iqrl_td3.latent_rank_percent(collapsed, 1e-3) == pytest.approx(100.0 * 4 / 32)


# ------------------------------------------------------------------------------------ n-step targets
def test_n_step_targets_match_hand_computation():
    gamma = 0.9
    rewards = torch.tensor([
        [1.0, 2.0, 3.0, 4.0],  # no end in the window: 3 rewards, bootstrap from o_{t+3}
        [1.0, 2.0, 3.0, 4.0],  # terminated at t+1: 2 rewards, no bootstrap
        [1.0, 2.0, 3.0, 4.0],  # truncated at t+1: 2 rewards, bootstrap from the true final obs o_{t+2}
        [5.0, 2.0, 3.0, 4.0],  # terminated at t: 1 reward
    ])
    terminated = torch.tensor([
        [0.0, 0, 0, 0],
        [0.0, 1, 0, 0],
        [0.0, 0, 0, 0],
        [1.0, 0, 0, 0],
    ])
    # valid as the buffer builds it: 0 after the step where an episode ended (terminated or truncated)
    valid = torch.tensor([
        [1.0, 1, 1, 1],
        [1.0, 1, 0, 0],
        [1.0, 1, 0, 0],
        [1.0, 0, 0, 0],
    ])
    reward_sum, last, coef = n_step_targets(rewards, terminated, valid, gamma, n_step=3)
    expected_sum = [1 + 0.9 * 2 + 0.81 * 3, 1 + 0.9 * 2, 1 + 0.9 * 2, 5.0]
    assert torch.allclose(reward_sum, torch.tensor(expected_sum))
    assert last.tolist() == [2, 1, 1, 0]
    assert torch.allclose(coef, torch.tensor([0.9**3, 0.0, 0.9**2, 0.0]))

    reward_sum1, last1, coef1 = n_step_targets(rewards, terminated, valid, gamma, n_step=1)
    assert torch.allclose(reward_sum1, rewards[:, 0])
    assert last1.tolist() == [0, 0, 0, 0]
    assert torch.allclose(coef1, torch.tensor([0.9, 0.9, 0.9, 0.0]))


def test_n_step_targets_from_the_buffer():
    # one episode of 2 steps that terminates, then a second episode: rewards 1, 2 | 10, 20, 30
    rb = SequenceReplayBuffer(capacity=10, obs_dim=1, act_dim=1, seq_len=3, seed=0)
    for reward, terminated in [(1.0, False), (2.0, True), (10.0, False), (20.0, False), (30.0, False)]:
        rb.add([reward], [0.0], reward, [reward + 0.5], terminated, False)
    seen = set()
    for _ in range(20):
        batch = {k: torch.as_tensor(v) for k, v in rb.sample(16).items()}
        reward_sum, last, coef = n_step_targets(batch["rewards"], batch["terminated"], batch["valid"], 0.5, 3)
        for b in range(16):
            start = batch["rewards"][b, 0].item()
            expected = {  # start reward -> (n-step sum, bootstrap coef, bootstrap obs)
                1.0: (1 + 0.5 * 2, 0.0, 2.5),
                2.0: (2.0, 0.0, 2.5),
                10.0: (10 + 0.5 * 20 + 0.25 * 30, 0.125, 30.5),
                20.0: (20 + 0.5 * 30, 0.25, 30.5),  # newest data: only 2 steps written so far
                30.0: (30.0, 0.5, 30.5),
            }[start]
            assert reward_sum[b].item() == pytest.approx(expected[0])
            assert coef[b].item() == pytest.approx(expected[1])
            assert batch["next_obs"][b, last[b], 0].item() == pytest.approx(expected[2])
            seen.add(start)
    assert seen == {1.0, 2.0, 10.0, 20.0, 30.0}


# -------------------------------------------------------------------------------- sequence sampling
def test_sequence_sampling_never_crosses_an_episode_end():
    rng = np.random.default_rng(0)
    rb = SequenceReplayBuffer(capacity=97, obs_dim=2, act_dim=1, seq_len=5, seed=1)
    episode = 0
    for _ in range(300):  # > 3x capacity: exercises the circular wrap-around and the write pointer
        length = int(rng.integers(1, 9))
        for step in range(length):
            ends = step == length - 1
            terminated = ends and episode % 2 == 0
            rb.add([episode, step], [0.0], 0.0, [episode, step + 1], terminated, ends and not terminated)
        episode += 1
    for step in range(3):  # an unfinished episode: the slots after it hold stale data from old episodes
        rb.add([episode, step], [0.0], 0.0, [episode, step + 1], False, False)
    newest = rb.obs[(rb.pos - 1) % rb.capacity].copy()
    for _ in range(50):
        batch = rb.sample(64)
        obs, next_obs, valid = batch["obs"], batch["next_obs"], batch["valid"]
        assert (valid[:, 0] == 1).all()
        assert (np.diff(valid, axis=1) <= 0).all(), "valid must be a prefix"
        for b in range(64):
            n_valid = int(valid[b].sum())
            ep = obs[b, 0, 0]
            assert (obs[b, :n_valid, 0] == ep).all(), "a sequence crossed an episode end"
            assert (np.diff(obs[b, :n_valid, 1]) == 1).all()
            assert (next_obs[b, : n_valid - 1] == obs[b, 1:n_valid]).all()
            if n_valid < 5:  # cut short: the next slot starts a new episode, or step n_valid-1 is the newest
                starts_new_episode = obs[b, n_valid, 1] == 0
                assert starts_new_episode or (obs[b, n_valid - 1] == newest).all()


# --------------------------------------------------------------------------------- script smoke tests
@pytest.mark.parametrize(
    "mode_flags,env_id,in_subprocess",  # one real interpreter start-up; the others run __main__ in-process
    [([], "Hopper-v5", True), (["--no-fsq"], "HalfCheetah-v5", False), (["--no-encoder"], "Walker2d-v5", False)],
)
def test_smoke_all_modes_write_a_loadable_checkpoint(tmp_path, capsys, mode_flags, env_id, in_subprocess):
    if in_subprocess:
        result = run_script(["--env-id", env_id, *TINY, *mode_flags], tmp_path)
        code, out, err = result.returncode, result.stdout, result.stderr
    else:
        code, out, err = run_in_process(["--env-id", env_id, *TINY, *mode_flags], tmp_path, capsys)
    assert code == 0, err[-2000:]
    assert "eval_return_mean=" in out
    path = checkpoint_path(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    expected = {"actor", "qf1", "qf2", "metadata"}
    if "--no-encoder" not in mode_flags:
        expected |= {"encoder", "target_encoder", "dynamics"}
        assert "final_latent_rank_pct_tol1e-03=" in out
    assert set(checkpoint) == expected
    assert checkpoint["metadata"]["args"]["env_id"] == env_id
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp_")]  # atomic write left no temp
    assert list(path.parent.glob("events.out.tfevents.*"))

    code, out, err = run_in_process(["--eval-checkpoint", str(path), "--eval-episodes", "1"], tmp_path, capsys)
    assert code == 0, err
    assert out.startswith(f"eval {env_id}")


def test_same_seed_same_numbers(tmp_path, capsys):
    states = []
    for run in ("a", "b"):
        run_dir = tmp_path / run
        run_dir.mkdir()
        code, out, err = run_in_process(["--env-id", "Pendulum-v1", *TINY, "--n-step", "3", "--seed", "7"], run_dir, capsys)
        assert code == 0, err
        states.append(torch.load(checkpoint_path(run_dir), weights_only=True))
        states[-1]["eval_line"] = re.search(r"eval_return_mean=\S+", out).group(0)
    for key in ("encoder", "dynamics", "actor", "qf1", "qf2"):
        for name, tensor in states[0][key].items():
            assert torch.equal(tensor, states[1][key][name]), f"{key}.{name} differs between identical runs"
    assert states[0]["eval_line"] == states[1]["eval_line"]


# ---------------------------------------------------------------------------------------- bad input
def test_bad_flag_gives_one_line_error_without_traceback(tmp_path):
    result = run_script(["--fsq-levels", "8", "1"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: bad --fsq-levels [8, 1]; accepted: one or more integers >= 2, e.g. 8 8 or 8 6 5"
    ]


def test_bad_input_cases_are_one_line_errors(tmp_path, capsys):
    bad_checkpoint = tmp_path / "bad.cleanrl_model"
    bad_checkpoint.write_bytes(b"this is not a checkpoint")
    wrong_dict = tmp_path / "wrong.cleanrl_model"
    torch.save({"actor": {}}, wrong_dict)
    cases = [
        (["--env-id", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
        (["--env-id", "CartPole-v1"], "CartPole-v1"),
        (["--fsq-levels", "1"], "--fsq-levels [1]"),
        (["--n-step", "0"], "--n-step 0"),
        (["--horizon", "0"], "--horizon 0"),
        (["--eval-checkpoint", str(bad_checkpoint)], "bad.cleanrl_model"),
        (["--eval-checkpoint", str(wrong_dict)], "wrong.cleanrl_model"),
        (["--eval-checkpoint", str(tmp_path / "missing.pt")], "missing.pt"),
    ]
    for flags, named in cases:
        code, out, err = run_in_process([*flags, "--total-timesteps", "10"], tmp_path, capsys)
        assert code == 2, flags
        lines = err.strip().splitlines()
        assert len(lines) == 1, (flags, err)
        assert lines[0].startswith("error: ") and named in lines[0] and "accepted" in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was started


# -------------------------------------------------------------------------------------------- learning
def test_learns_pendulum_better_than_random(tmp_path, capsys):
    """The real algorithm (FSQ encoder + latent dynamics + TD3) with small networks: ~40 s of one CPU core."""
    code, out, err = run_in_process(
        [
            "--env-id", "Pendulum-v1", "--seed", "1", "--total-timesteps", "2500", "--learning-starts", "500",
            "--q-lr", "1e-3", "--actor-lr", "1e-3", "--enc-lr", "1e-3", "--n-step", "3",
            "--exploration-noise-start", "0.3", "--exploration-noise-decay-steps", "1000",
            "--mlp-dims", "64", "64", "--enc-mlp-dims", "64", "--latent-dim", "16", "--batch-size", "64",
            "--log-every", "500", "--eval-episodes", "5", "--no-save-model",
        ],
        tmp_path,
        capsys,
    )
    assert code == 0, err[-2000:]
    eval_return = float(re.search(r"eval_return_mean=(\S+)", out).group(1))
    # a uniformly random policy scores about -1200 on Pendulum-v1 (this run: about -345)
    assert eval_return > -600, out[-2000:]
