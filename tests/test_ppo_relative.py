"""Tests for ppo_relative.py: projection invariance, anchor EMA, GAE across autoresets, checkpoints,
bad input, a subprocess smoke run, reproducibility and --resume."""

import os
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_orthogonal, run_script_in_process

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from envs.checkpoint import AGENT_FORMAT, AGENT_METADATA, agent_payload, save_atomic  # noqa: E402
from envs.checkpoint import load_agent_checkpoint as load_checkpoint  # noqa: E402
from ppo_relative import Encoder, Policy, RelativeProjection, compute_gae  # noqa: E402

SCRIPT = str(REPO_ROOT / "ppo_relative.py")
# 2 iterations of 1 env x 16 steps; a tiny anchor recipe (4 tracks x 4 steps, 8 anchors)
TINY = [
    "--total-timesteps",
    "32",
    "--num-envs",
    "1",
    "--num-steps",
    "16",
    "--num-anchors",
    "8",
    "--anchor-steps-per-track",
    "4",
    "--eval-episodes",
    "0",
    "--save-every",
    "1",
]


def projection_with_anchors(anchors: torch.Tensor, standardize: bool = False) -> RelativeProjection:
    projection = RelativeProjection(anchors.shape[0], anchors.shape[1], standardize=standardize).double()
    projection.update_anchors(anchors)
    return projection


# ----------------------------------------------------------------------------------------- projection
@pytest.mark.parametrize("trial", range(3))
def test_projection_is_invariant_to_orthogonal_maps_isotropic_scaling_and_translation(trial):
    g = torch.Generator().manual_seed(trial)
    num_anchors, dim = 48, 96
    anchors = torch.randn(num_anchors, dim, generator=g, dtype=torch.float64) * 3 + 1
    latents = torch.randn(10, dim, generator=g, dtype=torch.float64) * 3 + 1
    q = random_orthogonal(dim, g)
    scale = float(torch.empty(1).uniform_(0.01, 100, generator=g))
    shift = torch.randn(dim, generator=g, dtype=torch.float64) * 50

    def transform(x):
        return scale * x @ q + shift

    z = projection_with_anchors(anchors)(latents)
    z_transformed = projection_with_anchors(transform(anchors))(transform(latents))
    assert z.shape == (10, num_anchors)
    assert torch.allclose(z, z_transformed, atol=1e-10)
    assert z.abs().max() <= 1 + 1e-12  # cosine similarities
    # the same holds in float32, the training precision, to float tolerance
    z32, z32_transformed = RelativeProjection(num_anchors, dim), RelativeProjection(num_anchors, dim)
    z32.update_anchors(anchors.float())
    z32_transformed.update_anchors(transform(anchors).float())
    assert torch.allclose(z32(latents.float()), z32_transformed(transform(latents).float()), atol=1e-4)


def test_projection_distinguishes_latents_and_is_not_invariant_to_anisotropic_scaling():
    """The invariance is not trivial: the output changes with the latent and under per-axis scaling."""
    g = torch.Generator().manual_seed(0)
    anchors, latents = (
        torch.randn(32, 64, generator=g, dtype=torch.float64),
        torch.randn(4, 64, generator=g, dtype=torch.float64),
    )
    projection = projection_with_anchors(anchors)
    assert not torch.allclose(projection(latents[:1]), projection(latents[1:2]), atol=1e-3)
    stretch = torch.ones(64, dtype=torch.float64)
    stretch[:32] = 10.0
    stretched = projection_with_anchors(anchors * stretch)(latents * stretch)
    assert not torch.allclose(projection(latents), stretched, atol=1e-3)


