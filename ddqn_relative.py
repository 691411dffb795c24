# docs and experiment results can be found in docs/ddqn_relative.md
"""Double DQN with relative (or absolute) representations on colour-variable CarRacing.

R3L: Ricciardi et al., "Zero-shot stitching in RL using relative representations" (seed 001, arXiv 2404.12917).
The paper stitches across training algorithms: an encoder trained with DDQN drives a policy trained with PPO and
vice versa. This file trains the DDQN side with the *same* encoder and relative projection as `ppo_relative.py`
(copied verbatim below, same parameter names), so that its encoder loads into `ppo_relative.Encoder` and its
Q-head, whose greedy action is the policy, can sit on top of a PPO encoder.

    python ddqn_relative.py --bg-color green               # relative representation (default)
    python ddqn_relative.py --bg-color green --no-relative # absolute baseline

Double DQN: van Hasselt, Guez and Silver, "Deep Reinforcement Learning with Double Q-learning", AAAI 2016.
"""
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from typing import Optional

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

from envs.anchors import AnchorRecipe, load_anchor_set  # importing the envs package registers ColorCarRacing-v0
from envs.car_racing import NAMED_COLORS, TASKS, make_color_car_racing, parse_bg_color

CHECKPOINT_FORMAT = "r3l-agent-v1"
CHECKPOINT_FILE = "agent.pt"


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    torch_threads: int = 1
    """number of CPU threads torch may use (1 keeps CPU runs reproducible and cheap on shared machines)"""
    capture_video: bool = False
    """if toggled, save GIFs of the agent's view during the final evaluation episodes to `videos/{run_name}/`"""
    runs_dir: str = "runs"
    """directory that receives `runs/{run_name}/` (TensorBoard logs and the checkpoint agent.pt)"""
    save_every: int = 10_000
    """write the checkpoint every this many iterations (one iteration = one step of all envs; 0: only at the end)"""
    resume: Optional[str] = None
    """continue the run stored in this checkpoint (`runs/{run_name}/agent.pt` or its directory; the replay memory is refilled first)"""
    eval_episodes: int = 10
    """number of deterministic (argmax) evaluation episodes at the end (0 disables the evaluation)"""

    # Environment arguments
    bg_color: str = "green"
    """background colour: green, red, blue, yellow, violet, pink or a hex colour '#rrggbb'"""
    task: str = "standard"
    """task variant: standard, far, slow, scrambled or no_idle"""
    frame_stack: int = 1
    """number of stacked RGB frames per observation (the workshop paper uses 1, R3L uses 4)"""
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
    anchor_update_frequency: int = 10
    """gradient steps between two EMA steps of the anchor embeddings (an anchor forward costs num_anchors frames)"""

    # Algorithm specific arguments
    total_timesteps: int = 1_000_000
    """total environment steps of the experiment (all envs together)"""
    learning_rate: float = 1e-4
    """the learning rate of the optimizer (Adam)"""
    buffer_size: int = 100_000
    """the replay memory buffer size in transitions (all envs together)"""
    gamma: float = 0.99
    """the discount factor gamma"""
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
    learning_starts: int = 10_000
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
    """Relative representation of a latent with respect to anchor embeddings (seed 001, eq. 2-3):

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

    @torch.no_grad()
    def update_anchors(self, fresh_embeddings: torch.Tensor) -> None:
        if not self.anchors_initialized:
            self.anchor_embeddings.copy_(fresh_embeddings)
            self.anchors_initialized.fill_(True)
        else:
            self.anchor_embeddings.lerp_(fresh_embeddings, 1.0 - self.anchor_ema)
        self.refresh_anchor_side()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        latent = latent - self.anchor_center
        if self.standardize:
            latent = latent / self.anchor_scale
        return F.normalize(latent, dim=-1) @ self.normalized_anchors_t


class Encoder(nn.Module):
    """Observation -> latent. The Nature CNN embeds every RGB frame of the stack separately; with
    `relative`, each frame's embedding is projected on the anchors (R3L projects stacked frames one
    by one and concatenates them). Output size: frame_stack * (num_anchors if relative else 3136)."""

    def __init__(self, frame_stack: int = 1, relative: bool = True, num_anchors: int = 3136,
                 anchor_ema: float = 0.999, standardize: bool = False):
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
        """One EMA step of the anchor embeddings from the current CNN (no-op for absolute encoders)."""
        if self.projection is not None:
            fresh = torch.cat([self.embed_frames(chunk) for chunk in anchor_frames.split(chunk_size)])
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


def double_dqn_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q_online: torch.Tensor,
                      next_q_target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Double DQN target (van Hasselt et al. 2016, eq. 4): the online network picks the next action,
    the target network values it,

        y = r + gamma * (1 - terminated) * Q_target(s', argmax_a Q_online(s', a)).

    Only termination stops the bootstrap: a time-limit truncation is not an end of the MDP."""
    next_actions = next_q_online.argmax(dim=1, keepdim=True)
    next_values = next_q_target.gather(1, next_actions).squeeze(1)
    return rewards + gamma * (1.0 - terminations) * next_values


