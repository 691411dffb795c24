# docs and experiment results can be found in docs/ddqn_relative.md
"""Double DQN with relative (or absolute) representations on colour-variable CarRacing.

R3L: Ricciardi et al., "R3L: Relative Representations for Reinforcement Learning" (arXiv 2404.12917), and the
workshop paper by the same authors, "Zero-shot stitching in Reinforcement Learning using Relative
Representations". Both stitch across training algorithms: an encoder trained with DDQN drives a policy trained
with PPO and vice versa. This file trains the DDQN side with the *same* encoder and relative projection as
`ppo_relative.py` (same parameter names), so that its encoder loads into `ppo_relative.Encoder` and its Q-head,
whose greedy action is the policy, sits on top of a PPO encoder:

    z = E(x) E(A)^T (cosine, anchor-centred; workshop paper eq. 2-3),   Q(s, .) = head(z),   pi(s) = argmax_a Q(s, a)

Double DQN (van Hasselt, Guez and Silver, "Deep Reinforcement Learning with Double Q-learning", AAAI 2016, eq. 4):

    y = r + gamma (1 - terminated) Q_target(s', argmax_a Q_online(s', a)),   loss = Huber(Q_online(s, a) - y)

Frame skipping as in Mnih et al., "Human-level control through deep reinforcement learning" (Nature 2015): one
agent step repeats its action for `--action-repeat` frames and sums their rewards.

    python ddqn_relative.py --bg-color green                  # relative representation (default)
    python ddqn_relative.py --bg-color green --no-relative    # absolute baseline
    python ddqn_relative.py --resume runs/<run_name>/agent.pt # continue a run from its checkpoint
"""

import functools
import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Optional

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from envs.anchors import AnchorRecipe, load_anchor_set  # importing the envs package registers ColorCarRacing-v0
from envs.car_racing import NAMED_COLORS, TASKS, VIEWS, ColorCarRacingObservation, parse_bg_color, resolve_view_task
from envs.checkpoint import (
    AGENT_FILE,
    GracefulStop,
    agent_payload,
    ensure_writable_dir,
    fail,
    load_agent_checkpoint,
    resolve_precision,
    resume_args,
    save_atomic,
)


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    torch_threads: int = 1
    """number of CPU threads torch may use (1 keeps CPU runs reproducible and polite on shared machines)"""
    precision: str = "auto"
    """forward passes in bf16 (torch.autocast; weights, optimiser, targets, losses and checkpoints stay fp32) or fp32
    (bit-reproducible); auto: bf16 where the device computes it natively (CUDA with bf16, CPUs with AMX or
    AVX512-BF16), else fp32"""
    capture_video: bool = False
    """if toggled, save GIFs of the agent's view during the final evaluation episodes to `videos/{run_name}/`"""
    runs_dir: str = "runs"
    """directory that receives `{run_name}/` (TensorBoard logs and the checkpoint `agent.pt`)"""
    save_every: int = 10_000
    """write the checkpoint every this many environment steps (0: only at the end)"""
    resume: Optional[str] = None
    """continue the run stored in this checkpoint (`runs/{run_name}/agent.pt` or its directory)"""
    eval_episodes: int = 10
    """number of deterministic (argmax) evaluation episodes at the end (0 disables the evaluation)"""

    # Environment arguments
    bg_color: str = "green"
    """background colour: green, red, blue, yellow, violet, pink or a hex colour '#rrggbb'"""
    view: str = "near"
    """camera: near (gymnasium's zoom) or far (zoom 1, R3L's far-camera variation); anchors depend on colour and view"""
    task: str = "standard"
    """task variant: standard, slow, scrambled or no_idle (reward rule, actions, episode length); 'far' = --view far"""
    frame_stack: int = 1
    """number of stacked RGB frames per observation (the workshop paper uses 1, R3L uses 4)"""
    action_repeat: int = 4
    """frames per environment step: the action is repeated and the rewards summed (Mnih et al. 2015 frame skip)"""
    progress_patience: int = 100
    """training episodes are truncated (bootstrapped, not terminated) after this many frames without a new track
    tile (0: never); evaluation always plays whole episodes"""
    num_envs: int = 1
    """the number of parallel game environments"""

    # Representation arguments
    relative: bool = True
    """relative representation (cosine similarity to the anchor embeddings); --no-relative: absolute latent"""
    num_anchors: int = 3136
    """number of anchor frames (default 3136 = 64*7*7, the absolute latent size)"""
    anchor_ema: float = 0.999
    """EMA coefficient of the anchor embeddings per gradient step (the authors' rate; see docs)"""
    anchor_standardize: bool = False
    """also divide latents by the anchors' per-dimension std (the authors' code; not rotation invariant)"""
    anchor_steps_per_track: int = 1000
    """steps the scripted driver records on each of the anchor recipe's 4 tracks (anchor pool size)"""
    anchor_update_frequency: int = 50
    """gradient steps between two EMA steps of the anchor embeddings (an anchor forward costs num_anchors frames)"""

    # Algorithm specific arguments
    total_timesteps: int = 250_000
    """total environment steps of the experiment (all envs together; frames = action_repeat x steps)"""
    learning_rate: float = 1e-4
    """the learning rate of the optimizer (Adam)"""
    buffer_size: int = 100_000
    """the replay memory buffer size in transitions (all envs together; ~2.1 GB per 100k)"""
    gamma: float = 0.99
    """the discount factor gamma (per environment step)"""
    target_network_frequency: int = 1000
    """environment steps between two copies of the online network (encoder included) into the target network"""
    batch_size: int = 32
    """the batch size of transitions sampled from the replay memory"""
    start_e: float = 1.0
    """the starting epsilon for exploration"""
    end_e: float = 0.05
    """the ending epsilon for exploration"""
    exploration_fraction: float = 0.1
    """the fraction of `total_timesteps` it takes for epsilon to go from start_e to end_e"""
    learning_starts: int = 5_000
    """transitions in the replay memory before learning starts"""
    train_frequency: int = 4
    """environment steps between two gradient steps"""