def test_standardize_option_is_invariant_to_per_dimension_scaling_but_not_to_rotations():
    g = torch.Generator().manual_seed(1)
    anchors, latents = (
        torch.randn(32, 64, generator=g, dtype=torch.float64),
        torch.randn(4, 64, generator=g, dtype=torch.float64),
    )
    per_dim = torch.empty(64, dtype=torch.float64).uniform_(0.1, 10, generator=g)
    shift = torch.randn(64, generator=g, dtype=torch.float64)
    z = projection_with_anchors(anchors, standardize=True)(latents)
    z_scaled = projection_with_anchors(anchors * per_dim + shift, standardize=True)(latents * per_dim + shift)
    assert torch.allclose(z, z_scaled, atol=1e-6)
    q = random_orthogonal(64, g)
    z_rotated = projection_with_anchors(anchors @ q, standardize=True)(latents @ q)
    assert not torch.allclose(z, z_rotated, atol=1e-3)


# ----------------------------------------------------------------------------------------- anchor EMA
def test_anchor_ema_first_update_copies_then_follows_the_ema_rule():
    projection = RelativeProjection(num_anchors=5, latent_dim=7, anchor_ema=0.9)
    first, second = torch.randn(5, 7), torch.randn(5, 7)
    assert not bool(projection.anchors_initialized)
    projection.update_anchors(first)
    assert bool(projection.anchors_initialized)
    assert torch.equal(projection.anchor_embeddings, first)
    projection.update_anchors(second)
    assert torch.allclose(projection.anchor_embeddings, 0.9 * first + 0.1 * second, atol=1e-6)


def test_anchors_get_no_gradient_and_the_cnn_gets_gradient_through_x():
    torch.manual_seed(0)
    encoder = Encoder(frame_stack=2, relative=True, num_anchors=6, anchor_ema=0.5)
    anchor_frames = torch.randint(0, 256, (6, 3, 84, 84), dtype=torch.uint8)
    encoder.update_anchors(anchor_frames)  # called with grad enabled: must still build no graph
    buffer = encoder.projection.anchor_embeddings
    assert not buffer.requires_grad and buffer.grad_fn is None
    assert torch.allclose(buffer, encoder.embed_frames(anchor_frames).detach(), atol=1e-5)
    assert "projection.anchor_embeddings" not in dict(encoder.named_parameters())

    obs = torch.randint(0, 256, (3, 6, 84, 84), dtype=torch.uint8)
    latent = encoder(obs)
    assert latent.shape == (3, encoder.latent_dim) == (3, 2 * 6)
    latent.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.cnn.parameters())
    assert buffer.grad is None

    # one more update: the EMA rule with the trained CNN's fresh embeddings
    before = buffer.clone()
    with torch.no_grad():
        encoder.cnn[0].weight.mul_(1.5)
    encoder.update_anchors(anchor_frames)
    fresh = encoder.embed_frames(anchor_frames).detach()
    assert torch.allclose(encoder.projection.anchor_embeddings, 0.5 * before + 0.5 * fresh, atol=1e-4)


def test_absolute_encoder_has_no_projection_and_ignores_anchor_updates():
    encoder = Encoder(frame_stack=1, relative=False)
    encoder.update_anchors(torch.zeros(4, 3, 84, 84, dtype=torch.uint8))
    assert encoder.projection is None and encoder.latent_dim == 3136
    assert encoder(torch.zeros(2, 3, 84, 84, dtype=torch.uint8)).shape == (2, 3136)


# ----------------------------------------------------------------------------------------- GAE
def test_gae_does_not_cross_episodes_and_bootstraps_only_truncations():
    gamma, lam = 0.9, 0.8
    # one env, 5 steps: the episode terminates at step 1 (step 2 is the reset step), a new one runs from
    # step 3 and is truncated at step 4 (its final observation is next_obs, value 7)
    rewards = torch.tensor([[1.0], [2.0], [0.0], [3.0], [4.0]])
    values = torch.tensor([[0.5], [0.6], [9.0], [0.3], [0.4]])
    terminations = torch.tensor([[0.0], [1.0], [0.0], [0.0], [0.0]])
    dones = torch.tensor([[0.0], [1.0], [0.0], [0.0], [1.0]])
    next_value = torch.tensor([7.0])
    adv = compute_gae(rewards, values, next_value, terminations, dones, gamma, lam)
    a1 = 2.0 - 0.6  # terminated: no bootstrap from the reset step's value (9.0)
    a0 = (1.0 + gamma * 0.6 - 0.5) + gamma * lam * a1
    a4 = 4.0 + gamma * 7.0 - 0.4  # truncated: bootstraps on the final observation
    a3 = (3.0 + gamma * 0.4 - 0.3) + gamma * lam * a4
    assert torch.allclose(adv[:, 0], torch.tensor([a0, a1, adv[2, 0].item(), a3, a4]), atol=1e-6)
    # rewards of the next episode do not leak into the previous one
    rewards2 = rewards.clone()
    rewards2[3:] += 100.0
    adv2 = compute_gae(rewards2, values, next_value, terminations, dones, gamma, lam)
    assert torch.equal(adv[:2], adv2[:2])