def linear_schedule(start_e: float, end_e: float, duration: float, t: int) -> float:
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


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
        self.frames[:, p] = obs[:, -self.channels:]  # the newest frame is last along the channel axis
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
# Flags, environments, checkpoints (docs/checkpoints.md), evaluation
# ---------------------------------------------------------------------------------------------------------
def validate_args(args: Args) -> None:
    """Raise a one-line ValueError naming the first bad flag and what is accepted."""
    try:
        parse_bg_color(args.bg_color)
    except ValueError:
        raise ValueError(
            f"unknown --bg-color {args.bg_color!r}; accepted: {', '.join(NAMED_COLORS)} or a hex colour '#rrggbb'"
        ) from None
    if args.task not in TASKS:
        raise ValueError(f"unknown --task {args.task!r}; accepted: {', '.join(TASKS)}")
    anchor_pool = len(AnchorRecipe().track_seeds) * args.anchor_steps_per_track
    checks = [
        (args.frame_stack >= 1, "--frame-stack", args.frame_stack, "an integer >= 1"),
        (1 <= args.num_anchors <= anchor_pool, "--num-anchors", args.num_anchors,
         f"an integer in [1, {anchor_pool}] (the anchor pool: 4 tracks * --anchor-steps-per-track)"),
        (0.0 <= args.anchor_ema < 1.0, "--anchor-ema", args.anchor_ema, "a float in [0, 1)"),
        (args.anchor_steps_per_track >= 1, "--anchor-steps-per-track", args.anchor_steps_per_track, "an integer >= 1"),
        (args.anchor_update_frequency >= 1, "--anchor-update-frequency", args.anchor_update_frequency, "an integer >= 1"),
        (args.num_envs >= 1, "--num-envs", args.num_envs, "an integer >= 1"),
        (args.total_timesteps >= 1, "--total-timesteps", args.total_timesteps, "an integer >= 1"),
        (args.learning_rate > 0, "--learning-rate", args.learning_rate, "a float > 0"),
        (args.buffer_size // max(args.num_envs, 1) >= args.frame_stack + 2, "--buffer-size", args.buffer_size,
         "an integer >= --num-envs * (--frame-stack + 2)"),
        (0.0 <= args.gamma <= 1.0, "--gamma", args.gamma, "a float in [0, 1]"),
        (args.target_network_frequency >= 1, "--target-network-frequency", args.target_network_frequency, "an integer >= 1"),
        (args.batch_size >= 1, "--batch-size", args.batch_size, "an integer >= 1"),
        (0.0 <= args.start_e <= 1.0, "--start-e", args.start_e, "a float in [0, 1]"),
        (0.0 <= args.end_e <= 1.0, "--end-e", args.end_e, "a float in [0, 1]"),
        (0.0 < args.exploration_fraction <= 1.0, "--exploration-fraction", args.exploration_fraction, "a float in (0, 1]"),
        (1 <= args.learning_starts <= args.buffer_size, "--learning-starts", args.learning_starts,
         "an integer in [1, --buffer-size]"),
        (args.train_frequency >= 1, "--train-frequency", args.train_frequency, "an integer >= 1"),
        (args.save_every >= 0, "--save-every", args.save_every, "an integer >= 0 (0: only at the end)"),
        (args.eval_episodes >= 0, "--eval-episodes", args.eval_episodes, "an integer >= 0"),
        (args.torch_threads >= 1, "--torch-threads", args.torch_threads, "an integer >= 1"),
        (not args.capture_video or args.eval_episodes >= 1, "--capture-video with --eval-episodes",
         args.eval_episodes, "--eval-episodes >= 1 (videos are taken during the final evaluation)"),
    ]
    for ok, flag, value, accepted in checks:
        if not ok:
            raise ValueError(f"bad {flag} {value!r}; accepted: {accepted}")


