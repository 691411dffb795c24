# docs and experiment results can be found in docs/iqrl_td3.md
"""iQRL: implicitly Quantized Reinforcement Learning (Scannell et al., 2024, arXiv:2406.02696) on top of TD3.

A state-based agent that learns a latent state z = f(e_theta(o)) with a self-predictive loss (no decoder,
no reward head, no projection head), keeps it from collapsing with Finite Scalar Quantization (FSQ, f), and
runs model-free TD3 on the *detached* latent. The same file is its own baseline:

    python iqrl_td3.py                 # iQRL: encoder + FSQ + latent dynamics + TD3
    python iqrl_td3.py --no-fsq        # same encoder and loss, no quantisation (ablation)
    python iqrl_td3.py --no-encoder    # plain TD3 on raw observations (the baseline)
"""
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import List, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


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
    runs_dir: str = "runs"
    """directory that receives `runs/{run_name}/` (TensorBoard logs and checkpoint)"""
    save_model: bool = True
    """if toggled, write the checkpoint `runs/{run_name}/{exp_name}.cleanrl_model` at the end"""
    eval_episodes: int = 10
    """number of deterministic evaluation episodes at the end (0 disables the evaluation)"""
    eval_checkpoint: Optional[str] = None
    """if set, skip training: load this checkpoint and only run the deterministic evaluation"""

    # Algorithm specific arguments
    env_id: str = "HalfCheetah-v5"
    """the id of the gymnasium environment (continuous actions)"""
    total_timesteps: int = 1_000_000
    """total environment steps of the experiment"""
    learning_starts: int = 10_000
    """environment steps of uniformly random actions before learning starts"""
    buffer_size: int = 1_000_000
    """the replay memory buffer size"""
    batch_size: int = 256
    """the batch size of sequences sampled from the replay memory"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """soft-update rate of the target actor and target critics"""
    n_step: int = 1
    """number of rewards summed in the TD target before bootstrapping (n-step return)"""
    q_lr: float = 3e-4
    """learning rate of the critics (Adam)"""
    actor_lr: float = 3e-4
    """learning rate of the actor (Adam)"""
    policy_frequency: int = 2
    """the actor and the TD3 targets are updated once every this many critic updates (delayed actor)"""
    policy_noise: float = 0.2
    """std of the target policy smoothing noise, in units of the action scale"""
    noise_clip: float = 0.3
    """clip of the target policy smoothing noise, in units of the action scale"""
    exploration_noise_start: float = 1.0
    """std of the Gaussian exploration noise (units of the action scale) when learning starts"""
    exploration_noise_end: float = 0.1
    """std of the Gaussian exploration noise after the linear decay"""
    exploration_noise_decay_steps: int = 50_000
    """environment steps, counted from `learning_starts`, over which the exploration std decays linearly"""
    mlp_dims: List[int] = field(default_factory=lambda: [512, 512])
    """hidden layer sizes of the actor, the critics and the latent dynamics"""

    # Representation (iQRL) arguments
    no_encoder: bool = False
    """if toggled, plain TD3 on raw observations: no encoder, no FSQ, no dynamics, no representation loss"""
    no_fsq: bool = False
    """if toggled, keep the encoder and the self-predictive loss but do not quantise the latent"""
    fsq_levels: List[int] = field(default_factory=lambda: [8, 8])
    """FSQ levels per channel of one group; a group has prod(levels) codes (8 8 -> 64)"""
    latent_dim: int = 512
    """number of FSQ groups; the latent has latent_dim * len(fsq_levels) channels"""
    enc_mlp_dims: List[int] = field(default_factory=lambda: [256])
    """hidden layer sizes of the encoder"""
    enc_lr: float = 1e-4
    """learning rate of the encoder and the latent dynamics (AdamW)"""
    enc_weight_decay: float = 0.0
    """weight decay of the encoder/dynamics AdamW optimiser"""
    enc_grad_clip: float = 20.0
    """max global gradient norm of the encoder and the latent dynamics"""
    enc_tau: float = 0.005
    """EMA rate of the momentum (target) encoder"""
    horizon: int = 5
    """H: number of latent dynamics steps in the self-predictive loss"""
    rho: float = 0.9
    """discount of the self-predictive loss over the horizon (gamma_rep in the paper)"""
    log_every: int = 1000
    """log losses and representation diagnostics every this many updates"""


# ---------------------------------------------------------------------------------------------------------
# Finite Scalar Quantization (Mentzer et al., 2023), as used by iQRL (Sec. 3, "implicit quantization")
# ---------------------------------------------------------------------------------------------------------
def round_ste(z: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer with a straight-through gradient (d round(z) / dz := 1)."""
    return z + (torch.round(z) - z).detach()