# ---------------------------------------------------------------------------------------------------------
# Networks. `layer_init`, `NATURE_CNN_LATENT`, `RelativeProjection` and `Encoder` are copied verbatim from
# ppo_relative.py (same parameter and buffer names): encoder state dicts load across the two algorithms.
# ---------------------------------------------------------------------------------------------------------
NATURE_CNN_LATENT = 64 * 7 * 7  # flattened Nature-CNN output at 84x84


def layer_init(layer, std=2**0.5, bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class RelativeProjection(nn.Module):
    """Relative representation of a latent with respect to anchor embeddings (R3L eq. 2-3):

        z_rel = normalize(E(x) - mu) normalize(E(A) - mu)^T,   mu = mean of the anchor embeddings E(A)

    i.e. the cosine similarity between the centred latent and every centred anchor embedding.
    Centring on the anchors' mean makes the projection exactly invariant to translations of the
    latent space; cosine makes it invariant to orthogonal transforms and positive isotropic rescaling.
    Those are the transforms under which two independently trained encoders tend to differ, which is
    what makes zero-shot stitching possible.

    `standardize=True` also divides each latent dimension by the anchors' standard deviation, as the
    authors' code does. Per-dimension scaling is not invariant to rotations of the latent space, so it
    is off by default.

    The anchor embeddings E(A) are a buffer, an exponential moving average of the encoder's embeddings
    of the anchor frames (no gradient flows through the anchors; the gradient flows through x):

        E(A) <- ema * E(A) + (1 - ema) * E_current(A),   first update: E(A) <- E_current(A).

    The anchor side of the projection (mu, the std and the normalised anchors) depends only on the
    buffer, so it is computed once per change of the buffer (`update_anchors`, `load_state_dict`) and
    kept in non-persistent buffers: a forward pass then costs one matrix product.
    """

    def __init__(self, num_anchors: int, latent_dim: int, anchor_ema: float = 0.999, standardize: bool = False):
        super().__init__()
        self.anchor_ema = anchor_ema
        self.standardize = standardize
        self.register_buffer("anchor_embeddings", torch.zeros(num_anchors, latent_dim))
        self.register_buffer("anchors_initialized", torch.tensor(False))
        # derived from anchor_embeddings, never saved (a checkpoint holds only the embeddings)
        self.register_buffer("anchor_center", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("anchor_scale", torch.ones(latent_dim), persistent=False)
        # normalize(E(A) - mu) stored transposed, (latent_dim, num_anchors): latent @ it reads the matrix
        # in order, ~1.5x faster than latent @ (num_anchors, latent_dim).T for the rollout's few rows
        self.register_buffer("normalized_anchors_t", torch.zeros(latent_dim, num_anchors), persistent=False)
        # its bf16 copy for --precision bf16: autocast would otherwise convert the 3136 x 3136 matrix on every call
        self.register_buffer("normalized_anchors_t_bf16", torch.zeros(latent_dim, num_anchors, dtype=torch.bfloat16),
                             persistent=False)  # fmt: skip
        self.register_load_state_dict_post_hook(lambda module, incompatible_keys: module.refresh_anchor_side())

    @torch.no_grad()
    def refresh_anchor_side(self) -> None:
        """Recompute mu, the std and normalize(E(A) - mu) (divided by the std too with `standardize`)."""
        anchors = self.anchor_embeddings
        self.anchor_center.copy_(anchors.mean(dim=0))
        anchors = anchors - self.anchor_center
        if self.standardize:
            self.anchor_scale.copy_(anchors.std(dim=0) + 1e-6)
            anchors = anchors / self.anchor_scale
        self.normalized_anchors_t.copy_(F.normalize(anchors, dim=-1).T)
        self.normalized_anchors_t_bf16.copy_(self.normalized_anchors_t)

    @torch.no_grad()
    def update_anchors(self, fresh_embeddings: torch.Tensor) -> None:
        if not self.anchors_initialized:
            self.anchor_embeddings.copy_(fresh_embeddings)
            self.anchors_initialized.fill_(True)
        else:
            self.anchor_embeddings.lerp_(fresh_embeddings, 1.0 - self.anchor_ema)
        self.refresh_anchor_side()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        latent = latent - self.anchor_center  # bf16 - fp32 promotes: centring and normalising run in fp32
        if self.standardize:
            latent = latent / self.anchor_scale
        latent = F.normalize(latent, dim=-1)
        device = latent.device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16:
            return latent.to(torch.bfloat16) @ self.normalized_anchors_t_bf16
        return latent @ self.normalized_anchors_t


class Encoder(nn.Module):
    """Observation -> latent. The Nature CNN embeds every RGB frame of the stack separately; with
    `relative`, each frame's embedding is projected on the anchors (R3L projects stacked frames one
    by one and concatenates them). Output size: frame_stack * (num_anchors if relative else 3136)."""

    def __init__(
        self,
        frame_stack: int = 1,
        relative: bool = True,
        num_anchors: int = 3136,
        anchor_ema: float = 0.999,
        standardize: bool = False,
    ):
        super().__init__()
        self.frame_stack = frame_stack
        self.cnn = nn.Sequential(
            layer_init(nn.Conv2d(3, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.Flatten(),
        )
        self.projection = RelativeProjection(num_anchors, NATURE_CNN_LATENT, anchor_ema, standardize) if relative else None
        frame_latent = num_anchors if relative else NATURE_CNN_LATENT
        self.latent_dim = frame_stack * frame_latent

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, 84, 84) uint8 frames -> (N, 3136) absolute embeddings."""
        return self.cnn(frames.float() / 255.0)

    @torch.no_grad()
    def update_anchors(self, anchor_frames: torch.Tensor, chunk_size: int = 512) -> None:
        """One EMA step of the anchor embeddings from the current CNN (no-op for absolute encoders). Under bf16
        autocast the CNN runs in bf16; the EMA buffer and the anchor side stay fp32."""
        if self.projection is not None:
            fresh = torch.cat([self.embed_frames(chunk).float() for chunk in anchor_frames.split(chunk_size)])
            self.projection.update_anchors(fresh)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, 3 * frame_stack, 84, 84) uint8 observations -> (B, latent_dim) latents."""
        batch = obs.shape[0]
        frames = obs.reshape(batch * self.frame_stack, 3, *obs.shape[-2:])
        latent = self.embed_frames(frames)
        if self.projection is not None:
            latent = self.projection(latent)
        return latent.reshape(batch, -1)


class QNetwork(nn.Module):
    """Q-head on top of the encoder, the controller shape of ppo_relative's Policy trunk:
    LayerNorm -> ReLU -> Linear(latent_dim, 512) -> ReLU -> Linear(512, num_actions) = Q(s, .)."""

    def __init__(self, latent_dim: int, num_actions: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.LayerNorm(latent_dim), nn.ReLU(), layer_init(nn.Linear(latent_dim, 512)), nn.ReLU())
        self.q = layer_init(nn.Linear(512, num_actions), std=1.0)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Action values Q(s, a) for every action, shape (batch, num_actions)."""
        return self.q(self.trunk(latent))

    def greedy_action(self, latent: torch.Tensor) -> torch.Tensor:
        """The policy of a Q-learner: argmax_a Q(s, a)."""
        return self.forward(latent).argmax(dim=-1)


def double_dqn_target(
    rewards: torch.Tensor, terminations: torch.Tensor, next_q_online: torch.Tensor, next_q_target: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Double DQN target (van Hasselt et al. 2016, eq. 4): the online network picks the next action,
    the target network values it,

        y = r + gamma * (1 - terminated) * Q_target(s', argmax_a Q_online(s', a)).

    Only termination stops the bootstrap: a truncation (time limit, no progress) is not an end of the MDP."""
    next_actions = next_q_online.argmax(dim=1, keepdim=True)
    next_values = next_q_target.gather(1, next_actions).squeeze(1)
    return rewards + gamma * (1.0 - terminations) * next_values


def linear_schedule(start_e: float, end_e: float, duration: float, t: int) -> float:
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


class ActionRepeat(gym.Wrapper):
    """One environment step = the action repeated for `repeat` frames, rewards summed, stopping at the episode's end
    (Mnih et al. 2015). With `patience` > 0 the episode is truncated after `patience` consecutive frames without a new
    track tile (CarRacing's frame reward is positive only on a new tile): a car lost on the grass stops filling the
    replay memory with -0.1 frames. Truncation, not termination: the TD target still bootstraps there."""

    def __init__(self, env: gym.Env, repeat: int, patience: int = 0):
        super().__init__(env)
        self.repeat, self.patience, self.idle_frames = repeat, patience, 0

    def reset(self, **kwargs):
        self.idle_frames = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        total_reward = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += reward
            self.idle_frames = 0 if reward > 0 else self.idle_frames + 1
            if terminated or truncated:
                break
        truncated = truncated or (self.patience > 0 and self.idle_frames >= self.patience)
        return obs, total_reward, terminated, truncated, info


def make_env(args, patience: int):
    """ColorCarRacing-v0 -> ActionRepeat -> the shared 84x84 preprocessing (stacks one frame per environment step)."""
    env = gym.make("ColorCarRacing-v0", bg_color=args.bg_color, task=args.task, view=args.view)
    return ColorCarRacingObservation(ActionRepeat(env, args.action_repeat, patience), frame_stack=args.frame_stack)


# ---------------------------------------------------------------------------------------------------------
# Replay memory: every RGB frame is stored once
# ---------------------------------------------------------------------------------------------------------
class FrameReplayBuffer:
    """Replay memory that stores each 84x84 RGB frame once, not obs and next_obs with `frame_stack` frames each.

    All envs advance together, so each env slot has a ring of `capacity // num_envs` positions and every
    vector step writes one position per env: the newest frame of the env's next observation, and the
    transition that led to it (action, reward, termination, and `stack`: the ring positions of the
    `frame_stack` frames of obs followed by the new frame; obs = frames[stack[:-1]], next_obs = frames[stack[1:]]).
    At an episode start the stack repeats the first frame, as `ColorCarRacingObservation.reset` does.

    Gymnasium 1.x vector envs reset an env on the step *after* its episode ended: that step returns
    the reset observation, ignores the action and is not a transition. It writes its frame (the start of
    the new stack) but its position holds no valid transition, so no next_obs ever crosses a reset.
    When a frame is overwritten, the (at most `frame_stack`) transitions that read it become invalid.
    Memory: (3*84*84 + 4*(frame_stack+1) + 8 + 4 + 1 + 1) bytes per position, about 2.1 GB per 100k.
    """

    def __init__(self, capacity: int, num_envs: int, frame_stack: int, frame_shape=(3, 84, 84)):
        self.num_envs, self.frame_stack = num_envs, frame_stack
        self.positions = capacity // num_envs
        self.frames = np.zeros((num_envs, self.positions, *frame_shape), dtype=np.uint8)
        self.stack = np.zeros((num_envs, self.positions, frame_stack + 1), dtype=np.int32)
        self.actions = np.zeros((num_envs, self.positions), dtype=np.int64)
        self.rewards = np.zeros((num_envs, self.positions), dtype=np.float32)
        self.terminations = np.zeros((num_envs, self.positions), dtype=np.bool_)
        self.valid = np.zeros((num_envs, self.positions), dtype=np.bool_)
        self.current = np.zeros((num_envs, frame_stack), dtype=np.int32)  # ring positions of each env's obs frames
        self.pos = 0
        self.channels = frame_shape[0]

    @property
    def nbytes(self) -> int:
        arrays = (self.frames, self.stack, self.actions, self.rewards, self.terminations, self.valid)
        return sum(a.nbytes for a in arrays)

    def __len__(self) -> int:
        return int(self.valid.sum())

    def _write_frames(self, obs: np.ndarray) -> int:
        p = self.pos
        self.frames[:, p] = obs[:, -self.channels :]  # the newest frame is last along the channel axis
        readers = (p + 1 + np.arange(self.frame_stack)) % self.positions  # transitions that may read position p
        self.valid[:, readers] &= ~(self.stack[:, readers, :-1] == p).any(-1)
        self.pos = (p + 1) % self.positions
        return p

    def start(self, obs: np.ndarray) -> None:
        """The first observations of all envs (from `envs.reset`)."""
        p = self._write_frames(obs)
        self.valid[:, p] = False
        self.current[:] = p

    def add(self, next_obs, actions, rewards, terminations, episode_start) -> None:
        """One vector step. `episode_start[i]`: env i was reset by this step (next_obs[i] is a reset observation)."""
        p = self._write_frames(next_obs)
        self.stack[:, p, :-1] = self.current
        self.stack[:, p, -1] = p
        self.actions[:, p], self.rewards[:, p], self.terminations[:, p] = actions, rewards, terminations
        self.valid[:, p] = ~episode_start
        shifted = np.concatenate([self.current[:, 1:], np.full((self.num_envs, 1), p, np.int32)], axis=1)
        self.current = np.where(episode_start[:, None], np.int32(p), shifted)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict:
        valid = np.flatnonzero(self.valid)
        env, pos = np.divmod(valid[rng.integers(len(valid), size=batch_size)], self.positions)
        frames = self.frames[env[:, None], self.stack[env, pos]]  # (batch, frame_stack + 1, 3, 84, 84)
        obs_shape = (batch_size, self.frame_stack * self.channels, *frames.shape[-2:])
        return {
            "obs": frames[:, :-1].reshape(obs_shape),
            "next_obs": frames[:, 1:].reshape(obs_shape),
            "actions": self.actions[env, pos],
            "rewards": self.rewards[env, pos],
            "terminations": self.terminations[env, pos],
        }


# ---------------------------------------------------------------------------------------------------------
# The few helpers the training loop needs, and the checkpoint loader of evaluation tools
# ---------------------------------------------------------------------------------------------------------
def crossed(step: int, num_envs: int, every: int) -> int:
    """How many multiples of `every` the last vector step (from step - num_envs to step) passed."""
    return step // every - (step - num_envs) // every


def build_networks(args: Args, num_actions: int, device) -> tuple[Encoder, QNetwork]:
    """Encoder and Q-head. The encoder takes one EMA step every `anchor_update_frequency` gradient steps, with
    coefficient a^K (K = anchor_update_frequency): the time scale 1 / (1 - a) gradient steps of the authors'
    per-gradient-step EMA is kept (ppo_relative.py does the same once per PPO iteration)."""
    anchor_ema = args.anchor_ema**args.anchor_update_frequency
    encoder = Encoder(args.frame_stack, args.relative, args.num_anchors, anchor_ema, args.anchor_standardize)
    # NHWC convolution weights: 1.06x (fp32) / 1.08x (bf16) training steps per CPU-second (benchmarks/ddqn_sps.py
    # --components); the parameters' values and names are unchanged, checkpoints load into contiguous encoders
    encoder.cnn.to(memory_format=torch.channels_last)
    return encoder.to(device), QNetwork(encoder.latent_dim, num_actions).to(device)


def load_checkpoint(path: str) -> dict:
    """A validated DDQN checkpoint (`runs/{run_name}/agent.pt` or its folder); any problem is a one-line ValueError."""
    checkpoint = load_agent_checkpoint(path)
    if checkpoint["metadata"]["algorithm"] != "ddqn":
        raise ValueError(
            f"{path!r} holds a {checkpoint['metadata']['algorithm']!r} agent; accepted: a ddqn_relative.py "
            f"runs/{{run_name}}/{AGENT_FILE}"
        )
    return checkpoint


def agent_from_checkpoint(checkpoint: dict, device="cpu") -> tuple[Encoder, QNetwork]:
    """Rebuild the encoder and Q-head of a checkpoint from its metadata; a mismatch is a one-line ValueError."""
    metadata, saved = checkpoint["metadata"], checkpoint["metadata"]["args"]
    encoder = Encoder(
        metadata["frame_stack"],
        metadata["relative"],
        metadata["num_anchors"] or saved["num_anchors"],
        saved["anchor_ema"],
        metadata["anchor_standardize"],
    ).to(device)
    q_network = QNetwork(metadata["latent_dim"], metadata["num_actions"]).to(device)
    try:
        encoder.load_state_dict(checkpoint["encoder"])
        q_network.load_state_dict(checkpoint["policy"])
    except RuntimeError as e:
        raise ValueError(f"checkpoint weights do not match its metadata ({str(e).strip().splitlines()[0]})") from None
    return encoder, q_network


if __name__ == "__main__":
    args = tyro.cli(Args)
    try:
        checkpoint = None
        if args.resume is not None:
            checkpoint = load_checkpoint(args.resume)
            # nanoGPT-style resume: the checkpoint's flags, except these run flags when given on the command line
            run_flags = ("total_timesteps", "cuda", "torch_threads", "precision", "save_every", "eval_episodes",
                         "capture_video", "runs_dir")  # fmt: skip
            args = resume_args(args, checkpoint["metadata"]["args"], run_flags)
            if checkpoint["metadata"]["global_step"] >= args.total_timesteps:
                raise ValueError(
                    f"--resume {args.resume!r} is already at step {checkpoint['metadata']['global_step']}; "
                    f"accepted: a larger --total-timesteps than {args.total_timesteps} to continue it"
                )
        if args.task == "far":  # the alias of the far view of the standard task
            args.view, args.task = resolve_view_task(args.view, args.task)
        try:
            parse_bg_color(args.bg_color)
        except ValueError:
            raise ValueError(
                f"unknown --bg-color {args.bg_color!r}; accepted: {', '.join(NAMED_COLORS)} or a hex colour '#rrggbb'"
            ) from None
        for unknown, flag, accepted in [
            (args.precision not in ("auto", "bf16", "fp32"), "--precision", "auto, bf16, fp32"),
            (args.view not in VIEWS, "--view", ", ".join(VIEWS)),
            (args.task not in TASKS, "--task", f"{', '.join(TASKS)} ('far' is --view far)"),
        ]:
            if unknown:
                raise ValueError(f"unknown {flag} {getattr(args, flag[2:])!r}; accepted: {accepted}")
        anchor_pool = len(AnchorRecipe().track_seeds) * args.anchor_steps_per_track
        for ok, flag, value, accepted in [
            (args.frame_stack >= 1, "--frame-stack", args.frame_stack, "an integer >= 1"),
            (args.action_repeat >= 1, "--action-repeat", args.action_repeat, "an integer >= 1"),
            (args.progress_patience >= 0, "--progress-patience", args.progress_patience, "an integer >= 0 (0: never)"),
            (1 <= args.num_anchors <= anchor_pool, "--num-anchors", args.num_anchors,
             f"an integer in [1, {anchor_pool}] (the anchor pool: 4 tracks * --anchor-steps-per-track)"),
            (0.0 <= args.anchor_ema < 1.0, "--anchor-ema", args.anchor_ema, "a float in [0, 1)"),
            (args.anchor_steps_per_track >= 1, "--anchor-steps-per-track", args.anchor_steps_per_track, "an integer >= 1"),
            (args.anchor_update_frequency >= 1, "--anchor-update-frequency", args.anchor_update_frequency,
             "an integer >= 1"),
            (args.num_envs >= 1, "--num-envs", args.num_envs, "an integer >= 1"),
            (args.learning_rate > 0, "--learning-rate", args.learning_rate, "a float > 0"),
            (args.buffer_size // max(args.num_envs, 1) >= args.frame_stack + 2, "--buffer-size", args.buffer_size,
             "an integer >= --num-envs * (--frame-stack + 2)"),
            (0.0 <= args.gamma <= 1.0, "--gamma", args.gamma, "a float in [0, 1]"),
            (args.target_network_frequency >= 1, "--target-network-frequency", args.target_network_frequency,
             "an integer >= 1"),
            (args.batch_size >= 1, "--batch-size", args.batch_size, "an integer >= 1"),
            (0.0 <= args.start_e <= 1.0, "--start-e", args.start_e, "a float in [0, 1]"),
            (0.0 <= args.end_e <= 1.0, "--end-e", args.end_e, "a float in [0, 1]"),
            (0.0 < args.exploration_fraction <= 1.0, "--exploration-fraction", args.exploration_fraction,
             "a float in (0, 1]"),
            (1 <= args.learning_starts <= args.buffer_size, "--learning-starts", args.learning_starts,
             "an integer in [1, --buffer-size]"),
            # learning starts once the memory holds learning_starts transitions; fewer steps would train nothing
            (args.total_timesteps > args.learning_starts, "--total-timesteps", args.total_timesteps,
             f"an integer > --learning-starts ({args.learning_starts}): with fewer steps no gradient step is taken"),
            (args.train_frequency >= 1, "--train-frequency", args.train_frequency, "an integer >= 1"),
            (args.save_every >= 0, "--save-every", args.save_every, "an integer >= 0 (environment steps; 0: only at the end)"),
            (args.eval_episodes >= 0, "--eval-episodes", args.eval_episodes, "an integer >= 0"),
            (args.torch_threads >= 1, "--torch-threads", args.torch_threads, "an integer >= 1"),
            (not args.capture_video or args.eval_episodes >= 1, "--capture-video with --eval-episodes", args.eval_episodes,
             "--eval-episodes >= 1 (videos are taken during the final evaluation)"),
        ]:  # fmt: skip
            if not ok:
                raise ValueError(f"bad {flag} {value!r}; accepted: {accepted}")
        if checkpoint is None:
            view_name = "" if args.view == "near" else f"-{args.view}"
            run_name = (
                f"ColorCarRacing-{args.bg_color.lstrip('#').lower()}{view_name}-{args.task}__{args.exp_name}__"
                f"{args.seed}__{int(time.time())}"
            )
            run_dir = os.path.join(ensure_writable_dir(args.runs_dir, "--runs-dir"), run_name)
        else:  # continue logging next to the checkpoint
            run_dir = args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume))
            run_name = os.path.basename(os.path.abspath(run_dir))
            ensure_writable_dir(run_dir, "--resume")
        # anchor frames of the run's own colour and view (workshop paper §3.1): the same states for every colour
        recipe = AnchorRecipe(steps_per_track=args.anchor_steps_per_track, num_anchors=args.num_anchors)
        anchor_set = load_anchor_set(args.bg_color, view=args.view, recipe=recipe) if args.relative else None
        if anchor_set is not None:
            print(f"anchor set {anchor_set.set_id} ({args.bg_color}, {args.view} view): {anchor_set.source}")
        if checkpoint is not None and args.relative and checkpoint["metadata"]["anchor_set_id"] != anchor_set.set_id:
            raise ValueError(
                f"--resume {args.resume!r} used anchor set {checkpoint['metadata']['anchor_set_id']!r}, this "
                f"installation builds {anchor_set.set_id!r}; accepted: a checkpoint of the current anchor recipe"
            )
    except ValueError as e:
        fail(str(e))

    # TRY NOT TO MODIFY: seeding (CleanRL); one numpy Generator drives exploration and replay sampling
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    args.precision = resolve_precision(args.precision, device)
    # mixed precision: the batch forward passes (gradient steps, anchor EMA) under bf16 autocast; weights, Adam state,
    # TD targets and losses stay fp32. Acting on one observation stays fp32: at batch 1 the CPU's bf16 path is slower
    # (9.0 vs 5.3 ms per forward, benchmarks/ddqn_sps.py --components: the weights are converted at every call)
    amp = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    anchor_frames = torch.from_numpy(anchor_set.frames).to(device) if anchor_set is not None else None

    checkpoint_path = os.path.join(run_dir, AGENT_FILE)
    global_step = 0 if checkpoint is None else checkpoint["metadata"]["global_step"]
    # a resumed run drops the TensorBoard events logged after its checkpoint, so the curves do not overlap
    writer = SummaryWriter(run_dir, purge_step=None if checkpoint is None else global_step + 1)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    # env setup: gymnasium 1.x vector env, autoreset on the NEXT step (see the replay memory)
    envs = gym.vector.SyncVectorEnv([lambda: make_env(args, args.progress_patience) for _ in range(args.num_envs)])
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    num_actions = int(envs.single_action_space.n)  # exploration draws from the env's own action space

    # ALGO LOGIC: initialize agent here
    encoder, q_network = build_networks(args, num_actions, device)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(q_network.parameters()), lr=args.learning_rate)
    target_encoder, target_network = build_networks(args, num_actions, device)
    num_updates = 0
    if checkpoint is None:
        if args.relative:  # anchor embeddings start from the untrained encoder (R3L); the EMA then follows it
            with amp():
                encoder.update_anchors(anchor_frames)
        target_encoder.load_state_dict(encoder.state_dict())
        target_network.load_state_dict(q_network.state_dict())
    else:
        state = checkpoint["training_state"]
        try:
            encoder.load_state_dict(checkpoint["encoder"])
            q_network.load_state_dict(checkpoint["policy"])
            target_encoder.load_state_dict(state["target_encoder"])
            target_network.load_state_dict(state["target_network"])
            optimizer.load_state_dict(state["optimizer"])
            num_updates = state["num_updates"]
            torch.set_rng_state(state["torch_rng"])
            rng.bit_generator.state = state["numpy_rng"]
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            fail(
                f"--resume {args.resume!r} does not match its metadata ({str(e).strip().splitlines()[0]}); "
                "accepted: an unmodified ddqn_relative.py checkpoint"
            )
        tqdm.write(
            f"resumed {run_name} at global_step={global_step}; refilling the replay memory "
            f"({args.learning_starts} transitions before the next gradient step)"
        )

    def write_checkpoint():
        """The r3l-agent-v1 contract (docs/checkpoints.md), fp32 CPU tensors whatever the precision, written atomically."""
        target = agent_payload(target_encoder, target_network, {}, {})
        training_state = {
            "target_encoder": target["encoder"],
            "target_network": target["policy"],
            "optimizer": optimizer.state_dict(),
            "global_step": global_step,
            "num_updates": num_updates,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": rng.bit_generator.state,
        }
        metadata = {
            "algorithm": "ddqn", "bg_color": args.bg_color, "view": args.view, "task": args.task, "reward": "standard",
            "frame_stack": args.frame_stack, "num_actions": num_actions, "relative": args.relative,
            "anchor_set_id": anchor_set.set_id if args.relative else None,
            "num_anchors": args.num_anchors if args.relative else None,
            "anchor_standardize": args.relative and args.anchor_standardize, "latent_dim": encoder.latent_dim,
            "seed": args.seed, "global_step": global_step, "args": asdict(args),
        }  # fmt: skip
        save_atomic(agent_payload(encoder, q_network, metadata, training_state), checkpoint_path)

    # ALGO Logic: replay memory
    rb = FrameReplayBuffer(args.buffer_size, args.num_envs, args.frame_stack)
    # TRY NOT TO MODIFY: start the game
    start_time, start_step = time.time(), global_step
    obs, _ = envs.reset(seed=args.seed + global_step)  # a resumed run starts new episodes on other tracks
    rb.start(obs)
    episode_start = np.zeros(args.num_envs, dtype=np.bool_)
    recent_returns = deque(maxlen=20)
    progress = tqdm(total=args.total_timesteps, initial=global_step, unit="step", dynamic_ncols=True)
    with GracefulStop() as stop:
        while global_step < args.total_timesteps:
            global_step += args.num_envs
            # ALGO LOGIC: epsilon-greedy action with a linear schedule, drawn per env
            epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
            explore = rng.random(args.num_envs) < epsilon
            actions = rng.integers(num_actions, size=args.num_envs)
            if not explore.all():
                with torch.no_grad():
                    greedy = q_network.greedy_action(encoder(torch.as_tensor(obs, device=device))).cpu().numpy()
                actions = np.where(explore, actions, greedy)

            # TRY NOT TO MODIFY: execute the game and log data
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            if "episode" in infos:
                for i in np.flatnonzero(infos["_episode"]):
                    recent_returns.append(float(infos["episode"]["r"][i]))
                    writer.add_scalar("charts/episodic_return", infos["episode"]["r"][i], global_step)
                    writer.add_scalar("charts/episodic_length", infos["episode"]["l"][i], global_step)
            # the step after a done is the autoreset step: its observation is a reset, not a transition
            rb.add(next_obs, actions, rewards, terminations, episode_start)
            episode_start = terminations | truncations
            obs = next_obs

            # ALGO LOGIC: training
            if len(rb) >= args.learning_starts:
                # one gradient step per `train_frequency` environment steps (several per iteration with many envs)
                for _ in range(crossed(global_step, args.num_envs, args.train_frequency)):
                    data = rb.sample(args.batch_size, rng)
                    obs_b, next_obs_b = (torch.as_tensor(data[k], device=device) for k in ("obs", "next_obs"))
                    actions_b = torch.as_tensor(data["actions"], device=device)
                    rewards_b = torch.as_tensor(data["rewards"], device=device)
                    terminations_b = torch.as_tensor(data["terminations"], dtype=torch.float32, device=device)
                    with torch.no_grad(), amp():
                        next_q_online = q_network(encoder(next_obs_b))
                        next_q_target = target_network(target_encoder(next_obs_b))
                    # Double-DQN target and Huber loss in fp32 whatever the forward precision
                    td_target = double_dqn_target(
                        rewards_b, terminations_b, next_q_online.float(), next_q_target.float(), args.gamma
                    )
                    with amp():
                        q_all = q_network(encoder(obs_b))
                    q_values = q_all.float().gather(1, actions_b[:, None]).squeeze(1)
                    loss = F.smooth_l1_loss(q_values, td_target)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    num_updates += 1
                    # anchor EMA (R3L) every `anchor_update_frequency` gradient steps with coefficient a^K (build_networks):
                    # encoding all anchors costs num_anchors / (3 * batch_size) times the forwards of a gradient step
                    if args.relative and num_updates % args.anchor_update_frequency == 0:
                        with amp():
                            encoder.update_anchors(anchor_frames)
                    if num_updates % 100 == 0:
                        sps = int((global_step - start_step) / (time.time() - start_time))
                        writer.add_scalar("losses/td_loss", loss.item(), global_step)
                        writer.add_scalar("losses/q_values", q_values.mean().item(), global_step)
                        writer.add_scalar("charts/epsilon", epsilon, global_step)
                        writer.add_scalar("charts/SPS", sps, global_step)
                        recent = f"{np.mean(recent_returns):.1f}" if recent_returns else "n/a"
                        progress.set_postfix_str(
                            f"SPS={sps} return(last {len(recent_returns)})={recent} eps={epsilon:.2f}", refresh=False
                        )
                # hard target update every `target_network_frequency` env steps (anchor embeddings included)
                if crossed(global_step, args.num_envs, args.target_network_frequency):
                    target_encoder.load_state_dict(encoder.state_dict())
                    target_network.load_state_dict(q_network.state_dict())
            progress.update(args.num_envs)

            saving_due = args.save_every > 0 and crossed(global_step, args.num_envs, args.save_every)
            if stop.requested or (saving_due and global_step < args.total_timesteps):
                write_checkpoint()
            if stop.requested:
                progress.close()
                stop.exit(
                    f"checkpoint at {checkpoint_path} (global_step={global_step}); "
                    f"resume with: python ddqn_relative.py --resume {checkpoint_path}"
                )

    write_checkpoint()
    progress.close()
    envs.close()
    sps = (global_step - start_step) / (time.time() - start_time)
    print(f"checkpoint saved to {checkpoint_path} (global_step={global_step}, SPS={sps:.2f})")

    # final evaluation: greedy (argmax Q, epsilon = 0) whole episodes with the run's action repeat on fresh tracks
    if args.eval_episodes > 0:
        env = make_env(args, patience=0)
        eval_returns = []
        for episode in range(args.eval_episodes):
            eval_obs, _ = env.reset(seed=args.seed + 10_000 + episode)
            done, episodic_return, frames = False, 0.0, [eval_obs[-3:].transpose(1, 2, 0)]
            while not done:
                with torch.no_grad():
                    action = q_network.greedy_action(encoder(torch.as_tensor(eval_obs, device=device)[None]))
                eval_obs, reward, terminated, truncated, _ = env.step(int(action.item()))
                episodic_return += float(reward)
                done = terminated or truncated
                if args.capture_video:
                    frames.append(eval_obs[-3:].transpose(1, 2, 0))  # the newest RGB frame, (84, 84, 3)
            eval_returns.append(episodic_return)
            writer.add_scalar("eval/episodic_return", episodic_return, episode)
            if args.capture_video:  # the agent's 84 x 84 view, scaled up 3x with nearest neighbour: crisp pixels
                os.makedirs(os.path.join("videos", run_name), exist_ok=True)
                crisp = np.stack(frames).repeat(3, axis=1).repeat(3, axis=2)
                iio.imwrite(os.path.join("videos", run_name, f"eval-episode-{episode}.gif"), crisp, duration=20, loop=0)
        env.close()
        print(
            f"eval_return_mean={np.mean(eval_returns):.2f} eval_return_std={np.std(eval_returns):.2f} "
            f"({args.eval_episodes} greedy episode{'s' if args.eval_episodes > 1 else ''} from track {args.seed + 10_000})"
        )
    writer.close()
