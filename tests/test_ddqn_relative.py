"""ddqn_relative.py: Double-DQN target, action repeat, frame replay memory, bf16, runs (smoke, resume, reproducibility,
SIGTERM), bad input."""

import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import run_script_in_process

import ddqn_relative as ddqn
import ppo_relative
from envs.car_racing import ColorCarRacingObservation
from envs.checkpoint import AGENT_METADATA

# A tiny anchor recipe so that building the anchor set costs seconds, not minutes.
TINY_ANCHORS = ["--num-anchors", "16", "--anchor-steps-per-track", "20"]


SCRIPT = str(ddqn.__file__)


# ------------------------------------------------------------------------------------------------
# Double-DQN target
# ------------------------------------------------------------------------------------------------
def test_double_dqn_target_matches_hand_computation():
    rewards = torch.tensor([1.0, -0.5, 2.0])
    terminations = torch.tensor([0.0, 0.0, 1.0])
    next_q_online = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    next_q_target = torch.tensor([[10.0, 20.0, 30.0], [7.0, 8.0, 9.0], [1.0, 2.0, 3.0]])
    target = ddqn.double_dqn_target(rewards, terminations, next_q_online, next_q_target, gamma=0.9)
    # online argmax -> actions (1, 0, 2); the target network values them: 20, 7, (3, but terminal)
    # y = (1 + 0.9*20, -0.5 + 0.9*7, 2) = (19, 5.8, 2); plain DQN's max_a Q_target would give (28, 7.6, 2).
    torch.testing.assert_close(target, torch.tensor([19.0, 5.8, 2.0]))


def test_truncation_does_not_stop_the_bootstrap_in_the_stored_transition():
    """Only `terminated` enters the TD target; a truncated transition keeps gamma * Q(s')."""
    q = torch.tensor([[1.0, 2.0]])
    bootstrapped = ddqn.double_dqn_target(torch.tensor([0.0]), torch.tensor([0.0]), q, q, 0.5)
    torch.testing.assert_close(bootstrapped, torch.tensor([1.0]))


def test_crossed_counts_the_multiples_a_vector_step_passes():
    assert [ddqn.crossed(step, 1, 4) for step in range(1, 9)] == [0, 0, 0, 1, 0, 0, 0, 1]
    assert [ddqn.crossed(step, 3, 4) for step in (3, 6, 9, 12)] == [0, 1, 1, 1]  # (0,3], (3,6], (6,9], (9,12]
    assert ddqn.crossed(8, 8, 2) == 4  # eight envs, one gradient step per 2 steps: 4 gradient steps


def test_linear_epsilon_schedule():
    assert ddqn.linear_schedule(1.0, 0.05, 100, 0) == 1.0
    assert ddqn.linear_schedule(1.0, 0.05, 100, 50) == pytest.approx(0.525)
    assert ddqn.linear_schedule(1.0, 0.05, 100, 1000) == 0.05


@pytest.mark.parametrize("relative", [True, False])
def test_encoder_state_dicts_load_across_algorithms_both_ways(relative):
    torch.manual_seed(0)
    ddqn_encoder, ppo_encoder = ddqn.Encoder(2, relative, 8), ppo_relative.Encoder(2, relative, 8)
    assert ddqn_encoder.state_dict().keys() == ppo_encoder.state_dict().keys()
    anchors = torch.randint(0, 256, (8, 3, 84, 84), dtype=torch.uint8)
    ddqn_encoder.update_anchors(anchors)
    ppo_encoder.load_state_dict(ddqn_encoder.state_dict())
    obs = torch.randint(0, 256, (4, 6, 84, 84), dtype=torch.uint8)
    torch.testing.assert_close(ppo_encoder(obs), ddqn_encoder(obs))
    ddqn.Encoder(2, relative, 8).load_state_dict(ppo_relative.Encoder(2, relative, 8).state_dict())
    # the Q-head takes the same latent as PPO's Policy and returns one value per action
    q_network = ddqn.QNetwork(ddqn_encoder.latent_dim, 5)
    assert q_network(ddqn_encoder(obs)).shape == (4, 5)
    assert ppo_relative.Policy(ppo_encoder.latent_dim, 5)(ppo_encoder(obs))[0].shape == (4, 5)
    assert q_network.trunk[2].in_features == ppo_relative.Policy(ppo_encoder.latent_dim, 5).trunk[2].in_features


