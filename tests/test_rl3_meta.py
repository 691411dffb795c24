"""Tests of rl3_meta.py: the object-level learner (count model, Laplace smoothing, value iteration), networks,
command line, checkpoints, resume, signals, and smoke / learning runs with tiny budgets (run in-process)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import run_script_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rl3_meta
from envs import bandit, gridworld
from envs.checkpoint import resolve_precision

torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "rl3_meta.py")
TINY = ["--num-tasks", "2", "--eval-episodes", "2", "--minibatch-size", "20", "--update-epochs", "1"]
TINY_HORIZON = {"bandit": 10, "mdp": 12, "gridworld": 20}


def train(tmp_path, capsys, *flags):
    """Run rl3_meta.py in-process; returns (exit code, stdout, stderr, run folder or None)."""
    code, out, err = run_script_in_process(SCRIPT, list(flags), tmp_path, capsys)
    runs = tmp_path / "runs"
    folders = sorted(runs.iterdir()) if runs.is_dir() else []
    return code, out, err, (str(folders[-1]) if folders else None)


def messages(err):
    """stderr without the tqdm progress bar."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "step/s" not in line and "|" not in line]


def scalars(run_dir, key):
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return [(s.step, s.value) for s in events.Scalars(key)]


@pytest.mark.parametrize("algo", rl3_meta.ALGOS)
@pytest.mark.parametrize("domain", list(rl3_meta.DOMAINS))
def test_smoke(algo, domain, tmp_path, capsys):
    H = TINY_HORIZON[domain]
    code, out, err, run_dir = train(tmp_path, capsys, "--algo", algo, "--domain", domain, "--horizon", str(H),
                                    "--total-timesteps", str(2 * 2 * H), *TINY)  # fmt: skip
    assert code == 0, err
    module = rl3_meta.DOMAINS[domain]["module"]
    with open(os.path.join(run_dir, "eval.json")) as f:
        results = json.load(f)
    assert list(results["eval"]) == [module.IN_DISTRIBUTION, *module.OOD_VARIANTS]
    for result in results["eval"].values():
        assert np.isfinite(result["rl"]["normalized_mean"]) and result["oracle"] > 0
        assert ("thompson" in result) == (domain == "bandit")
    assert out.strip().splitlines()[-1].startswith("eval_return_mean=") and "eval_return_std=" in out
    checkpoint = torch.load(os.path.join(run_dir, "agent.pt"), weights_only=True)
    assert checkpoint["format"] == rl3_meta.CHECKPOINT_FORMAT and checkpoint["args"]["algo"] == algo
    assert checkpoint["global_step"] == 4 * H and "actor.head.weight" in checkpoint["model"]
    assert sorted(os.listdir(run_dir))[:2] == ["agent.pt", "eval.json"]  # no temporary files left
    # entropy bonus as the authors' code: 0.1 decayed linearly for bandits and MDPs, 0.04 constant for gridworlds
    ent = [v for _, v in scalars(run_dir, "charts/ent_coef")]
    np.testing.assert_allclose(ent, [0.04, 0.04] if domain == "gridworld" else [0.1, 0.05], rtol=1e-6)