# ----------------------------------------------------------------------------------------- checkpoints
def make_agent(relative=True, num_anchors=8, frame_stack=1, seed=0):
    torch.manual_seed(seed)
    encoder = Encoder(frame_stack, relative, num_anchors, 0.999)
    encoder.update_anchors(torch.randint(0, 256, (num_anchors, 3, 84, 84), dtype=torch.uint8))
    return encoder, Policy(encoder.latent_dim, 5)


def metadata_for(encoder, relative=True, num_anchors=8):
    return {
        "algorithm": "ppo",
        "bg_color": "green",
        "view": "near",
        "task": "standard",
        "reward": "standard",
        "frame_stack": 1,
        "num_actions": 5,
        "relative": relative,
        "anchor_set_id": "abc" if relative else None,
        "num_anchors": num_anchors if relative else None,
        "anchor_standardize": False,
        "latent_dim": encoder.latent_dim,
        "seed": 0,
        "global_step": 0,
        "args": {},
    }


def test_checkpoint_round_trip(tmp_path):
    encoder, policy = make_agent()
    path = str(tmp_path / "agent.pt")
    save_atomic(agent_payload(encoder, policy, metadata_for(encoder), {"iteration": 3}), path)
    assert os.listdir(tmp_path) == ["agent.pt"]  # no temporary file left behind
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == AGENT_FORMAT and raw["training_state"]["iteration"] == 3
    checkpoint = load_checkpoint(str(tmp_path))  # a run directory works too
    meta = checkpoint["metadata"]
    encoder2 = Encoder(meta["frame_stack"], meta["relative"], meta["num_anchors"])
    policy2 = Policy(meta["latent_dim"], meta["num_actions"])
    encoder2.load_state_dict(checkpoint["encoder"])
    policy2.load_state_dict(checkpoint["policy"])
    obs = torch.randint(0, 256, (4, 3, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(encoder(obs), encoder2(obs))  # stored anchors are used, not re-encoded
        assert torch.equal(policy(encoder(obs))[0], policy2(encoder2(obs))[0])
        assert torch.equal(policy.greedy_action(encoder(obs)), policy2.greedy_action(encoder2(obs)))


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bad_checkpoints")
    encoder, policy = make_agent()
    good = {
        "format": AGENT_FORMAT,
        "encoder": encoder.state_dict(),
        "policy": policy.state_dict(),
        "metadata": metadata_for(encoder),
        "training_state": {},
    }
    files = {
        "text": tmp_path / "text.pt",
        "wrong_format": tmp_path / "wrong.pt",
        "no_policy": tmp_path / "nopol.pt",
        "no_metadata_key": tmp_path / "nokey.pt",
        "pickle": tmp_path / "pickle.pt",
        "random": tmp_path / "random.pt",
    }
    files["text"].write_text("not a checkpoint\n")
    files["random"].write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    torch.save({**good, "format": "cleanrl"}, files["wrong_format"])
    torch.save({k: v for k, v in good.items() if k != "policy"}, files["no_policy"])
    torch.save(
        {**good, "metadata": {k: v for k, v in good["metadata"].items() if k != "latent_dim"}}, files["no_metadata_key"]
    )
    torch.save({**good, "metadata": {**good["metadata"], "args": object()}}, files["pickle"])  # unsafe for weights_only
    return files


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist"),
        ("text", "is not a checkpoint of this collection"),
        ("wrong_format", "has format 'cleanrl'"),
        ("no_policy", "lacks policy"),
        ("no_metadata_key", "lacks metadata.latent_dim"),
        ("pickle", "holds objects other than tensors"),
        ("random", "is not a checkpoint of this collection"),
    ],
)
def test_load_checkpoint_rejects_bad_files_with_one_line(tmp_path, bad_checkpoints, case, expected):
    path = str(tmp_path / "missing.pt") if case == "missing" else str(bad_checkpoints[case])
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert expected in message and path in message and "ppo_relative.py" in message
    assert "\n" not in message and "weights_only" not in message