def make_env(bg_color: str, task: str, frame_stack: int):
    def thunk():
        return make_color_car_racing(bg_color, task, frame_stack)

    return thunk


def anchor_recipe(args) -> AnchorRecipe:
    return AnchorRecipe(steps_per_track=args.anchor_steps_per_track, num_anchors=args.num_anchors)


def build_networks(args: Args, num_actions: int, device) -> tuple[Encoder, QNetwork]:
    """Encoder and Q-head. The encoder takes one EMA step every `anchor_update_frequency` gradient steps, with
    coefficient a^K (K = anchor_update_frequency): the time scale 1 / (1 - a) gradient steps of the authors'
    per-gradient-step EMA is kept (ppo_relative.py does the same once per PPO iteration)."""
    anchor_ema = args.anchor_ema**args.anchor_update_frequency
    encoder = Encoder(args.frame_stack, args.relative, args.num_anchors, anchor_ema, args.anchor_standardize)
    return encoder.to(device), QNetwork(encoder.latent_dim, num_actions).to(device)


def checkpoint_metadata(args: Args, num_actions: int, latent_dim: int, global_step: int) -> dict:
    return {
        "algorithm": "ddqn",
        "bg_color": args.bg_color,
        "task": args.task,
        "reward": "standard",
        "frame_stack": args.frame_stack,
        "num_actions": num_actions,
        "relative": args.relative,
        "anchor_set_id": anchor_recipe(args).set_id if args.relative else None,
        "num_anchors": args.num_anchors if args.relative else None,
        "anchor_standardize": args.relative and args.anchor_standardize,
        "latent_dim": latent_dim,
        "seed": args.seed,
        "global_step": global_step,
        "args": asdict(args),
    }


