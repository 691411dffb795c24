"""ddqn_relative.py: Double-DQN target, frame replay memory, smoke/resume/reproducibility runs, bad flags."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
import tyro

import ddqn_relative as ddqn
import ppo_relative
from envs.car_racing import ColorCarRacingObservation

# A tiny anchor recipe so that building the anchor set costs seconds, not minutes.
TINY_ANCHORS = ["--num-anchors", "16", "--anchor-steps-per-track", "20"]


def run_script(repo_root, *flags, timeout=240):
    return subprocess.run(
        [sys.executable, "ddqn_relative.py", *flags], cwd=repo_root, capture_output=True, text=True, timeout=timeout
    )


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
SMOKE = ["--total-timesteps", "128", "--num-envs", "2", "--frame-stack", "2", "--learning-starts", "16",
         "--batch-size", "4", "--train-frequency", "1", "--target-network-frequency", "32",
         "--anchor-update-frequency", "4", "--eval-episodes", "0", *TINY_ANCHORS]


def test_smoke_writes_a_loadable_contract_checkpoint_and_resumes(repo_root, tmp_path):
    result = run_script(repo_root, *SMOKE, "--runs-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = tmp_path.glob("*/agent.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "r3l-agent-v1"
    checkpoint = ddqn.load_checkpoint(str(path))
    metadata = checkpoint["metadata"]
    assert metadata["algorithm"] == "ddqn" and metadata["relative"] and metadata["num_anchors"] == 16
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

    resumed = run_script(repo_root, "--resume", str(path.parent), "--total-timesteps", "144", "--eval-episodes", "0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = ddqn.load_checkpoint(str(path))
    assert after["metadata"]["global_step"] == 144
    assert after["training_state"]["num_updates"] > checkpoint["training_state"]["num_updates"]
    with pytest.raises(ValueError, match="--bg-color 'red' differs"):
        ddqn.resumed_args(tyro.cli(ddqn.Args, args=["--bg-color", "red"]), after)
    resumed_args = ddqn.resumed_args(tyro.cli(ddqn.Args, args=["--total-timesteps", "500"]), after)
    assert resumed_args.total_timesteps == 500 and resumed_args.frame_stack == 2 and resumed_args.num_anchors == 16


def test_same_seed_same_numbers_absolute(repo_root, tmp_path):
    flags = ["--no-relative", "--total-timesteps", "32", "--learning-starts", "8", "--batch-size", "4",
             "--train-frequency", "2", "--target-network-frequency", "16", "--eval-episodes", "0"]
    weights = []
    for name in ("a", "b"):
        result = run_script(repo_root, *flags, "--runs-dir", str(tmp_path / name))
        assert result.returncode == 0, result.stderr[-2000:]
        (path,) = (tmp_path / name).glob("*/agent.pt")
        checkpoint = ddqn.load_checkpoint(str(path))
        assert checkpoint["metadata"]["anchor_set_id"] is None and checkpoint["metadata"]["latent_dim"] == 3136
        weights.append(checkpoint)
    for part in ("encoder", "policy"):
        for key, value in weights[0][part].items():
            assert torch.equal(value, weights[1][part][key]), key


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, names",
    [
        (["--bg-color", "purple"], ["'purple'", "green", "#rrggbb"]),
        (["--task", "fast"], ["'fast'", "standard", "no_idle"]),
        (["--frame-stack", "0"], ["--frame-stack", "0", ">= 1"]),
        (["--anchor-ema", "1.5"], ["--anchor-ema", "1.5", "[0, 1)"]),
        (["--num-anchors", "5000", "--anchor-steps-per-track", "20"], ["--num-anchors", "5000", "[1, 80]"]),
        (["--num-envs", "0"], ["--num-envs", "0", ">= 1"]),
        (["--buffer-size", "5", "--frame-stack", "4"], ["--buffer-size", "5"]),
        (["--learning-starts", "200", "--buffer-size", "100"], ["--learning-starts", "200"]),
        (["--exploration-fraction", "0"], ["--exploration-fraction", "0", "(0, 1]"]),
        (["--capture-video", "--eval-episodes", "0"], ["--capture-video", "--eval-episodes >= 1"]),
    ],
)
def test_bad_flags_are_one_line_value_errors(flags, names):
    args = tyro.cli(ddqn.Args, args=flags)
    with pytest.raises(ValueError) as err:
        ddqn.validate_args(args)
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in names), message


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--task", "fast"], ["--task 'fast'", "standard"]),
        (["--resume", "no/such/agent.pt"], ["'no/such/agent.pt'", "does not exist"]),
    ],
)
def test_bad_input_exits_with_one_line_and_no_traceback(repo_root, tmp_path, flags, names):
    result = run_script(repo_root, *flags, "--runs-dir", str(tmp_path))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message and message.startswith("error: ")
    assert all(name in message for name in names), message
    assert not list(tmp_path.iterdir())  # nothing written


def test_bad_checkpoints_are_one_line_value_errors(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(ValueError, match="does not exist"):
        ddqn.load_checkpoint(str(missing))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable torch file"):
        ddqn.load_checkpoint(str(garbage))
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(ValueError, match="'something-else'"):
        ddqn.load_checkpoint(str(other))
    ppo = tmp_path / "ppo.pt"
    metadata = {key: None for key in ddqn.REQUIRED_METADATA} | {"algorithm": "ppo"}
    torch.save({"format": "r3l-agent-v1", "encoder": {}, "policy": {}, "metadata": metadata, "training_state": {}}, ppo)
    with pytest.raises(ValueError, match="holds a 'ppo' agent") as err:
        ddqn.load_checkpoint(str(ppo))
    assert "\n" not in str(err.value)