# ----------------------------------------------------------------------------------------- the script
def run_in_process(args, tmp_path, capsys):
    return run_script_in_process(SCRIPT, args, tmp_path, capsys)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--bg-color", "purple"], "unknown --bg-color 'purple'; accepted: green, red, blue, yellow, violet, pink or a hex"),
        (["--task", "fast"], "unknown --task 'fast'; accepted: standard, slow, scrambled, no_idle ('far' is --view far)"),
        (["--view", "aerial"], "unknown --view 'aerial'; accepted: near, far"),
        (["--num-anchors", "20", "--anchor-steps-per-track", "4"], "bad --num-anchors 20; accepted: an integer in [1, 16]"),
        (["--total-timesteps", "10"], "bad --total-timesteps 10; accepted: an integer >= --num-envs * --num-steps = 2048"),
        (["--resume", "nowhere/agent.pt"], "checkpoint 'nowhere/agent.pt' does not exist"),
    ],
)
def test_bad_flags_give_one_line_error(tmp_path, capsys, flags, expected):
    code, out, err = run_in_process(flags, tmp_path, capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The tiny run as a real subprocess (as users run it)."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, SCRIPT, "--runs-dir", str(tmp_path / "runs"), "--seed", "3", *TINY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = (tmp_path / "runs").glob("ColorCarRacing-green-standard__ppo_relative__3__*/agent.pt")
    return path, result


def test_smoke_subprocess_writes_a_loadable_checkpoint(smoke_run):
    path, result = smoke_run
    assert "checkpoint saved to" in result.stdout
    checkpoint = load_checkpoint(str(path))
    meta = checkpoint["metadata"]
    assert meta["algorithm"] == "ppo" and meta["bg_color"] == "green" and meta["task"] == "standard"
    assert meta["view"] == "near"
    assert meta["relative"] is True and meta["num_anchors"] == 8 and meta["latent_dim"] == 8
    assert meta["global_step"] == 32 and meta["seed"] == 3 and meta["num_actions"] == 5
    assert isinstance(meta["anchor_set_id"], str) and len(meta["anchor_set_id"]) == 12
    assert meta["args"]["num_envs"] == 1 and checkpoint["training_state"]["iteration"] == 2
    assert list(path.parent.glob("events.out.tfevents.*"))
    encoder = Encoder(meta["frame_stack"], meta["relative"], meta["num_anchors"], standardize=meta["anchor_standardize"])
    policy = Policy(meta["latent_dim"], meta["num_actions"])
    encoder.load_state_dict(checkpoint["encoder"])
    policy.load_state_dict(checkpoint["policy"])
    assert bool(encoder.projection.anchors_initialized)
    obs = torch.randint(0, 256, (3, 3, 84, 84), dtype=torch.uint8)
    actions = policy.greedy_action(encoder(obs))
    assert actions.shape == (3,) and torch.equal(actions, policy.greedy_action(encoder(obs)))


def test_absolute_run_metadata_follows_the_contract_and_the_final_evaluation_is_printed(tmp_path, capsys):
    flags = ["--no-relative", "--anchor-standardize", "--bg-color", "#aabbcc", "--seed", "7", "--eval-episodes", "1"]
    code, out, err = run_in_process([*TINY, *flags], tmp_path, capsys)
    assert code == 0, err[-2000:]
    (path,) = (tmp_path / "runs").glob("ColorCarRacing-aabbcc-standard__ppo_relative__7__*/agent.pt")
    meta = load_checkpoint(str(path))["metadata"]
    assert set(meta) == set(AGENT_METADATA)
    assert meta["relative"] is False and meta["anchor_set_id"] is None and meta["num_anchors"] is None
    assert meta["anchor_standardize"] is False and meta["bg_color"] == "#aabbcc" and meta["args"]["seed"] == 7
    assert meta["latent_dim"] == 3136
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["metadata"] == meta  # plain types only
    (line,) = [line for line in out.splitlines() if line.startswith("eval_return_mean=")]
    assert "eval_return_std=" in line and "(1 deterministic episodes on tracks 10007..)" in line


def test_same_seed_same_weights_and_resume_continues(smoke_run, tmp_path, capsys):
    path, _ = smoke_run
    # reproducibility: the same flags in this process give bit-identical networks
    code, out, err = run_in_process(["--seed", "3", *TINY], tmp_path, capsys)
    assert code == 0, err
    (rerun,) = (tmp_path / "runs").glob("*/agent.pt")
    a, b = load_checkpoint(str(path)), load_checkpoint(str(rerun))
    for part in ("encoder", "policy"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])

    # --resume with a larger budget continues from the stored step and writes a later checkpoint
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(path.parent, resumed_dir)
    code, out, err = run_in_process(["--resume", str(resumed_dir), "--total-timesteps", "48"], tmp_path, capsys)
    assert code == 0, err
    assert "resumed resumed at global_step=32 (iteration 2)" in out
    resumed = load_checkpoint(str(resumed_dir / "agent.pt"))
    assert resumed["metadata"]["global_step"] == 48 and resumed["training_state"]["iteration"] == 3
    assert resumed["metadata"]["args"]["total_timesteps"] == 48 and resumed["metadata"]["seed"] == 3
    assert not all(torch.equal(a["policy"][k], resumed["policy"][k]) for k in a["policy"])

    # a finished run, or a flag that contradicts the stored run, is a one-line error
    code, out, err = run_in_process(["--resume", str(resumed_dir)], tmp_path, capsys)
    assert code == 2 and "is already at step 48" in err and err.strip().count("\n") == 0
    # a larger budget that does not reach one more iteration (16 steps) names the budget that does
    code, out, err = run_in_process(["--resume", str(resumed_dir), "--total-timesteps", "56"], tmp_path, capsys)
    assert code == 2 and "accepted: --total-timesteps >= 64 to continue it" in err
    code, out, err = run_in_process(
        ["--resume", str(resumed_dir), "--bg-color", "red", "--total-timesteps", "64"], tmp_path, capsys
    )
    assert code == 2 and "--bg-color 'red' differs from the resumed run's 'green'" in err and err.strip().count("\n") == 0


