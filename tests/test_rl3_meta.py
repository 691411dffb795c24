"""Tests of rl3_meta.py: object-level RL, networks, command line, checkpoints, smoke runs and a learning test.

The training runs are subprocesses started together by one module fixture (they overlap on the CPU);
each test then waits for its own run.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import rl3_meta
from envs import bandit, gridworld

torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = [(algo, domain) for algo in rl3_meta.ALGOS for domain in rl3_meta.DOMAINS]
SMOKE_FLAGS = ["--num-tasks", "4", "--eval-tasks", "3", "--minibatch-size", "20", "--update-epochs", "2", "--threads", "1"]
SMOKE_HORIZON = {"bandit": 10, "mdp": 10, "gridworld": 20}
LEARNING_FLAGS = ["--algo", "rl3", "--domain", "bandit", "--horizon", "20", "--num-tasks", "128",
                  "--minibatch-size", "640", "--learning-rate", "1e-3", "--total-timesteps", "30720",
                  "--eval-tasks", "200", "--ood", "none", "--no-save-model", "--threads", "1"]


def start(args, runs_dir):
    return subprocess.Popen([sys.executable, "rl3_meta.py", "--runs-dir", str(runs_dir)] + args, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Launch every training run of this module at once: name -> (process, runs directory)."""
    launched = {}
    for algo, domain in SMOKE:
        H = SMOKE_HORIZON[domain]
        flags = ["--algo", algo, "--domain", domain, "--horizon", str(H), "--total-timesteps", str(4 * H)] + SMOKE_FLAGS
        directory = tmp_path_factory.mktemp(f"{algo}_{domain}")
        launched[(algo, domain)] = (start(flags, directory), directory)
    repeat_dir = tmp_path_factory.mktemp("repeat")
    launched["repeat"] = (start(["--algo", "rl3", "--domain", "bandit", "--horizon", "10", "--total-timesteps", "40"] + SMOKE_FLAGS, repeat_dir), repeat_dir)
    learn_dir = tmp_path_factory.mktemp("learning")
    launched["learning"] = (start(LEARNING_FLAGS, learn_dir), learn_dir)
    yield launched
    for process, _ in launched.values():
        process.kill()
        process.communicate()


def finish(runs, name):
    """Wait for a run; assert it succeeded; return (stdout, eval.json contents, run directory)."""
    process, directory = runs[name]
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    (run_dir,) = [os.path.join(directory, d) for d in os.listdir(directory)]
    with open(os.path.join(run_dir, "eval.json")) as f:
        return stdout, json.load(f), run_dir


@pytest.mark.parametrize("algo,domain", SMOKE)
def test_smoke(runs, algo, domain):
    stdout, results, run_dir = finish(runs, (algo, domain))
    assert "SPS" in stdout and "ETA" in stdout
    module = rl3_meta.DOMAINS[domain]["module"]
    assert list(results["eval"]) == [module.IN_DISTRIBUTION, *module.OOD_VARIANTS]
    for variant, result in results["eval"].items():
        assert np.isfinite(result["rl"]["normalized_mean"]) and result["oracle"] > 0
        assert ("thompson" in result) == (domain == "bandit")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))
    checkpoint = torch.load(os.path.join(run_dir, "rl3_meta.cleanrl_model"), weights_only=True)
    assert checkpoint["config"]["algo"] == algo and "actor.head.weight" in checkpoint["model"]
    assert not any(name.endswith(".tmp") for name in os.listdir(run_dir))


def test_same_seed_same_numbers(runs):
    _, first, _ = finish(runs, ("rl3", "bandit"))
    stdout, second, _ = finish(runs, "repeat")
    assert first["eval"] == second["eval"]
    assert "return" in stdout