class FSQ(nn.Module):
    """Quantise each group of len(levels) channels onto a fixed grid; no codebook to learn or to collapse.

    Channel i of a group is squashed with tanh into (-L_i/2, L_i/2), rounded to one of L_i integers and
    rescaled by 1 / (L_i // 2), so a group has prod(levels) possible codes and every output lies in [-1, 1].
    """

    def __init__(self, levels: List[int]):
        super().__init__()
        levels_t = torch.tensor(levels, dtype=torch.float32)
        self.levels = list(levels)
        self.register_buffer("_levels", levels_t, persistent=False)
        eps = 1e-3
        half_l = (levels_t - 1) * (1 + eps) / 2
        # even L has no symmetric integer grid around 0: shift by 0.5 so it is {-L/2, ..., L/2 - 1}
        offset = torch.where(levels_t % 2 == 0, 0.5, 0.0)
        self.register_buffer("_half_l", half_l, persistent=False)
        self.register_buffer("_offset", offset, persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l), persistent=False)
        self.register_buffer("_half_width", torch.div(levels_t, 2, rounding_mode="floor"), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + list(levels[:-1])), dim=0)
        self.register_buffer("_basis", basis, persistent=False)
        self.codebook_size = int(np.prod(levels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        groups = z.unflatten(-1, (-1, len(self.levels)))
        bounded = torch.tanh(groups + self._shift) * self._half_l - self._offset
        quantized = round_ste(bounded) / self._half_width
        return quantized.flatten(-2)

    def codes(self, z_quantized: torch.Tensor) -> torch.Tensor:
        """Integer code in [0, prod(levels)) of every group of an already quantised latent: [B, groups]."""
        digits = torch.round(z_quantized.unflatten(-1, (-1, len(self.levels))) * self._half_width) + self._half_width
        return (digits.long() * self._basis).sum(-1)


# ---------------------------------------------------------------------------------------------------------
# Networks: all MLPs with hidden layers Linear -> LayerNorm -> Mish (iQRL/TD-MPC2 style)
# ---------------------------------------------------------------------------------------------------------
def mlp(in_dim: int, hidden_dims: List[int], out_dim: int) -> nn.Sequential:
    layers, dim = [], in_dim
    for hidden in hidden_dims:
        layers += [nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.Mish()]
        dim = hidden
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """z = f(e_theta(o)); f is FSQ, or the identity for --no-fsq. With --no-encoder the whole map is identity."""

    def __init__(self, obs_dim: int, args: Args):
        super().__init__()
        if args.no_encoder:
            self.net, self.quantizer, self.latent_dim = nn.Identity(), nn.Identity(), obs_dim
        else:
            self.latent_dim = args.latent_dim * len(args.fsq_levels)
            self.net = mlp(obs_dim, args.enc_mlp_dims, self.latent_dim)
            self.quantizer = nn.Identity() if args.no_fsq else FSQ(args.fsq_levels)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.net(obs))


class LatentDynamics(nn.Module):
    """Residual latent dynamics: z_{t+1} = f(z_t + d_phi(z_t, a_t)), re-quantised at every step."""

    def __init__(self, latent_dim: int, act_dim: int, args: Args):
        super().__init__()
        self.net = mlp(latent_dim + act_dim, args.mlp_dims, latent_dim)
        self.quantizer = nn.Identity() if args.no_fsq else FSQ(args.fsq_levels)

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.quantizer(z + self.net(torch.cat([z, action], -1)))


class QNetwork(nn.Module):
    def __init__(self, latent_dim: int, act_dim: int, args: Args):
        super().__init__()
        self.net = mlp(latent_dim + act_dim, args.mlp_dims, 1)

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, action], -1))