class RewardScriptEnv(gym.Env):
    """Rewards from a list, one per frame; terminates when the list ends."""

    observation_space = gym.spaces.Box(0, 255, (96, 96, 3), np.uint8)
    action_space = gym.spaces.Discrete(5)

    def __init__(self, rewards):
        self.rewards, self.t = rewards, 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros((96, 96, 3), np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.zeros((96, 96, 3), np.uint8), self.rewards[self.t - 1], self.t == len(self.rewards), False, {}


def test_action_repeat_sums_rewards_and_stops_at_the_episode_end():
    env = ddqn.ActionRepeat(RewardScriptEnv([1.0, 2.0, 3.0, 4.0, 5.0]), repeat=3)
    env.reset()
    assert env.step(0)[1:4] == (6.0, False, False)
    assert env.step(0)[1:4] == (9.0, True, False)  # two frames left: the repeat stops at the termination


def test_progress_patience_truncates_after_frames_without_a_new_tile():
    rewards = [-0.1, -0.1, 3.0, -0.1, -0.1, -0.1, -0.1, -0.1, -0.1, -0.1]
    env = ddqn.ActionRepeat(RewardScriptEnv(rewards), repeat=2, patience=4)
    env.reset()
    outcomes = [env.step(0)[2:4] for _ in range(4)]
    # frames 1-2 idle, 3 a tile (counter reset), 4-7 idle: the 4th idle frame (7) falls in the 4th step
    assert outcomes == [(False, False), (False, False), (False, False), (False, True)]
    env = ddqn.ActionRepeat(RewardScriptEnv(rewards), repeat=2, patience=0)
    env.reset()
    assert [env.step(0)[2:4] for _ in range(5)][-1] == (True, False)  # patience 0: the whole episode


def test_bf16_forward_uses_the_cached_bf16_anchors_and_stays_close_to_fp32():
    torch.manual_seed(0)
    encoder = ddqn.Encoder(1, True, 32)
    encoder.update_anchors(torch.randint(0, 256, (32, 3, 84, 84), dtype=torch.uint8))
    projection = encoder.projection
    assert projection.anchor_embeddings.dtype == torch.float32  # the EMA buffer stays fp32
    torch.testing.assert_close(
        projection.normalized_anchors_t_bf16.float(), projection.normalized_anchors_t, atol=1e-2, rtol=1e-2
    )
    assert "normalized_anchors_t_bf16" not in encoder.state_dict()  # derived, never saved
    obs = torch.randint(0, 256, (4, 3, 84, 84), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = encoder(obs)
        encoder.update_anchors(torch.randint(0, 256, (32, 3, 84, 84), dtype=torch.uint8))
    assert projection.anchor_embeddings.dtype == torch.float32
    assert low.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# Replay memory
# ------------------------------------------------------------------------------------------------
class CodedFramesEnv(gym.Env):
    """96x96 frames of one colour that encodes (env, episode, t); episodes of 2-6 steps that end by
    termination or truncation. The shared `ColorCarRacingObservation` wrapper stacks them exactly as
    it stacks CarRacing frames."""

    observation_space = gym.spaces.Box(0, 255, (96, 96, 3), np.uint8)
    action_space = gym.spaces.Discrete(5)

    def __init__(self, env_id: int):
        self.env_id, self.episode, self.t, self.length = env_id, -1, 0, 0

    def frame(self):
        return np.full((96, 96, 3), (self.env_id, self.episode, self.t), dtype=np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        self.length = int(self.np_random.integers(2, 7))
        return self.frame(), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        terminated, truncated = done and self.episode % 2 == 0, done and self.episode % 2 == 1
        return self.frame(), float(10 * self.episode + self.t + action / 10), terminated, truncated, {}


def collect(num_envs, frame_stack, capacity, steps, seed=0):
    """Drive a vector env as the training loop does; return the buffer, the real transitions and the
    autoreset pseudo-transitions (terminal obs -> reset obs) that must never be stored."""
    envs = gym.vector.SyncVectorEnv(
        [lambda i=i: ColorCarRacingObservation(CodedFramesEnv(i), frame_stack) for i in range(num_envs)]
    )
    rb = ddqn.FrameReplayBuffer(capacity, num_envs, frame_stack)
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    rb.start(obs)
    episode_start = np.zeros(num_envs, dtype=np.bool_)
    real, pseudo = [], []
    for step in range(steps):
        actions = rng.integers(5, size=num_envs)
        next_obs, rewards, terminations, truncations, _ = envs.step(actions)
        rb.add(next_obs, actions, rewards, terminations, episode_start)
        for i in range(num_envs):
            record = (obs[i].tobytes(), next_obs[i].tobytes())
            if episode_start[i]:
                pseudo.append(record)
            else:
                real.append((step, *record, int(actions[i]), np.float32(rewards[i]), bool(terminations[i])))
        episode_start = terminations | truncations
        obs = next_obs
    envs.close()
    return rb, real, pseudo


def decode(stacked):
    """(3*fs, 84, 84) -> list of (env, episode, t) per frame (every frame is one colour)."""
    return [tuple(int(c) for c in stacked[3 * k : 3 * k + 3, 0, 0]) for k in range(len(stacked) // 3)]


STEPS = 60


@pytest.mark.parametrize("num_envs, frame_stack", [(1, 1), (2, 3), (3, 4)])
def test_buffer_returns_exactly_what_the_env_produced(num_envs, frame_stack):
    # Small ring (7 positions per env), many steps: overwriting and episode boundaries happen often.
    rb, real, pseudo = collect(num_envs, frame_stack, capacity=7 * num_envs, steps=STEPS)
    batch = rb.sample(600, np.random.default_rng(1))
    assert batch["obs"].shape == (600, 3 * frame_stack, 84, 84) and batch["obs"].dtype == np.uint8
    recorded = set(record[1:] for record in real)
    pseudo = set(pseudo)
    sampled = set()
    for j in range(600):
        key = (batch["obs"][j].tobytes(), batch["next_obs"][j].tobytes())
        assert key not in pseudo  # no next_obs across a reset
        full = key + (int(batch["actions"][j]), batch["rewards"][j], bool(batch["terminations"][j]))
        assert full in recorded  # bit-exact (obs, action, reward, next_obs, terminated) of a real step
        sampled.add(full)
    # Every real transition of the newest positions - frame_stack steps is in the ring (and sampled); only
    # the oldest frame_stack positions per env may have lost frames to overwriting.
    newest = set(record[1:] for record in real if record[0] >= STEPS - (rb.positions - frame_stack))
    assert newest and newest <= sampled
    assert len(rb) == len(sampled)


def test_buffer_frame_stacks_repeat_the_first_frame_at_episode_starts():
    frame_stack = 4
    rb, _, _ = collect(2, frame_stack, capacity=40, steps=40)
    batch = rb.sample(300, np.random.default_rng(2))
    starts = 0
    for obs, next_obs in zip(batch["obs"], batch["next_obs"]):
        frames = decode(obs) + decode(next_obs)[-1:]
        env, episode, t_next = frames[-1]
        assert {(e, ep) for e, ep, _ in frames} == {(env, episode)}  # one env, one episode
        expected = [max(t_next - frame_stack + k, 0) for k in range(frame_stack + 1)]
        assert [t for _, _, t in frames] == expected  # consecutive steps, the first frame repeated
        starts += t_next == 1
    assert starts > 0


def test_buffer_memory_is_one_frame_per_transition():
    rb = ddqn.FrameReplayBuffer(100_000, 4, frame_stack=4)
    frame_bytes = 3 * 84 * 84
    assert rb.frames.nbytes == 100_000 * frame_bytes
    assert rb.nbytes == 100_000 * (frame_bytes + 4 * 5 + 8 + 4 + 1 + 1)
    assert rb.nbytes < 0.15 * 100_000 * 2 * 4 * frame_bytes  # vs obs + next_obs stored with 4 frames each


# ------------------------------------------------------------------------------------------------
# Whole runs
# ------------------------------------------------------------------------------------------------
SMOKE = [
    "--total-timesteps",
    "128",
    "--num-envs",
    "2",
    "--frame-stack",
    "2",
    "--learning-starts",
    "16",
    "--batch-size",
    "4",
    "--train-frequency",
    "1",
    "--target-network-frequency",
    "32",
    "--anchor-update-frequency",
    "4",
    "--eval-episodes",
    "0",
    *TINY_ANCHORS,
]
ABSOLUTE = [
    "--no-relative",
    "--total-timesteps",
    "32",
    "--learning-starts",
    "8",
    "--batch-size",
    "4",
    "--train-frequency",
    "2",
    "--target-network-frequency",
    "16",
    "--eval-episodes",
    "0",
]


def run(flags, tmp_path, capsys):
    """The script's __main__ in this process, with --runs-dir tmp_path/runs; (exit code, stdout, stderr)."""
    return run_script_in_process(SCRIPT, flags, tmp_path, capsys)


def test_smoke_writes_a_loadable_contract_checkpoint_and_resumes(tmp_path, capsys):
    code, out, err = run([*SMOKE, "--precision", "fp32"], tmp_path, capsys)
    assert code == 0, err[-2000:]
    (path,) = (tmp_path / "runs").glob("*/agent.pt")
    checkpoint = ddqn.load_checkpoint(str(path))
    metadata = checkpoint["metadata"]
    assert metadata["algorithm"] == "ddqn" and metadata["relative"] and metadata["num_anchors"] == 16
    assert metadata["view"] == "near" and metadata["task"] == "standard" and metadata["args"]["precision"] == "fp32"
    assert metadata["latent_dim"] == 2 * 16 and metadata["num_actions"] == 5 and metadata["global_step"] == 128
    assert metadata["anchor_set_id"] == ddqn.AnchorRecipe(steps_per_track=20, num_anchors=16).set_id
    assert set(checkpoint["training_state"]) >= {"target_encoder", "target_network", "optimizer", "global_step"}
    assert checkpoint["training_state"]["num_updates"] > 100
    assert not any("rb" in k or "buffer" in k for k in checkpoint["training_state"])

    encoder, q_network = ddqn.agent_from_checkpoint(checkpoint)
    assert bool(encoder.projection.anchors_initialized)
    obs = torch.randint(0, 256, (3, 6, 84, 84), dtype=torch.uint8)
    actions = q_network.greedy_action(encoder(obs))
    assert actions.dtype == torch.long and actions.shape == (3,)
    # Stitching across algorithms: the DDQN encoder loads into ppo_relative.Encoder and gives the same latent.
    ppo_encoder = ppo_relative.Encoder(2, True, 16, 0.999, False)
    ppo_encoder.load_state_dict(checkpoint["encoder"])
    torch.testing.assert_close(ppo_encoder(obs), encoder(obs))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(path.parent)).Reload().Tags()["scalars"]
    assert {"losses/td_loss", "losses/q_values", "charts/SPS", "charts/epsilon"} <= set(tags)

    code, out, err = run(["--resume", str(path.parent), "--total-timesteps", "144", "--eval-episodes", "0"], tmp_path, capsys)
    assert code == 0, err[-2000:]
    assert "resumed" in out + err
    after = ddqn.load_checkpoint(str(path))
    assert after["metadata"]["global_step"] == 144
    assert after["metadata"]["args"]["precision"] == "fp32"  # a run flag left out keeps the run's value
    assert after["training_state"]["num_updates"] > checkpoint["training_state"]["num_updates"]
    code, out, err = run(["--resume", str(path), "--bg-color", "red"], tmp_path, capsys)
    assert code == 2 and "error: --bg-color 'red' differs from the resumed run's 'green'" in err
    code, out, err = run(["--resume", str(path), "--total-timesteps", "144"], tmp_path, capsys)
    assert code == 2 and "is already at step 144" in err


def test_fp32_same_seed_same_numbers_and_a_final_evaluation(tmp_path, capsys):
    checkpoints, evaluations = [], []
    for name in ("a", "b"):
        code, out, err = run(
            [*ABSOLUTE, "--precision", "fp32", "--eval-episodes", "1", "--runs-dir", str(tmp_path / name)], tmp_path, capsys
        )
        assert code == 0, err[-2000:]
        (path,) = (tmp_path / name).glob("*/agent.pt")
        checkpoint = ddqn.load_checkpoint(str(path))
        assert checkpoint["metadata"]["anchor_set_id"] is None and checkpoint["metadata"]["latent_dim"] == 3136
        checkpoints.append(checkpoint)
        (line,) = [line for line in out.splitlines() if line.startswith("eval_return_mean=")]
        evaluations.append(line)
    for part in ("encoder", "policy"):
        for key, value in checkpoints[0][part].items():
            assert torch.equal(value, checkpoints[1][part][key]), key
    assert evaluations[0] == evaluations[1] and "eval_return_std=" in evaluations[0]


def test_far_task_alias_trains_the_far_view_of_the_standard_task(tmp_path, capsys):
    code, out, err = run([*ABSOLUTE, "--task", "far", "--total-timesteps", "16"], tmp_path, capsys)
    assert code == 0, err[-2000:]
    (path,) = (tmp_path / "runs").glob("ColorCarRacing-green-far-standard__*/agent.pt")
    metadata = ddqn.load_checkpoint(str(path))["metadata"]
    assert (metadata["view"], metadata["task"], metadata["args"]["view"]) == ("far", "standard", "far")


def test_bf16_run_writes_fp32_tensors_that_stitch_with_fp32_modules(tmp_path, capsys):
    code, out, err = run([*SMOKE, "--precision", "bf16", "--frame-stack", "1", "--num-envs", "1"], tmp_path, capsys)
    assert code == 0, err[-2000:]
    (path,) = (tmp_path / "runs").glob("*/agent.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = raw["training_state"]
    tensors = [
        *raw["encoder"].values(),
        *raw["policy"].values(),
        *state["target_encoder"].values(),
        *state["target_network"].values(),
    ]
    tensors += [v for s in state["optimizer"]["state"].values() for v in s.values() if v.is_floating_point()]
    floating = [t for t in tensors if t.is_floating_point()]
    assert floating and all(t.dtype == torch.float32 for t in floating)
    assert raw["metadata"]["args"]["precision"] == "bf16"
    # a bf16-trained encoder feeds an fp32 Q-head (and an fp32 PPO policy); an fp32 encoder feeds the bf16-trained head
    encoder, q_network = ddqn.agent_from_checkpoint(ddqn.load_checkpoint(str(path)))
    fp32_encoder = ddqn.Encoder(1, True, 16)
    fp32_encoder.update_anchors(torch.randint(0, 256, (16, 3, 84, 84), dtype=torch.uint8))
    obs = torch.randint(0, 256, (2, 3, 84, 84), dtype=torch.uint8)
    assert q_network(fp32_encoder(obs)).dtype == torch.float32
    assert ppo_relative.Policy(16, 5)(encoder(obs))[0].shape == (2, 5)


def test_sigterm_writes_the_checkpoint_and_prints_one_line_then_resume_continues(repo_root, tmp_path):
    runs = tmp_path / "runs"
    flags = [*ABSOLUTE, "--total-timesteps", "100000", "--save-every", "16", "--runs-dir", str(runs)]
    process = subprocess.Popen(
        [sys.executable, SCRIPT, *flags], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not list(runs.glob("*/agent.pt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    (path,) = runs.glob("*/agent.pt")
    lines = [line for line in err.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"stopped by SIGTERM: checkpoint at {path} (global_step=")
    assert lines[0].endswith(f"resume with: python ddqn_relative.py --resume {path}")
    step = ddqn.load_checkpoint(str(path))["metadata"]["global_step"]
    assert f"(global_step={step})" in lines[0] and step >= 16
    resumed = subprocess.run(
        [sys.executable, SCRIPT, "--resume", str(path), "--total-timesteps", str(step + 16), "--eval-episodes", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ddqn.load_checkpoint(str(path))["metadata"]["global_step"] == step + 16


def test_resumed_logs_purge_the_steps_after_the_checkpoint(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    flags = [*ABSOLUTE, "--precision", "fp32", "--train-frequency", "1", "--action-repeat", "1"]  # scalars every 100 updates
    assert run([*flags, "--total-timesteps", "220"], tmp_path, capsys)[0] == 0  # logs steps 107, 207
    (path,) = (tmp_path / "runs").glob("*/agent.pt")
    at_220 = path.parent / "at_220.pt"
    at_220.write_bytes(path.read_bytes())
    no_eval = ["--eval-episodes", "0"]
    assert run(["--resume", str(path), "--total-timesteps", "420", *no_eval], tmp_path, capsys)[0] == 0  # 314, 414: then lost
    assert run(["--resume", str(at_220), "--total-timesteps", "330", *no_eval], tmp_path, capsys)[0] == 0  # 314 again
    steps = [event.step for event in EventAccumulator(str(path.parent)).Reload().Scalars("charts/epsilon")]
    assert steps == [107, 207, 314]  # the lost run's steps after the checkpoint are purged, nothing overlaps


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, names",
    [
        (["--bg-color", "purple"], ["'purple'", "green", "#rrggbb"]),
        (["--task", "fast"], ["'fast'", "standard", "no_idle"]),
        (["--precision", "fp16"], ["--precision", "'fp16'", "auto, bf16, fp32"]),
        (["--view", "up"], ["--view 'up'", "near, far"]),
        (["--frame-stack", "0"], ["--frame-stack", "0", ">= 1"]),
        (["--action-repeat", "0"], ["--action-repeat", "0", ">= 1"]),
        (["--progress-patience", "-1"], ["--progress-patience", "-1", ">= 0"]),
        (["--anchor-ema", "1.5"], ["--anchor-ema", "1.5", "[0, 1)"]),
        (["--num-anchors", "5000", "--anchor-steps-per-track", "20"], ["--num-anchors", "5000", "[1, 80]"]),
        (["--num-envs", "0"], ["--num-envs", "0", ">= 1"]),
        (["--buffer-size", "5", "--frame-stack", "4"], ["--buffer-size", "5"]),
        (["--learning-starts", "200", "--buffer-size", "100"], ["--learning-starts", "200"]),
        (["--total-timesteps", "512"], ["--total-timesteps", "512", "--learning-starts (5000)", "no gradient step"]),
        (["--exploration-fraction", "0"], ["--exploration-fraction", "0", "(0, 1]"]),
        (["--save-every", "-1"], ["--save-every", "-1", "environment steps"]),
        (["--capture-video", "--eval-episodes", "0"], ["--capture-video", "--eval-episodes >= 1"]),
    ],
)
def test_bad_flags_are_one_line_errors(flags, names, tmp_path, capsys):
    code, out, err = run(flags, tmp_path, capsys)
    message = err.strip()
    assert code == 2 and "\n" not in message and message.startswith("error: "), message
    assert all(name in message for name in names), message
    assert not (tmp_path / "runs").exists()  # nothing written


def test_bad_input_exits_with_one_line_and_no_traceback(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        (["--task", "fast"], ["--task 'fast'", "standard"]),
        (["--total-timesteps", "512"], ["--total-timesteps 512", "no gradient step"]),
        (["--resume", "no/such/agent.pt"], ["'no/such/agent.pt'", "does not exist"]),
        (["--resume", str(garbage)], [str(garbage), "not a checkpoint of this collection"]),
        (["--no-relative", "--runs-dir", str(blocker / "runs")], ["--runs-dir", "not a writable folder"]),
    ]
    for flags, names in cases:
        code, out, err = run(flags, tmp_path, capsys)
        message = err.strip()
        assert code == 2, (flags, err[-2000:])
        assert "\n" not in message and message.startswith("error: ") and "weights_only" not in message, message
        assert all(name in message for name in names), message
    assert not (tmp_path / "runs").exists()  # nothing written


def test_bad_checkpoints_are_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ddqn.load_checkpoint(str(tmp_path / "missing.pt"))
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(ValueError, match="'something-else'"):
        ddqn.load_checkpoint(str(other))
    ppo = tmp_path / "ppo.pt"
    metadata = {key: None for key in AGENT_METADATA} | {"algorithm": "ppo"}
    torch.save({"format": "r3l-agent-v1", "encoder": {}, "policy": {}, "metadata": metadata, "training_state": {}}, ppo)
    with pytest.raises(ValueError, match="holds a 'ppo' agent") as err:
        ddqn.load_checkpoint(str(ppo))
    assert "\n" not in str(err.value)