def test_same_seed_same_numbers_and_resume_continues_exactly(tmp_path, capsys):
    flags = ["--algo", "rl3", "--domain", "mdp", "--horizon", "12", "--ood", "none", *TINY]
    runs = {}
    for name, steps in [("full", 72), ("again", 72), ("half", 24)]:
        (tmp_path / name).mkdir()
        code, _, err, runs[name] = train(tmp_path / name, capsys, *flags, "--total-timesteps", str(steps))
        assert code == 0, err
    # continue to 48 steps, then go back to the 24-step checkpoint (as after a crash) and continue to 72
    shutil.copy(os.path.join(runs["half"], "agent.pt"), os.path.join(runs["half"], "step24.pt"))
    for resume, steps in [(runs["half"], "48"), (os.path.join(runs["half"], "step24.pt"), "72")]:
        code, _, err, _ = train(
            tmp_path / "half", capsys, "--resume", resume, "--total-timesteps", steps, "--eval-episodes", "2"
        )
        assert code == 0, err

    def evals(run_dir):
        with open(os.path.join(run_dir, "eval.json")) as f:
            results = json.load(f)
        return results["eval"], results["greedy"]

    assert evals(runs["full"]) == evals(runs["again"])
    assert evals(runs["half"]) == evals(runs["full"])  # same tasks, same RNG, same optimiser state after resume
    # the resumed TensorBoard log has no duplicated steps: what was logged after the checkpoint was purged
    assert scalars(runs["half"], "charts/episodic_return") == scalars(runs["full"], "charts/episodic_return")
    assert [step for step, _ in scalars(runs["half"], "charts/episodic_return")] == [24, 48, 72]
    # resuming writes the run's agent.pt (whatever file it started from); resuming a finished run only evaluates it
    assert torch.load(os.path.join(runs["half"], "agent.pt"), weights_only=True)["global_step"] == 72
    code, out, err, _ = train(tmp_path / "half", capsys, "--resume", os.path.join(runs["half"], "agent.pt"),
                              "--total-timesteps", "72", "--eval-episodes", "2")  # fmt: skip
    assert code == 0 and "eval_return_mean=" in out
    assert torch.load(os.path.join(runs["half"], "agent.pt"), weights_only=True)["global_step"] == 72
    # a flag that defines the run (here the model width) is refused on resume, not silently dropped
    code, out, err, _ = train(tmp_path / "half", capsys, "--resume", os.path.join(runs["half"], "agent.pt"),
                              "--total-timesteps", "96", "--d-model", "48")  # fmt: skip
    assert code == 2 and err.strip().startswith("error: --d-model 48 differs from the resumed run's ")


def test_sigterm_writes_checkpoint_one_line_and_exits_143(tmp_path, capsys):
    command = [sys.executable, SCRIPT, "--runs-dir", str(tmp_path / "runs"), "--domain", "bandit", "--horizon", "10",
               "--total-timesteps", "10000000", "--save-every", "20", *TINY]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "runs").glob("*/agent.pt")):  # the first periodic checkpoint: the loop is running
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    (line,) = messages(err)
    assert line.startswith("stopped by SIGTERM: checkpoint at ") and "resume with: python rl3_meta.py --resume " in line
    path = line.split("--resume ")[1]
    step = torch.load(path, weights_only=True)["global_step"]
    assert step > 0 and step % 20 == 0
    code, out, err, _ = train(tmp_path, capsys, "--resume", path, "--total-timesteps", str(step + 20), "--eval-episodes", "2")
    assert code == 0, err
    assert torch.load(path, weights_only=True)["global_step"] == step + 20


@pytest.mark.parametrize(
    "content,message",
    [(bytes(range(7, 250, 3)), "is not a checkpoint of this collection (not a readable torch file)"),
     ({"format": "r3l-agent-v1"}, "has format 'r3l-agent-v1' (expected 'rl3-meta-v1')"),
     ({"format": "rl3-meta-v1", "args": {}}, "lacks model, optimizer, global_step, iteration, timing, rng"),
     ({"format": "rl3-meta-v1", "args": {"bogus": 1}, **dict.fromkeys(("model", "optimizer", "timing"), {}),
       "global_step": 0, "iteration": 0, "rng": torch.zeros(1)}, "has flags this rl3_meta.py does not know (bogus)")],
)  # fmt: skip
def test_bad_checkpoint_is_one_line_error(content, message, tmp_path, capsys):
    path = tmp_path / "agent.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    code, _, err, _ = train(tmp_path, capsys, "--resume", str(path))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "weights_only=False" not in err