class Actor(nn.Module):
    def __init__(self, latent_dim: int, act_dim: int, args: Args, action_low: np.ndarray, action_high: np.ndarray):
        super().__init__()
        self.net = mlp(latent_dim, args.mlp_dims, act_dim)
        self.register_buffer("action_scale", torch.tensor((action_high - action_low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((action_high + action_low) / 2.0, dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(z)) * self.action_scale + self.action_bias


# ---------------------------------------------------------------------------------------------------------
# Replay buffer of single transitions, sampled as length-L sequences with an episode mask
# ---------------------------------------------------------------------------------------------------------
class SequenceReplayBuffer:
    """Stores (o_t, a_t, r_t, o_{t+1}, terminated_t, episode_end_t) in time order, one env, circular.

    `sample` draws uniformly a start t and returns steps t..t+L-1 with `valid[:, h]` = 1 while step t+h is
    in the same episode as step t *and* has been written. Step t+h is invalid once an episode ended
    (terminated or truncated) at any step t..t+h-1, so nothing after an episode end is ever used.
    Truncation only cuts the sequence; its next_obs is the true final observation, and it is bootstrapped.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seq_len: int, seed: int):
        self.capacity, self.seq_len = capacity, seq_len
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, act_dim), dtype=np.float32)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.episode_end = np.zeros(capacity, dtype=np.float32)
        self.pos, self.size = 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, action, reward, next_obs, terminated: bool, truncated: bool):
        self.obs[self.pos], self.actions[self.pos], self.rewards[self.pos] = obs, action, reward
        self.next_obs[self.pos] = next_obs
        self.terminated[self.pos] = float(terminated)
        self.episode_end[self.pos] = float(terminated or truncated)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> dict:
        if self.size < self.capacity:
            starts = self.rng.integers(0, self.size, size=batch_size)
        else:
            starts = self.rng.integers(0, self.capacity, size=batch_size)
        offsets = np.arange(self.seq_len)
        idx = (starts[:, None] + offsets[None, :]) % self.capacity  # [B, L]
        # steps written after the start (the newest transition is at pos - 1); later slots are stale or empty
        written_after_start = (self.pos - 1 - starts) % self.capacity
        written = offsets[None, :] <= written_after_start[:, None]
        ended_before = np.cumsum(self.episode_end[idx], axis=1) - self.episode_end[idx]  # ends at t..t+h-1
        valid = (written & (ended_before == 0)).astype(np.float32)
        return {
            "obs": self.obs[idx],
            "actions": self.actions[idx],
            "rewards": self.rewards[idx],
            "next_obs": self.next_obs[idx],
            "terminated": self.terminated[idx],
            "valid": valid,
        }


def n_step_targets(rewards: torch.Tensor, terminated: torch.Tensor, valid: torch.Tensor, gamma: float, n_step: int):
    """n-step return pieces for sequences [B, L >= n_step] starting at t (paper's critic target y).

    y_t = sum_{k=0}^{m-1} gamma^k r_{t+k} + gamma^m (1 - terminated_{t+m-1}) min_k Qbar(z_{t+m}, a~),
    where m = min(n_step, steps until the episode ends, inclusive). Returns (discounted reward sum [B],
    bootstrap index m-1 [B] (whose next_obs is z_{t+m}), bootstrap coefficient gamma^m (1 - terminated) [B]).
    """
    valid_n = valid[:, :n_step]
    discounts = gamma ** torch.arange(n_step, dtype=rewards.dtype, device=rewards.device)
    reward_sum = (rewards[:, :n_step] * valid_n * discounts).sum(1)
    last = valid_n.sum(1).long() - 1
    not_terminated = 1.0 - terminated.gather(1, last[:, None]).squeeze(1)
    bootstrap_coef = gamma ** (last + 1).to(rewards.dtype) * not_terminated
    return reward_sum, last, bootstrap_coef


def self_predictive_loss(encoder, target_encoder, dynamics, obs, actions, next_obs, valid, rho: float):
    """iQRL representation loss (paper Eq. for L_rep), summed over h = 0..H-1 with weight rho^h:

        1 - cos( f(z_hat_h + d(z_hat_h, a_{t+h})),  f(e_target(o_{t+h+1})) ),  z_hat_0 = f(e(o_t)),

    masked after episode ends. The paper writes L_rep as the cosine *similarity*, which must be maximised;
    the authors' released code minimises +cos (a sign bug, later fixed in a fork). Minimising 1 - cos is the
    correct direction (same gradient as -cos, but the logged loss is >= 0 with 0 = perfect prediction).
    """
    horizon = actions.shape[1]
    with torch.no_grad():
        targets = target_encoder(next_obs)  # [B, H, latent]
    z_hat = encoder(obs[:, 0])
    loss = obs.new_zeros(())
    for h in range(horizon):
        z_hat = dynamics(z_hat, actions[:, h])
        cos = F.cosine_similarity(z_hat, targets[:, h], dim=-1)
        loss = loss + rho**h * ((1.0 - cos) * valid[:, h]).mean()
    return loss


@torch.no_grad()
def latent_rank_percent(z: torch.Tensor, rtol: float) -> float:
    """Rank of a batch of latents [B, D] as % of full rank min(B, D); singular values below rtol * s_max
    count as zero (the paper's dimensional-collapse diagnostic)."""
    rank = torch.linalg.matrix_rank(z, rtol=rtol).item()
    return 100.0 * rank / min(z.shape)


@torch.no_grad()
def codebook_usage(quantizer: FSQ, z: torch.Tensor) -> torch.Tensor:
    """Fraction of the prod(levels) codes used by each group over a batch [B, D] -> [groups]."""
    codes = quantizer.codes(z)  # [B, G]
    used = torch.zeros(codes.shape[1], quantizer.codebook_size, device=z.device)
    used.scatter_(1, codes.T, 1.0)
    return used.mean(1)


# ---------------------------------------------------------------------------------------------------------
# Input validation, checkpoints, evaluation
# ---------------------------------------------------------------------------------------------------------
class UserError(Exception):
    """Bad flags or files: reported as one line, no traceback."""


def validate_args(args: Args):
    try:
        gym.spec(args.env_id)
    except gym.error.Error:
        raise UserError(
            f"unknown --env-id {args.env_id!r}; accepted: a registered gymnasium id with continuous (Box) actions, "
            "e.g. HalfCheetah-v5, Hopper-v5, Walker2d-v5, Humanoid-v5, Pendulum-v1"
        ) from None
    checks = [
        (all(level >= 2 for level in args.fsq_levels) and len(args.fsq_levels) >= 1, "--fsq-levels",
         args.fsq_levels, "one or more integers >= 2, e.g. 8 8 or 8 6 5"),
        (args.n_step >= 1, "--n-step", args.n_step, "an integer >= 1"),
        (args.horizon >= 1, "--horizon", args.horizon, "an integer >= 1"),
        (0.0 < args.rho <= 1.0, "--rho", args.rho, "a float in (0, 1]"),
        (0.0 <= args.gamma <= 1.0, "--gamma", args.gamma, "a float in [0, 1]"),
        (0.0 < args.tau <= 1.0, "--tau", args.tau, "a float in (0, 1]"),
        (0.0 < args.enc_tau <= 1.0, "--enc-tau", args.enc_tau, "a float in (0, 1]"),
        (args.latent_dim >= 1, "--latent-dim", args.latent_dim, "an integer >= 1"),
        (args.batch_size >= 1, "--batch-size", args.batch_size, "an integer >= 1"),
        (args.total_timesteps >= 1, "--total-timesteps", args.total_timesteps, "an integer >= 1"),
        (args.learning_starts >= 1, "--learning-starts", args.learning_starts, "an integer >= 1"),
        (args.buffer_size >= max(args.horizon, args.n_step) + 1, "--buffer-size", args.buffer_size,
         "an integer > max(--horizon, --n-step)"),
        (args.policy_frequency >= 1, "--policy-frequency", args.policy_frequency, "an integer >= 1"),
        (args.exploration_noise_decay_steps >= 1, "--exploration-noise-decay-steps",
         args.exploration_noise_decay_steps, "an integer >= 1"),
        (min(args.policy_noise, args.noise_clip, args.exploration_noise_start, args.exploration_noise_end) >= 0,
         "--policy-noise/--noise-clip/--exploration-noise-*",
         (args.policy_noise, args.noise_clip, args.exploration_noise_start, args.exploration_noise_end),
         "non-negative floats"),
        (len(args.mlp_dims) >= 1 and min(args.mlp_dims) >= 1, "--mlp-dims", args.mlp_dims, "positive integers"),
        (min(args.enc_mlp_dims, default=1) >= 1, "--enc-mlp-dims", args.enc_mlp_dims, "positive integers"),
        (args.eval_episodes >= 0, "--eval-episodes", args.eval_episodes, "an integer >= 0"),
        (args.log_every >= 1, "--log-every", args.log_every, "an integer >= 1"),
        (args.torch_threads >= 1, "--torch-threads", args.torch_threads, "an integer >= 1"),
        (not (args.no_encoder and args.no_fsq), "--no-encoder with --no-fsq", "both set",
         "at most one of the two (--no-encoder already has no FSQ)"),
    ]
    for ok, flag, value, accepted in checks:
        if not ok:
            raise UserError(f"bad {flag} {value}; accepted: {accepted}")


def make_env(env_id: str, seed: int) -> gym.Env:
    env = gym.make(env_id)
    if not isinstance(env.action_space, gym.spaces.Box) or len(env.observation_space.shape or ()) != 1:
        raise UserError(
            f"--env-id {env_id!r} has action space {env.action_space} and observation space "
            f"{env.observation_space}; accepted: continuous (Box) actions and flat vector observations"
        )
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env.action_space.seed(seed)
    env.observation_space.seed(seed)
    return env


def save_checkpoint(path: str, modules: dict, metadata: dict):
    """Atomic: write a temp file in the same directory, then os.replace (a crash never leaves half a file)."""
    payload = {name: {k: v.detach().cpu() for k, v in module.state_dict().items()} for name, module in modules.items()}
    payload["metadata"] = metadata
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".cleanrl_model")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def load_checkpoint(path: str) -> dict:
    """Load with weights_only=True and check the structure; any problem is a one-line UserError."""
    required = {"actor", "qf1", "qf2", "metadata"}
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"--eval-checkpoint {path!r} does not exist; accepted: a file written by iqrl_td3.py") from None
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"--eval-checkpoint {path!r} is not a loadable torch checkpoint ({first_line}); "
            "accepted: a file written by iqrl_td3.py"
        ) from None
    if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UserError(
            f"--eval-checkpoint {path!r} has keys {found}; accepted: an iqrl_td3.py checkpoint with keys "
            f"{sorted(required)} (+ encoder, dynamics)"
        )
    metadata = checkpoint["metadata"]
    if not isinstance(metadata, dict) or not isinstance(metadata.get("args"), dict):
        raise UserError(f"--eval-checkpoint {path!r} has malformed metadata; accepted: a file written by iqrl_td3.py")
    return checkpoint


@torch.no_grad()
def evaluate(encoder: Encoder, actor: Actor, env_id: str, episodes: int, seed: int, device) -> List[float]:
    """Deterministic policy (no exploration noise) on a fresh env; returns the episodic returns."""
    env = make_env(env_id, seed)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, episode_return = False, 0.0
        while not done:
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
            action = actor(encoder(obs_t))[0].cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
    env.close()
    return returns


def build_networks(args: Args, obs_dim: int, act_dim: int, action_low, action_high, device):
    encoder = Encoder(obs_dim, args).to(device)
    latent_dim = encoder.latent_dim
    actor = Actor(latent_dim, act_dim, args, action_low, action_high).to(device)
    qf1 = QNetwork(latent_dim, act_dim, args).to(device)
    qf2 = QNetwork(latent_dim, act_dim, args).to(device)
    dynamics = None if args.no_encoder else LatentDynamics(latent_dim, act_dim, args).to(device)
    return encoder, dynamics, actor, qf1, qf2


def run_eval_checkpoint(args: Args, device):
    checkpoint = load_checkpoint(args.eval_checkpoint)
    try:
        saved = Args(**{k: v for k, v in checkpoint["metadata"]["args"].items() if k in Args.__dataclass_fields__})
        validate_args(saved)
    except (TypeError, ValueError) as e:
        raise UserError(
            f"--eval-checkpoint {args.eval_checkpoint!r} has malformed metadata args ({e}); "
            "accepted: a file written by iqrl_td3.py"
        ) from None
    env = make_env(saved.env_id, args.seed)
    encoder, _, actor, _, _ = build_networks(
        saved, env.observation_space.shape[0], env.action_space.shape[0], env.action_space.low,
        env.action_space.high, device
    )
    env.close()
    try:
        actor.load_state_dict(checkpoint["actor"])
        if not saved.no_encoder:
            encoder.load_state_dict(checkpoint["encoder"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first_line = str(e).strip().splitlines()[0]
        raise UserError(
            f"--eval-checkpoint {args.eval_checkpoint!r} weights do not match its metadata ({first_line}); "
            "accepted: an unmodified iqrl_td3.py checkpoint"
        ) from None
    returns = evaluate(encoder, actor, saved.env_id, max(args.eval_episodes, 1), args.seed + 10_000, device)
    print(f"eval {saved.env_id} ({checkpoint['metadata'].get('mode')}): return {np.mean(returns):.2f} +- {np.std(returns):.2f}")


if __name__ == "__main__":
    args = tyro.cli(Args)
    try:
        validate_args(args)
        torch.set_num_threads(args.torch_threads)
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = args.torch_deterministic
        device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
        if args.eval_checkpoint is not None:
            run_eval_checkpoint(args, device)
            sys.exit(0)
        env = make_env(args.env_id, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    mode = "td3" if args.no_encoder else ("iqrl-no-fsq" if args.no_fsq else "iqrl")
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.runs_dir, run_name)
    writer = SummaryWriter(run_dir)
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )

    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    action_low, action_high = env.action_space.low, env.action_space.high
    encoder, dynamics, actor, qf1, qf2 = build_networks(args, obs_dim, act_dim, action_low, action_high, device)
    latent_dim = encoder.latent_dim
    target_encoder = Encoder(obs_dim, args).to(device)  # momentum encoder e_theta_bar (EMA of e_theta)
    target_encoder.load_state_dict(encoder.state_dict())
    target_actor = Actor(latent_dim, act_dim, args, action_low, action_high).to(device)
    qf1_target = QNetwork(latent_dim, act_dim, args).to(device)
    qf2_target = QNetwork(latent_dim, act_dim, args).to(device)
    target_actor.load_state_dict(actor.state_dict())
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.actor_lr)
    if dynamics is not None:
        representation_params = list(encoder.parameters()) + list(dynamics.parameters())
        rep_optimizer = torch.optim.AdamW(representation_params, lr=args.enc_lr, weight_decay=args.enc_weight_decay)
    action_scale = actor.action_scale

    # one sequence serves both losses: H steps for the self-predictive loss, n steps for the n-step return
    seq_len = max(args.n_step, 1 if args.no_encoder else args.horizon)
    rb = SequenceReplayBuffer(args.buffer_size, obs_dim, act_dim, seq_len, args.seed)
    noise_rng = np.random.default_rng(args.seed + 1)
    start_time = time.time()
    update_time, num_updates = 0.0, 0

    obs, _ = env.reset(seed=args.seed)
    for global_step in range(args.total_timesteps):
        # ALGO LOGIC: put action logic here
        if global_step < args.learning_starts:
            action = env.action_space.sample()
        else:
            # exploration std decays linearly from start to end (in units of the action scale)
            frac = min(1.0, (global_step - args.learning_starts) / args.exploration_noise_decay_steps)
            exploration_std = args.exploration_noise_start + frac * (args.exploration_noise_end - args.exploration_noise_start)
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
                action = actor(encoder(obs_t))[0].cpu().numpy()
            action = action + noise_rng.normal(0.0, exploration_std, size=act_dim) * action_scale.cpu().numpy()
            action = np.clip(action, action_low, action_high).astype(np.float32)

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, reward, terminated, truncated, info = env.step(action)
        if "episode" in info:
            print(f"global_step={global_step}, episodic_return={float(info['episode']['r']):.2f}")
            writer.add_scalar("charts/episodic_return", float(info["episode"]["r"]), global_step)
            writer.add_scalar("charts/episodic_length", int(info["episode"]["l"]), global_step)

        # a single non-vector env: next_obs is always the true next observation (also on truncation), and
        # we reset ourselves, so no autoreset transition ever reaches the buffer
        rb.add(obs, action, reward, next_obs, terminated, truncated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()

        # ALGO LOGIC: training.
        if global_step >= args.learning_starts:
            update_start = time.time()
            batch = {k: torch.as_tensor(v, device=device) for k, v in rb.sample(args.batch_size).items()}
            log_now = num_updates % args.log_every == 0

            # 1) encoder + latent dynamics: self-predictive loss over the horizon H (paper Eq. L_rep)
            if dynamics is not None:
                H = args.horizon
                rep_loss = self_predictive_loss(
                    encoder, target_encoder, dynamics, batch["obs"][:, :H], batch["actions"][:, :H],
                    batch["next_obs"][:, :H], batch["valid"][:, :H], args.rho,
                )
                rep_optimizer.zero_grad()
                rep_loss.backward()
                enc_grad_norm = nn.utils.clip_grad_norm_(representation_params, args.enc_grad_clip)
                rep_optimizer.step()
                # momentum encoder: theta_bar <- (1 - tau) theta_bar + tau theta, every update
                with torch.no_grad():
                    for param, target_param in zip(encoder.parameters(), target_encoder.parameters()):
                        target_param.lerp_(param, args.enc_tau)

            # 2) critics on the *detached* online latent z = f(e_theta(o)) (no critic gradient into e_theta)
            reward_sum, last, bootstrap_coef = n_step_targets(
                batch["rewards"], batch["terminated"], batch["valid"], args.gamma, args.n_step
            )
            with torch.no_grad():
                z = encoder(batch["obs"][:, 0])
                bootstrap_obs = batch["next_obs"][torch.arange(args.batch_size, device=device), last]
                z_bootstrap = encoder(bootstrap_obs)
                # target policy smoothing: a~ = pi_bar(z') + clip(eps, -c, c), eps ~ N(0, sigma^2)
                clipped_noise = (torch.randn_like(batch["actions"][:, 0]) * args.policy_noise).clamp(
                    -args.noise_clip, args.noise_clip
                ) * action_scale
                next_actions = (target_actor(z_bootstrap) + clipped_noise).clamp(
                    torch.as_tensor(action_low, device=device), torch.as_tensor(action_high, device=device)
                )
                # clipped double Q: min over the two target critics
                min_q_next = torch.min(qf1_target(z_bootstrap, next_actions), qf2_target(z_bootstrap, next_actions))
                td_target = reward_sum + bootstrap_coef * min_q_next.view(-1)
            actions_t = batch["actions"][:, 0]
            qf1_a_values = qf1(z, actions_t).view(-1)
            qf2_a_values = qf2(z, actions_t).view(-1)
            qf1_loss = F.mse_loss(qf1_a_values, td_target)
            qf2_loss = F.mse_loss(qf2_a_values, td_target)
            qf_loss = qf1_loss + qf2_loss
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            # 3) delayed actor and soft target updates (TD3)
            if num_updates % args.policy_frequency == 0:
                # paper's L_pi: maximise min_k q_k(z, pi(z)) (CleanRL's TD3 uses qf1 alone)
                policy_actions = actor(z)
                actor_loss = -torch.min(qf1(z, policy_actions), qf2(z, policy_actions)).mean()
                actor_optimizer.zero_grad()
                actor_loss.backward()
                actor_optimizer.step()
                with torch.no_grad():
                    for net, target_net in ((actor, target_actor), (qf1, qf1_target), (qf2, qf2_target)):
                        for param, target_param in zip(net.parameters(), target_net.parameters()):
                            target_param.lerp_(param, args.tau)
            num_updates += 1
            update_time += time.time() - update_start

            if log_now:
                writer.add_scalar("losses/qf1_values", qf1_a_values.mean().item(), global_step)
                writer.add_scalar("losses/qf2_values", qf2_a_values.mean().item(), global_step)
                writer.add_scalar("losses/qf1_loss", qf1_loss.item(), global_step)
                writer.add_scalar("losses/qf2_loss", qf2_loss.item(), global_step)
                writer.add_scalar("losses/qf_loss", qf_loss.item() / 2.0, global_step)
                writer.add_scalar("losses/actor_loss", actor_loss.item(), global_step)
                writer.add_scalar("charts/exploration_noise", exploration_std, global_step)
                if dynamics is not None:
                    writer.add_scalar("losses/representation_loss", rep_loss.item(), global_step)
                    writer.add_scalar("losses/encoder_grad_norm", enc_grad_norm.item(), global_step)
                    for tol in (1e-1, 1e-2, 1e-3):
                        writer.add_scalar(f"charts/latent_rank_pct_tol{tol:.0e}", latent_rank_percent(z, tol), global_step)
                    if not args.no_fsq:
                        usage = codebook_usage(encoder.quantizer, z)
                        writer.add_histogram("charts/codebook_usage_per_group", usage, global_step)
                        writer.add_scalar("charts/codebook_usage_mean", usage.mean().item(), global_step)
                        writer.add_scalar("charts/codebook_usage_min", usage.min().item(), global_step)
                sps = int(global_step / (time.time() - start_time))
                print("SPS:", sps)
                writer.add_scalar("charts/SPS", sps, global_step)
                writer.add_scalar("charts/updates_per_second", num_updates / update_time, global_step)

    env.close()
    train_time = time.time() - start_time
    print(f"trained {args.total_timesteps} steps, {num_updates} updates in {train_time:.1f}s "
          f"({1000 * update_time / max(num_updates, 1):.2f} s per 1k updates)")

    # final representation diagnostics on a replay batch (printed so benchmarks can parse them)
    if dynamics is not None and rb.size > 0:
        with torch.no_grad():
            z_final = encoder(torch.as_tensor(rb.sample(args.batch_size)["obs"][:, 0], device=device))
        for tol in (1e-1, 1e-2, 1e-3):
            print(f"final_latent_rank_pct_tol{tol:.0e}={latent_rank_percent(z_final, tol):.2f}")
    if num_updates > 0:
        print(f"s_per_1k_updates={1000 * update_time / num_updates:.4f}")

    if args.save_model:
        model_path = os.path.join(run_dir, f"{args.exp_name}.cleanrl_model")
        modules = {"actor": actor, "qf1": qf1, "qf2": qf2}
        if dynamics is not None:
            modules.update(encoder=encoder, target_encoder=target_encoder, dynamics=dynamics)
        metadata = {
            "mode": mode,
            "args": {k: (list(v) if isinstance(v, list) else v) for k, v in vars(args).items()},
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "latent_dim": latent_dim,
            "global_step": args.total_timesteps,
            "num_updates": num_updates,
        }
        save_checkpoint(model_path, modules, metadata)
        print(f"model saved to {model_path}")

    if args.eval_episodes > 0:
        returns = evaluate(encoder, actor, args.env_id, args.eval_episodes, args.seed + 10_000, device)
        for episode, episodic_return in enumerate(returns):
            writer.add_scalar("eval/episodic_return", episodic_return, episode)
        print(f"eval_return_mean={np.mean(returns):.2f} eval_return_std={np.std(returns):.2f}")
    writer.close()