def save_checkpoint(path: str, encoder: Encoder, q_network: QNetwork, metadata: dict, training_state: dict) -> None:
    """Atomic (docs/checkpoints.md): a temporary file in the same directory, then os.replace."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "policy": {k: v.detach().cpu() for k, v in q_network.state_dict().items()},
        "metadata": metadata,
        "training_state": training_state,
    }
    fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp_", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


REQUIRED_METADATA = (
    "algorithm", "bg_color", "task", "reward", "frame_stack", "num_actions", "relative", "anchor_set_id",
    "num_anchors", "anchor_standardize", "latent_dim", "seed", "global_step", "args",
)


def load_checkpoint(path: str) -> dict:
    """Load a DDQN checkpoint of the collection (docs/checkpoints.md) on the CPU with weights_only=True.

    `path` is `runs/{run_name}/agent.pt` or its directory. Any problem (missing file, not a torch file,
    another format, missing keys, another algorithm) raises a ValueError with a one-line message."""
    accepted = f"accepted: a runs/{{run_name}}/{CHECKPOINT_FILE} of ddqn_relative.py in format {CHECKPOINT_FORMAT!r}"
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist; {accepted}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {path!r} is not a loadable torch file ({reason}); {accepted}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"checkpoint {path!r} has format {found!r}; {accepted}")
    missing = [k for k in ("encoder", "policy", "metadata", "training_state") if not isinstance(checkpoint.get(k), dict)]
    if not missing:
        missing = [f"metadata.{k}" for k in REQUIRED_METADATA if k not in checkpoint["metadata"]]
    if missing:
        raise ValueError(f"checkpoint {path!r} lacks {', '.join(missing)}; {accepted}")
    if checkpoint["metadata"]["algorithm"] != "ddqn":
        raise ValueError(f"checkpoint {path!r} holds a {checkpoint['metadata']['algorithm']!r} agent; {accepted}")
    return checkpoint


def agent_from_checkpoint(checkpoint: dict, device="cpu") -> tuple[Encoder, QNetwork]:
    """Rebuild the encoder and Q-head of a checkpoint from its metadata; a mismatch is a one-line ValueError."""
    metadata = checkpoint["metadata"]
    saved = metadata["args"]
    encoder = Encoder(metadata["frame_stack"], metadata["relative"], metadata["num_anchors"] or saved["num_anchors"],
                      saved["anchor_ema"], metadata["anchor_standardize"]).to(device)
    q_network = QNetwork(metadata["latent_dim"], metadata["num_actions"]).to(device)
    try:
        encoder.load_state_dict(checkpoint["encoder"])
        q_network.load_state_dict(checkpoint["policy"])
    except RuntimeError as e:
        raise ValueError(f"checkpoint weights do not match its metadata ({str(e).strip().splitlines()[0]})") from None
    return encoder, q_network


@torch.no_grad()
def evaluate(encoder: Encoder, q_network: QNetwork, bg_color: str, task: str, frame_stack: int, episodes: int, seed: int,
             device, video_dir: Optional[str] = None) -> list[float]:
    """Greedy (argmax Q, epsilon = 0) episodes on fresh tracks `seed`, `seed + 1`, ...; returns the episodic
    returns. `video_dir` receives one GIF of the agent's view per episode."""
    env = make_color_car_racing(bg_color, task, frame_stack)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, episode_return, frames = False, 0.0, [obs[-3:].transpose(1, 2, 0)]
        while not done:
            action = q_network.greedy_action(encoder(torch.as_tensor(obs, device=device)[None]))
            obs, reward, terminated, truncated, _ = env.step(int(action.item()))
            episode_return += float(reward)
            done = terminated or truncated
            if video_dir is not None:
                frames.append(obs[-3:].transpose(1, 2, 0))  # the newest RGB frame, (84, 84, 3)
        returns.append(episode_return)
        if video_dir is not None:
            os.makedirs(video_dir, exist_ok=True)
            iio.imwrite(os.path.join(video_dir, f"eval-episode-{episode}.gif"), np.stack(frames), duration=20, loop=0)
    env.close()
    return returns


# flags that may differ from the checkpoint's when resuming; every other flag must match it (or be left out)
RESUME_FREE_FLAGS = ("resume", "total_timesteps", "cuda", "torch_threads", "save_every", "eval_episodes", "capture_video", "runs_dir")


def resumed_args(cli: Args, checkpoint: dict) -> Args:
    """The checkpoint's Args, with the flags of RESUME_FREE_FLAGS taken from the command line (a larger
    --total-timesteps extends the run). Any other flag given with a value unlike the checkpoint's is an error."""
    stored, defaults = checkpoint["metadata"]["args"], Args()
    free = ", ".join("--" + name.replace("_", "-") for name in RESUME_FREE_FLAGS[1:])
    values = {}
    for f in fields(Args):
        name, given = f.name, getattr(cli, f.name)
        if name in RESUME_FREE_FLAGS:
            use_cli = name != "total_timesteps" or given != defaults.total_timesteps
            values[name] = given if use_cli or name not in stored else stored[name]
        elif name in stored:
            if given != getattr(defaults, name) and given != stored[name]:
                raise ValueError(
                    f"--{name.replace('_', '-')} {given!r} differs from the resumed run's {stored[name]!r}; "
                    f"accepted: leave it out or pass the stored value (only {free} may change)"
                )
            values[name] = stored[name]
    return Args(**values)