def test_load_model_evaluates_checkpoint(runs, tmp_path, capsys):
    _, _, run_dir = finish(runs, ("rl3", "gridworld"))
    path = os.path.join(run_dir, "rl3_meta.cleanrl_model")
    flags = ["--algo", "rl3", "--domain", "gridworld", "--horizon", "20", "--eval-tasks", "2", "--ood", "corner",
             "--load-model", path]
    result = subprocess.run([sys.executable, "rl3_meta.py", "--runs-dir", str(tmp_path)] + flags, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "eval standard" in result.stdout and "eval corner" in result.stdout and "iter " not in result.stdout
    # a checkpoint of another configuration is refused with one line
    args = rl3_meta.Args(algo="rl2", domain="gridworld", horizon=20)
    rl3_meta.validate(args)
    env = rl3_meta.make_env(args, 1)
    agent = rl3_meta.Agent(rl3_meta.input_dim(args, env), env.num_actions, args.horizon, args)
    with pytest.raises(SystemExit):
        rl3_meta.load_checkpoint(agent, args, path)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'algo': 'rl3'" in err and "'algo': 'rl2'" in err


def test_cli_unknown_algo_is_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "rl3_meta.py", "--algo", "rl4", "--runs-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == "rl3_meta.py: error: unknown --algo 'rl4'; expected one of rl2, rl3, rl3-coarse"
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(domain="atari"), "unknown --domain 'atari'; expected one of bandit, mdp, gridworld"),
        (dict(domain="gridworld", grid_size=7), "unsupported --grid-size 7; expected one of 11, 13"),
        (dict(domain="mdp", horizon=15), "bad --horizon 15; expected a positive integer multiple of 10"),
        (dict(num_tasks=0), "bad --num-tasks 0; expected a positive integer"),
        (dict(total_timesteps=10), "bad --total-timesteps 10; expected at least num_tasks * horizon = 6400"),
        (dict(domain="bandit", ood="dense"), "unknown --ood variant 'dense' for bandit; expected all, none"),
    ],
)
def test_bad_input_is_one_line_error(overrides, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        rl3_meta.validate(rl3_meta.Args(**overrides))
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"not a checkpoint", None, {"model": {}}])
def test_malformed_checkpoint_is_one_line_error(content, tmp_path, capsys):
    path = tmp_path / "bad.cleanrl_model"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        torch.save(content, path)
    args = rl3_meta.Args(domain="bandit")
    rl3_meta.validate(args)
    env = rl3_meta.make_env(args, 1)
    agent = rl3_meta.Agent(rl3_meta.input_dim(args, env), env.num_actions, args.horizon, args)
    with pytest.raises(SystemExit) as exit_info:
        rl3_meta.load_checkpoint(agent, args, str(path))
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "cannot load checkpoint" in err and str(path) in err and len(err.strip().splitlines()) == 1