def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(tmp_path):
    flags = [f if f != "32" else "100000" for f in TINY]  # a long run: it is interrupted
    process = subprocess.Popen(
        [sys.executable, SCRIPT, "--runs-dir", str(tmp_path / "runs"), "--seed", "4", *flags],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert process.stdout.readline().startswith("anchor set ")  # printed just before the environments start
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 143, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM: checkpoint at ") and "resume with: python ppo_relative.py --resume " in last
    assert "Traceback" not in stderr
    (path,) = (tmp_path / "runs").glob("*/agent.pt")
    checkpoint = load_checkpoint(str(path))
    step, iteration = checkpoint["metadata"]["global_step"], checkpoint["training_state"]["iteration"]
    assert step == 16 * iteration  # the last finished iteration: an unfinished rollout is dropped
    code = subprocess.run([sys.executable, SCRIPT, "--resume", str(path), "--total-timesteps", str(step + 16)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600).returncode  # fmt: skip
    assert code == 0 and load_checkpoint(str(path))["metadata"]["global_step"] == step + 16


def test_unwritable_runs_dir_is_one_line_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("a file where a folder should be")
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [SCRIPT, *TINY, "--runs-dir", str(tmp_path / "file" / "runs")]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(SCRIPT, run_name="__main__")
    finally:
        sys.argv = argv
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: --runs-dir ") and "is not a writable folder" in err
    assert err.strip().count("\n") == 0