def test_unwritable_runs_dir_is_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code, _, err, _ = train(tmp_path, capsys, "--runs-dir", str(tmp_path / "file" / "runs"), "--horizon", "10", *TINY)
    assert code == 2 and "--runs-dir" in err and "not a writable folder" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "overrides,message",
    [(dict(algo="rl4"), "unknown --algo 'rl4'; accepted: rl2, rl3, rl3-coarse"),
     (dict(domain="atari"), "unknown --domain 'atari'; accepted: bandit, mdp, gridworld"),
     (dict(domain="gridworld", grid_size=7), "unknown --grid-size 7; accepted: 11, 13"),
     (dict(precision="fp16"), "unknown --precision 'fp16'; accepted: fp32, bf16, auto"),
     (dict(vi_init="random"), "unknown --vi-init 'random'; accepted: auto, zeros, warm"),
     (dict(laplace_support="some"), "unknown --laplace-support 'some'; accepted: seen, all"),
     (dict(ent_schedule="cosine"), "unknown --ent-schedule 'cosine'; accepted: auto, linear, constant"),
     (dict(horizon=0), "bad --horizon 0; accepted: a positive integer"),
     (dict(num_tasks=0), "bad --num-tasks 0; accepted: a positive integer"),
     (dict(torch_threads=0), "bad --torch-threads 0; accepted: a positive integer"),
     (dict(save_every=-1), "bad --save-every -1; accepted: 0 (only at the end) or a positive step count"),
     (dict(total_timesteps=10), "bad --total-timesteps 10; accepted: at least num_tasks * horizon = 6400"),
     (dict(domain="bandit", ood="dense"), "unknown --ood variant 'dense' for bandit; accepted: all, none")],
)  # fmt: skip
def test_bad_input_is_one_line_error(overrides, message):
    with pytest.raises(ValueError) as error:
        rl3_meta.validate(rl3_meta.Args(**overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_cli_error_format(tmp_path, capsys):
    code, out, err, run_dir = train(tmp_path, capsys, "--algo", "rl4")
    assert code == 2 and err == "error: unknown --algo 'rl4'; accepted: rl2, rl3, rl3-coarse\n" and run_dir is None


def test_per_domain_defaults_follow_the_authors_code():
    expected = {"bandit": (0.1, "linear", 3e-4), "mdp": (0.1, "linear", 3e-4), "gridworld": (0.04, "constant", 2e-4)}
    for domain, (ent, schedule, lr) in expected.items():
        args = rl3_meta.Args(domain=domain)
        rl3_meta.validate(args)
        assert (args.ent_coef, args.ent_schedule, args.learning_rate) == (ent, schedule, lr)
    args = rl3_meta.Args(domain="gridworld", ent_schedule="linear", ent_coef=0.2)
    rl3_meta.validate(args)
    assert (args.ent_coef, args.ent_schedule) == (0.2, "linear")


def test_count_model_laplace_smoothing_over_seen_states():
    model = rl3_meta.ObjectLevelRL(2, np.arange(5), 2, horizon=3, laplace=0.1, gamma=0.9, tol=1e-12, max_iters=1000,
                                   value_scale=10.0)  # fmt: skip
    for reward, s_next in [(1.0, 1), (3.0, 1), (5.0, 2)]:
        model.update(np.array([0, 0]), np.array([1, 1]), np.array([reward, reward]), np.array([s_next, s_next]),
                     np.array([False, True]))  # fmt: skip
    np.testing.assert_array_equal(model.counts[0, 0, 1], [0, 2, 1, 0, 0, 0])
    np.testing.assert_array_equal(model.counts[1, 0, 1], [0, 0, 0, 0, 0, 3])  # terminal transitions -> absorbing state
    # seen so far: states {0, 1, 2} in task 0; {0, absorbing} in task 1 (states 3, 4 and the rest get no mass)
    np.testing.assert_array_equal(model.support, [[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 1]])
    # P(.|0,1) = (N + 0.1) / (3 + 0.1 * 3) over the seen states; reward: running means 2 (to 1) and 5 (to 2)
    P01 = np.array([0.1, 2.1, 1.1, 0.0, 0.0, 0.0]) / 3.3
    support = model.support.astype(float)
    P = (model.counts + 0.1 * support[:, None, None]) / (model.visits[..., None] + 0.1 * support.sum(1)[:, None, None, None])
    np.testing.assert_allclose(P[0, 0, 1], P01)
    R = (P * np.divide(model.reward_sums, model.counts, out=np.zeros_like(P), where=model.counts > 0)).sum(axis=3)
    np.testing.assert_allclose(R[0, 0, 1], P01 @ [0.0, 2.0, 5.0, 0.0, 0.0, 0.0])
    # Bellman optimality on the smoothed model; an untried (s, a) is uniform over the seen states, reward 0
    assert np.all(model.V[:, -1] == 0.0)
    np.testing.assert_allclose(model.Q, R + 0.9 * np.einsum("bsaz,bz->bsa", P, model.V), atol=1e-8)
    np.testing.assert_allclose(model.Q[0, 2, 0], 0.9 * model.V[0, :3].mean(), atol=1e-8)
    np.testing.assert_allclose(model.Q[1, 0, 0], 0.9 * model.V[1, [0, 5]].mean(), atol=1e-8)
    features = model.features(np.array([0, 0]))
    v = model.V[:, 0]
    np.testing.assert_allclose(features[:, :2], (model.Q[:, 0] - v[:, None]) / 10.0)
    np.testing.assert_allclose(features[:, 2], v / 10.0)
    np.testing.assert_allclose(features[:, 3:], [[0.0, 0.3], [0.0, 0.3]])


def test_count_model_laplace_smoothing_over_all_states():
    model = rl3_meta.ObjectLevelRL(1, np.arange(3), 2, horizon=1, laplace=0.1, gamma=0.9, tol=1e-12, max_iters=1000,
                                   value_scale=1.0, seen_support=False)  # fmt: skip
    model.update(np.array([0]), np.array([1]), np.array([2.0]), np.array([1]), np.array([False]))
    assert model.support.all()  # 3 states + the absorbing state
    np.testing.assert_allclose(model.reward_numerator[0, 0, 1] / (1 + 0.1 * 4), 1.1 * 2.0 / 1.4)
    np.testing.assert_allclose(model.Q[0, 2, 0], 0.9 * model.V[0].mean(), atol=1e-8)  # untried: uniform over all 4


def test_value_iteration_restart_gives_task_horizon_values_warm_start_drifts():
    """Restarting from V = 0 with max_iters = the task horizon k gives the k-step discounted values of the model
    (an MDP with 10-step episodes gets 10-step values); warm-starting keeps sweeping towards the infinite-horizon
    values, because every step adds k more sweeps on top of the last ones."""
    rng = np.random.default_rng(0)
    learners = {restart: rl3_meta.ObjectLevelRL(1, np.arange(3), 2, 30, 0.1, 0.95, 0.0, 3, 1.0, restart=restart)
                for restart in (True, False)}  # fmt: skip
    for _ in range(30):
        s, a, s2, r = rng.integers(3), rng.integers(2), rng.integers(3), rng.normal() + 1.0
        for learner in learners.values():
            learner.update(np.array([s]), np.array([a]), np.array([r]), np.array([s2]), np.array([False]))
    model = learners[True]
    support = model.support.astype(float)
    P = (model.counts + 0.1 * support[:, None, None]) / (model.visits[..., None] + 0.1 * support.sum(1)[:, None, None, None])
    R = model.reward_numerator / (model.visits + 0.1 * support.sum(1)[:, None, None])
    V = np.zeros((1, 4))
    for _ in range(3):  # exactly 3 sweeps from 0
        Q = R + 0.95 * np.einsum("bsaz,bz->bsa", P, V)
        V = Q.max(axis=2) * [1, 1, 1, 0]
    np.testing.assert_allclose(learners[True].Q, Q, atol=1e-10)
    assert np.abs(learners[False].V - V).max() > 1.0  # 90 sweeps in all: far beyond the 3-step values


def test_bandit_object_level_advantages_rank_arms_by_mean_reward():
    args = rl3_meta.Args(domain="bandit", horizon=5)
    rl3_meta.validate(args)
    model = rl3_meta.object_level_learner(args, bandit.BanditEnv(1, 5))
    for arm, reward in [(0, 1.0), (0, 1.0), (1, 0.0), (1, 1.0), (2, 0.0)]:
        model.update(np.zeros(1, dtype=np.int64), np.array([arm]), np.array([reward]), np.zeros(1, dtype=np.int64),
                     np.array([True]))  # fmt: skip
    # one sweep from 0: Q(a) = smoothed mean reward of arm a, (N + ls) / (N + 2 ls) times the mean (2 seen states)
    np.testing.assert_allclose(model.Q[0, 0, :3], [2.1 / 2.2, 2.1 / 2.2 * 0.5, 0.0])
    advantages = model.features(np.zeros(1, dtype=np.int64))[0, :3]
    assert advantages[0] == 0.0 and advantages[0] > advantages[1] > advantages[2]


@pytest.mark.parametrize(
    "domain,horizon,vi_init,restart,max_iters",
    [("bandit", 100, "auto", True, 1), ("mdp", 256, "auto", True, 10), ("mdp", 6, "auto", True, 6),
     ("gridworld", 250, "auto", False, 250), ("gridworld", 40, "auto", True, 40), ("gridworld", 250, "zeros", True, 250),
     ("mdp", 100, "warm", False, 10)],
)  # fmt: skip
def test_value_iteration_start_rule(domain, horizon, vi_init, restart, max_iters):
    args = rl3_meta.Args(domain=domain, horizon=horizon, vi_init=vi_init)
    rl3_meta.validate(args)
    model = rl3_meta.object_level_learner(args, rl3_meta.make_env(args, 1))
    assert (model.restart, model.max_iters) == (restart, max_iters)


def test_coarse_abstraction_merges_at_most_two_adjacent_cells():
    for size in gridworld.SIZES:
        args = rl3_meta.Args(algo="rl3-coarse", domain="gridworld", grid_size=size)
        rl3_meta.validate(args)
        env = gridworld.GridworldEnv(1, args.horizon, "standard", size)
        phi = rl3_meta.state_abstraction(args, env)
        assert phi.max() + 1 == size * (size + 1) // 2
        for cluster in range(phi.max() + 1):
            cells = np.flatnonzero(phi == cluster)
            assert 1 <= len(cells) <= 2
            if len(cells) == 2:
                (r1, c1), (r2, c2) = divmod(cells[0], size), divmod(cells[1], size)
                assert abs(r1 - r2) + abs(c1 - c2) == 1
        args.algo = "rl3"
        assert np.array_equal(rl3_meta.state_abstraction(args, env), np.arange(size * size))


def test_incremental_decoding_matches_full_causal_forward():
    torch.manual_seed(0)
    net = rl3_meta.CausalTransformer(7, 3, 12, rl3_meta.Args(), head_std=1.0)
    x = torch.randn(5, 12, 7)
    full = net(x)
    cache = net.new_cache(5)
    steps = torch.stack([net.step(x[:, t], t, cache) for t in range(12)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)
    x2 = x.clone()
    x2[:, 8:] += 1.0  # causality: changing a later input leaves earlier outputs unchanged
    torch.testing.assert_close(net(x2)[:, :8], full[:, :8])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 autocast: same outputs up to bf16 rounding
        cache = net.new_cache(5)
        steps = torch.stack([net.step(x[:, t], t, cache).float() for t in range(12)], dim=1)
    torch.testing.assert_close(steps, full, atol=0.1, rtol=0.05)


def test_rl2_and_rl3_inputs_differ_only_by_the_object_level_vector():
    for algo, extra in [("rl2", 0), ("rl3", 11), ("rl3-coarse", 11)]:
        args = rl3_meta.Args(algo=algo, domain="bandit")
        rl3_meta.validate(args)
        assert rl3_meta.input_dim(args, bandit.BanditEnv(1, 100)) == 5 + 4 + 1 + extra


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_bf16_run_writes_fp32_checkpoint_and_auto_is_stored_resolved(tmp_path, capsys, precision):
    code, _, err, run_dir = train(tmp_path, capsys, "--precision", precision, "--domain", "bandit", "--horizon", "10",
                                  "--total-timesteps", "40", "--ood", "none", *TINY)  # fmt: skip
    assert code == 0, err
    checkpoint = torch.load(os.path.join(run_dir, "agent.pt"), weights_only=True)
    assert all(v.dtype == torch.float32 for v in checkpoint["model"].values())
    # auto: bf16 where the CPU multiplies bf16 natively (AMX / AVX512-BF16), fp32 elsewhere; the checkpoint says which
    expected = resolve_precision(precision, torch.device("cpu"))
    assert checkpoint["args"]["precision"] == expected


def test_learning_beats_random_on_bandits(tmp_path, capsys):
    code, out, err, run_dir = train(tmp_path, capsys, "--algo", "rl3", "--domain", "bandit", "--horizon", "20",
                                    "--num-tasks", "64", "--minibatch-size", "320", "--learning-rate", "2e-3",
                                    "--ent-coef", "0.01", "--target-kl", "0.05", "--total-timesteps", "12800",
                                    "--eval-episodes", "200", "--ood", "none")  # fmt: skip
    assert code == 0, err
    with open(os.path.join(run_dir, "eval.json")) as f:
        result = json.load(f)["eval"]["uniform"]
    rl, random_policy = result["rl"]["normalized_mean"], result["random"]["normalized_mean"]
    assert rl > random_policy + 0.05 and rl > random_policy + 3 * result["rl"]["normalized_std"] / np.sqrt(200), out