if __name__ == "__main__":
    args = tyro.cli(Args)
    try:
        checkpoint = None
        if args.resume is not None:
            checkpoint = load_checkpoint(args.resume)
            args = resumed_args(args, checkpoint)
            if checkpoint["metadata"]["global_step"] >= args.total_timesteps:
                raise ValueError(
                    f"--resume {args.resume!r} is already at step {checkpoint['metadata']['global_step']}; "
                    f"accepted: a larger --total-timesteps than {args.total_timesteps} to continue it"
                )
        validate_args(args)
        # anchor frames of the run's own colour and task (seed 001 §3.1): the same states for every colour
        anchor_set = None
        if args.relative:
            anchor_set = load_anchor_set(args.bg_color, args.task, recipe=anchor_recipe(args))
            if checkpoint is not None and checkpoint["metadata"]["anchor_set_id"] != anchor_set.set_id:
                raise ValueError(
                    f"--resume {args.resume!r} used anchor set {checkpoint['metadata']['anchor_set_id']!r}, this "
                    f"installation builds {anchor_set.set_id!r}; accepted: a checkpoint of the current anchor recipe"
                )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    # Seeding (CleanRL): random, numpy and torch; one numpy Generator drives exploration and replay sampling.
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)

    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    anchor_frames = torch.from_numpy(anchor_set.frames).to(device) if anchor_set is not None else None

    if checkpoint is None:
        color_name = args.bg_color.lstrip("#").lower()
        run_name = f"ColorCarRacing-{color_name}-{args.task}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir = os.path.join(args.runs_dir, run_name)
    else:  # continue logging next to the checkpoint
        run_dir = os.path.dirname(os.path.abspath(os.path.join(args.resume, CHECKPOINT_FILE) if os.path.isdir(args.resume) else args.resume))
        run_name = os.path.basename(run_dir)
    checkpoint_path = os.path.join(run_dir, CHECKPOINT_FILE)
    writer = SummaryWriter(run_dir)
    if checkpoint is None:
        writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
        )

    # env setup: gymnasium 1.x vector env, autoreset on the NEXT step (see the replay memory)
    envs = gym.vector.SyncVectorEnv([make_env(args.bg_color, args.task, args.frame_stack) for _ in range(args.num_envs)])
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    num_actions = int(envs.single_action_space.n)

    encoder, q_network = build_networks(args, num_actions, device)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(q_network.parameters()), lr=args.learning_rate)
    target_encoder, target_network = build_networks(args, num_actions, device)
    global_step, num_updates = 0, 0
    if checkpoint is None:
        # Anchor embeddings start from the untrained encoder (R3L); the EMA then follows the training encoder.
        if args.relative:
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
            global_step, num_updates = state["global_step"], state["num_updates"]
            torch.set_rng_state(state["torch_rng"])
            rng.bit_generator.state = state["numpy_rng"]
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            print(f"error: --resume {args.resume!r} does not match its metadata ({str(e).strip().splitlines()[0]}); "
                  "accepted: an unmodified ddqn_relative.py checkpoint", file=sys.stderr)
            sys.exit(2)
        print(f"resumed {run_name} at global_step={global_step}; refilling the replay memory ({args.learning_starts} transitions)")

    def write_checkpoint():
        training_state = {
            "target_encoder": {k: v.detach().cpu() for k, v in target_encoder.state_dict().items()},
            "target_network": {k: v.detach().cpu() for k, v in target_network.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "global_step": global_step,
            "num_updates": num_updates,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": rng.bit_generator.state,
        }
        save_checkpoint(checkpoint_path, encoder, q_network,
                        checkpoint_metadata(args, num_actions, encoder.latent_dim, global_step), training_state)

    rb = FrameReplayBuffer(args.buffer_size, args.num_envs, args.frame_stack)
    start_time, start_step = time.time(), global_step
    # A resumed run cannot restore the envs' states: it starts new episodes on other tracks.
    obs, _ = envs.reset(seed=args.seed + global_step)
    rb.start(obs)
    episode_start = np.zeros(args.num_envs, dtype=np.bool_)
    iteration = 0
    while global_step < args.total_timesteps:
        iteration += 1
        global_step += args.num_envs
        # Epsilon-greedy with a linear schedule, drawn per env.
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
        explore = rng.random(args.num_envs) < epsilon
        actions = rng.integers(num_actions, size=args.num_envs)
        if not explore.all():
            with torch.no_grad():
                greedy = q_network.greedy_action(encoder(torch.as_tensor(obs, device=device))).cpu().numpy()
            actions = np.where(explore, actions, greedy)

        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        if "episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                print(f"global_step={global_step}, episodic_return={infos['episode']['r'][i]:.1f}")
                writer.add_scalar("charts/episodic_return", infos["episode"]["r"][i], global_step)
                writer.add_scalar("charts/episodic_length", infos["episode"]["l"][i], global_step)
        # The step after a done is the autoreset step: its observation is a reset, not a transition.
        rb.add(next_obs, actions, rewards, terminations, episode_start)
        episode_start = terminations | truncations
        obs = next_obs

        if len(rb) >= args.learning_starts:
            # One gradient step per `train_frequency` environment steps (several per iteration with many envs).
            for _ in range(global_step // args.train_frequency - (global_step - args.num_envs) // args.train_frequency):
                data = rb.sample(args.batch_size, rng)
                obs_b, next_obs_b = (torch.as_tensor(data[k], device=device) for k in ("obs", "next_obs"))
                actions_b = torch.as_tensor(data["actions"], device=device)
                rewards_b = torch.as_tensor(data["rewards"], device=device)
                terminations_b = torch.as_tensor(data["terminations"], dtype=torch.float32, device=device)
                with torch.no_grad():
                    td_target = double_dqn_target(rewards_b, terminations_b, q_network(encoder(next_obs_b)),
                                                  target_network(target_encoder(next_obs_b)), args.gamma)
                q_values = q_network(encoder(obs_b)).gather(1, actions_b[:, None]).squeeze(1)
                loss = F.smooth_l1_loss(q_values, td_target)  # Huber loss on the TD error
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                num_updates += 1
                # Anchor EMA (R3L) every `anchor_update_frequency` gradient steps, with coefficient a^K (see
                # build_networks): encoding all anchors costs num_anchors / (3 * batch_size) times the forward
                # passes of a gradient step (~33 at the defaults), and the EMA moves them slowly anyway.
                if args.relative and num_updates % args.anchor_update_frequency == 0:
                    encoder.update_anchors(anchor_frames)
                if num_updates % 100 == 0:
                    writer.add_scalar("losses/td_loss", loss.item(), global_step)
                    writer.add_scalar("losses/q_values", q_values.mean().item(), global_step)
                    writer.add_scalar("charts/epsilon", epsilon, global_step)
                    sps = int((global_step - start_step) / (time.time() - start_time))
                    print("SPS:", sps)
                    writer.add_scalar("charts/SPS", sps, global_step)
            # Hard target update every `target_network_frequency` env steps; the target encoder's anchor
            # embeddings are part of its state dict, so they are copied too.
            if global_step // args.target_network_frequency != (global_step - args.num_envs) // args.target_network_frequency:
                target_encoder.load_state_dict(encoder.state_dict())
                target_network.load_state_dict(q_network.state_dict())

        if args.save_every > 0 and iteration % args.save_every == 0 and global_step < args.total_timesteps:
            write_checkpoint()

    write_checkpoint()
    envs.close()
    sps = (global_step - start_step) / (time.time() - start_time)
    print(f"checkpoint saved to {checkpoint_path} (global_step={global_step}, SPS={sps:.2f})")
    if args.eval_episodes > 0:
        video_dir = os.path.join("videos", run_name) if args.capture_video else None
        eval_returns = evaluate(encoder, q_network, args.bg_color, args.task, args.frame_stack, args.eval_episodes,
                                args.seed + 10_000, device, video_dir=video_dir)
        for episode, episodic_return in enumerate(eval_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, episode)
        print(f"eval_return_mean={np.mean(eval_returns):.2f} eval_return_std={np.std(eval_returns):.2f} "
              f"({args.eval_episodes} greedy episodes on tracks {args.seed + 10_000}..)")
    writer.close()