def test_checkpoint_round_trip(tmp_path):
    args = rl3_meta.Args(domain="mdp")
    rl3_meta.validate(args)
    env = rl3_meta.make_env(args, 1)
    agent = rl3_meta.Agent(rl3_meta.input_dim(args, env), env.num_actions, args.horizon, args)
    path = str(tmp_path / "model.cleanrl_model")
    rl3_meta.save_checkpoint(agent, args, path)
    assert os.listdir(tmp_path) == ["model.cleanrl_model"]
    other = rl3_meta.Agent(rl3_meta.input_dim(args, env), env.num_actions, args.horizon, args)
    rl3_meta.load_checkpoint(other, args, path)
    for a, b in zip(agent.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_count_model_laplace_smoothing_and_reward_means():
    model = rl3_meta.ObjectLevelRL(2, np.arange(3), 2, horizon=3, laplace=0.1, gamma=0.9, tol=1e-9, max_iters=1000,
                                   value_scale=10.0)
    Z = 4  # 3 states + the absorbing state
    for reward, s_next in [(1.0, 1), (3.0, 1), (5.0, 2)]:
        model.update(np.array([0, 0]), np.array([1, 1]), np.array([reward, reward]), np.array([s_next, s_next]),
                     np.array([False, True]))
    np.testing.assert_array_equal(model.counts[0, 0, 1], [0, 2, 1, 0])
    np.testing.assert_array_equal(model.counts[1, 0, 1], [0, 0, 0, 3])  # terminal transitions -> absorbing state
    # P(.|0,1) = (N + 0.1) / (3 + 0.1 * 4); reward: running means 2 (to state 1) and 5 (to state 2), 0 unseen
    P01 = np.array([0.1, 2.1, 1.1, 0.1]) / 3.4
    np.testing.assert_allclose(model.R[0, 0, 1], P01 @ [0.0, 2.0, 5.0, 0.0])
    assert np.all(model.R[:, 2, 0] == 0.0)  # untried: reward 0
    # value iteration on the smoothed model: Q(s,a) = R(s,a) + 0.9 * sum_s' P(s'|s,a) V(s'), V(absorbing) = 0
    P = (model.counts + 0.1) / (model.counts.sum(axis=3, keepdims=True) + 0.1 * Z)
    np.testing.assert_allclose(P[0, 0, 1], P01)
    assert np.all(model.V[:, -1] == 0.0)
    np.testing.assert_allclose(model.Q, model.R + 0.9 * np.einsum("bsaz,bz->bsa", P, model.V), atol=1e-8)
    np.testing.assert_allclose(model.Q[:, 2, 0], 0.9 * model.V.mean(axis=1), atol=1e-8)  # untried: uniform
    np.testing.assert_allclose(model.V[:, :3], model.Q[:, :3].max(axis=2), atol=1e-8)
    features = model.features(np.array([0, 0]))
    v = model.V[:, 0]
    np.testing.assert_allclose(features[:, :2], (model.Q[:, 0] - v[:, None]) / 10.0)
    np.testing.assert_allclose(features[:, 2], v / 10.0)
    np.testing.assert_allclose(features[:, 3:], [[0.0, 0.3], [0.0, 0.3]])


def test_object_level_bandit_features_rank_arms_by_mean_reward():
    model = rl3_meta.ObjectLevelRL(1, np.zeros(1, dtype=np.int64), 3, 5, 0.1, 0.95, 0.01, 1, 1.0)
    for arm, reward in [(0, 1.0), (0, 1.0), (1, 0.0), (1, 1.0), (2, 0.0)]:
        model.update(np.zeros(1, dtype=np.int64), np.array([arm]), np.array([reward]), np.zeros(1, dtype=np.int64), np.array([True]))
    advantages = model.features(np.zeros(1, dtype=np.int64))[0, :3]
    assert advantages[0] == 0.0 and advantages[0] > advantages[1] > advantages[2]


def test_coarse_abstraction_merges_at_most_two_adjacent_cells():
    args = rl3_meta.Args(algo="rl3-coarse", domain="gridworld", grid_size=11)
    rl3_meta.validate(args)
    env = gridworld.GridworldEnv(1, args.horizon, "standard", 11)
    phi = rl3_meta.state_abstraction(args, env)
    assert phi.max() + 1 == 11 * 6
    for cluster in range(phi.max() + 1):
        cells = np.flatnonzero(phi == cluster)
        assert 1 <= len(cells) <= 2
        if len(cells) == 2:
            (r1, c1), (r2, c2) = divmod(cells[0], 11), divmod(cells[1], 11)
            assert abs(r1 - r2) + abs(c1 - c2) == 1
    args.algo = "rl3"
    assert np.array_equal(rl3_meta.state_abstraction(args, env), np.arange(121))


def test_incremental_decoding_matches_full_causal_forward():
    torch.manual_seed(0)
    args = rl3_meta.Args()
    net = rl3_meta.CausalTransformer(7, 3, 12, args, head_std=1.0)
    x = torch.randn(5, 12, 7)
    full = net(x)
    cache = net.new_cache(5)
    steps = torch.stack([net.step(x[:, t], t, cache) for t in range(12)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)
    # causality: changing a later input leaves earlier outputs unchanged
    x2 = x.clone()
    x2[:, 8:] += 1.0
    torch.testing.assert_close(net(x2)[:, :8], full[:, :8])


def test_rl2_and_rl3_inputs_differ_only_by_the_object_level_vector():
    for algo, extra in [("rl2", 0), ("rl3", 11), ("rl3-coarse", 11)]:
        args = rl3_meta.Args(algo=algo, domain="bandit")
        rl3_meta.validate(args)
        env = bandit.BanditEnv(1, 100)
        assert rl3_meta.input_dim(args, env) == 5 + 4 + 1 + extra


def test_learning_beats_random_on_bandits(runs):
    stdout, results, _ = finish(runs, "learning")
    result = results["eval"]["uniform"]
    rl, random_policy = result["rl"]["normalized_mean"], result["random"]["normalized_mean"]
    standard_error = result["rl"]["normalized_std"] / np.sqrt(200)
    assert rl > random_policy + 0.05 and rl > random_policy + 3 * standard_error, stdout
