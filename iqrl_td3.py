# docs and experiment results can be found in docs/iqrl_td3.md
"""iQRL: implicitly Quantized Reinforcement Learning (Scannell et al., 2024, arXiv:2406.02696) on top of TD3.

A state-based agent learns a latent state with a self-predictive loss (no decoder, no reward head, no projection
head), keeps it from collapsing with Finite Scalar Quantization f (FSQ, Mentzer et al., 2023, arXiv:2309.15505),
and runs model-free TD3 on the *detached* latent:

    z_t = f(e_theta(o_t))                                   encoder + FSQ; e_bar = EMA of e_theta
    z^_{h+1} = f(z^_h + d_phi(z^_h, a_{t+h})),  z^_0 = z_t   residual latent dynamics
    L_rep = sum_{h<H} rho^h (1 - cos(z^_{h+1}, f(e_bar(o_{t+h+1}))))        (maximises the paper's cosine)
    y = sum_{k<n} gamma^k r_{t+k} + gamma^n min_{2 sampled j} Qbar_j(z_{t+n}, pi_bar(z_{t+n}) + clip(eps))
    L_Q = sum_j (Q_j(sg(z_t), a_t) - y)^2,   L_pi = -mean_{2 sampled j} Q_j(sg(z_t), pi(sg(z_t)))

The same file holds its ablations and the standard baseline:

    python iqrl_td3.py                  # iQRL: encoder + FSQ + latent dynamics + TD3 with 5 critics
    python iqrl_td3.py --no-fsq         # same encoder and loss, no quantisation
    python iqrl_td3.py --no-encoder     # iQRL's TD3 networks (LayerNorm + Mish, 5 critics) on raw observations
    python iqrl_td3.py --algo td3       # standard TD3 (Fujimoto et al., 2018, arXiv:1802.09477; CleanRL settings)
"""

import math
import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import List, Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from envs.checkpoint import (
    GracefulStop,
    ensure_writable_dir,
    fail,
    load_torch_file,
    resolve_precision,
    resume_args,
    save_atomic,
)


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
    torch_threads: int = min(2, os.cpu_count() or 1)
    """CPU threads torch uses. 2 (where there are 2 cores) made an update 1.6-1.9x faster in wall-clock time on an idle
    2-core machine (docs, Speed); pass 1 when several runs share the cores (2 threads each on a busy machine: 0.19x)"""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """bf16: autocast forward passes (fp32 weights, optimiser state, value head, losses, checkpoints); auto: bf16 where
    the device computes it natively (CUDA with bf16, CPU with AMX or AVX512-BF16); fp32 default: parity not shown"""
    runs_dir: str = "runs"
    """folder that receives `{runs_dir}/{run_name}/` (TensorBoard logs and the checkpoint agent.pt)"""
    resume: Optional[str] = None
    """resume from this checkpoint (agent.pt or its run folder); architecture flags come from the checkpoint"""
    save_every: int = 25_000
    """write the checkpoint every this many environment steps (0: only at the end)"""
    eval_episodes: int = 10
    """deterministic evaluation episodes at the end (0 disables it)"""
    eval_checkpoint: Optional[str] = None
    """if set, skip training: load this checkpoint (agent.pt or its run folder) and only evaluate it"""

    # Algorithm specific arguments
    algo: Literal["iqrl", "td3"] = "iqrl"
    """iqrl: the iQRL agent (ablations: --no-fsq, --no-encoder); td3: standard TD3 (ReLU 256-256, 2 critics, actor on Q1)"""
    env_id: str = "HalfCheetah-v5"
    """the id of the gymnasium environment (continuous actions, vector observations)"""
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
    """the actor (and its target) is updated once every this many critic updates (delayed actor)"""
    policy_noise: float = 0.2
    """std of the target policy smoothing noise, in units of the action scale"""
    noise_clip: Optional[float] = None
    """clip of the target policy smoothing noise, in units of the action scale (default: iqrl 0.3, td3 0.5)"""
    exploration_noise_start: Optional[float] = None
    """std of the Gaussian exploration noise (x action scale) when learning starts (default: iqrl 1.0, td3 0.1)"""
    exploration_noise_end: float = 0.1
    """std of the Gaussian exploration noise after the linear decay"""
    exploration_noise_decay_steps: int = 50_000
    """environment steps, counted from `learning_starts`, over which the exploration std decays linearly"""
    mlp_dims: Optional[List[int]] = None
    """hidden sizes of the actor, the critics and the latent dynamics (default: iqrl 512 512, td3 256 256)"""
    num_critics: int = 5
    """iqrl: size of the critic ensemble (official code: 5)"""
    num_sampled_critics: int = 2
    """iqrl: critics drawn at random from the ensemble for the target's min and the actor's mean (official: 2)"""
    critic_target_every_step: bool = True
    """iqrl: soft-update the target critics after every critic step (official code); --no-...: with the actor (TD3)"""

    # Representation (iQRL) arguments
    encoder: bool = True
    """iqrl: learn a latent with the encoder, dynamics and self-predictive loss (--no-encoder: TD3 part on raw obs)"""
    fsq: bool = True
    """iqrl: quantise the latent with FSQ (--no-fsq: the ablation without quantisation)"""
    fsq_levels: List[int] = field(default_factory=lambda: [8, 8])
    """FSQ levels per channel of one group; a group has prod(levels) codes (8 8 -> 64)"""
    latent_dim: int = 512
    """number of FSQ groups; the latent has latent_dim * len(fsq_levels) channels"""
    enc_mlp_dims: List[int] = field(default_factory=lambda: [256])
    """hidden layer sizes of the encoder"""
    enc_lr: float = 1e-4
    """learning rate of the encoder and the latent dynamics (AdamW)"""
    enc_weight_decay: float = 0.01
    """weight decay of the encoder/dynamics AdamW (official code: PyTorch's AdamW default 0.01)"""
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
    Always computed in fp32 (bf16 has too few mantissa bits to round near the grid's half-way points).
    """

    def __init__(self, levels: List[int]):
        super().__init__()
        levels_t = torch.tensor(levels, dtype=torch.float32)
        self.levels = list(levels)
        half_l = (levels_t - 1) * (1 + 1e-3) / 2
        # even L has no symmetric integer grid around 0: shift by 0.5 so it is {-L/2, ..., L/2 - 1}
        offset = torch.where(levels_t % 2 == 0, 0.5, 0.0)
        self.register_buffer("_half_l", half_l, persistent=False)
        self.register_buffer("_offset", offset, persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l), persistent=False)
        self.register_buffer("_half_width", torch.div(levels_t, 2, rounding_mode="floor"), persistent=False)
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + list(levels[:-1])), dim=0), persistent=False)
        self.codebook_size = math.prod(levels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        groups = z.float().unflatten(-1, (-1, len(self.levels)))
        bounded = torch.tanh(groups + self._shift) * self._half_l - self._offset
        return (round_ste(bounded) / self._half_width).flatten(-2)

    def codes(self, z_quantized: torch.Tensor) -> torch.Tensor:
        """Integer code in [0, prod(levels)) of every group of an already quantised latent: [B, groups]."""
        digits = torch.round(z_quantized.unflatten(-1, (-1, len(self.levels))) * self._half_width) + self._half_width
        return (digits.long() * self._basis).sum(-1)


# ---------------------------------------------------------------------------------------------------------
# Networks. iQRL: hidden layers Linear -> LayerNorm -> Mish (TD-MPC2 style); TD3: Linear -> ReLU.
# ---------------------------------------------------------------------------------------------------------
def mlp(in_dim: int, hidden_dims: List[int], out_dim: int, layer_norm: bool = True) -> nn.Sequential:
    layers, dim = [], in_dim
    for hidden in hidden_dims:
        layers += [nn.Linear(dim, hidden), *((nn.LayerNorm(hidden), nn.Mish()) if layer_norm else (nn.ReLU(),))]
        dim = hidden
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """z = f(e_theta(o)); f is FSQ, or the identity for --no-fsq. Without an encoder the whole map is the identity."""

    def __init__(self, obs_dim: int, args: Args):
        super().__init__()
        if args.algo == "td3" or not args.encoder:
            self.net, self.quantizer, self.latent_dim = nn.Identity(), nn.Identity(), obs_dim
        else:
            self.latent_dim = args.latent_dim * len(args.fsq_levels)
            self.net = mlp(obs_dim, args.enc_mlp_dims, self.latent_dim)
            self.quantizer = FSQ(args.fsq_levels) if args.fsq else nn.Identity()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.net(obs))


class LatentDynamics(nn.Module):
    """Residual latent dynamics z^_{h+1} = f(z^_h + d_phi(z^_h, a_h)), re-quantised at every step.

    The first layer W [z; a] is split into W_z z + W_a a, so the action part of all H steps is one matmul."""

    def __init__(self, latent_dim: int, act_dim: int, args: Args):
        super().__init__()
        hidden = args.mlp_dims
        self.z_in, self.a_in = nn.Linear(latent_dim, hidden[0]), nn.Linear(act_dim, hidden[0], bias=False)
        bound = 1.0 / math.sqrt(latent_dim + act_dim)  # nn.Linear's init of the unsplit [z; a] layer
        for weight in (self.z_in.weight, self.z_in.bias, self.a_in.weight):
            nn.init.uniform_(weight, -bound, bound)
        self.trunk = nn.Sequential(nn.LayerNorm(hidden[0]), nn.Mish(), *mlp(hidden[0], hidden[1:], latent_dim))
        self.quantizer = FSQ(args.fsq_levels) if args.fsq else nn.Identity()

    def rollout(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """z^_1..z^_H [B, H, D] from z^_0 = z [B, D] and actions [B, H, A]."""
        action_part = self.a_in(actions)
        predictions = []
        for h in range(actions.shape[1]):
            z = self.quantizer(z + self.trunk(self.z_in(z) + action_part[:, h]))
            predictions.append(z)
        return torch.stack(predictions, 1)


class CriticEnsemble(nn.Module):
    """E independent critics Q_j(z, a) evaluated as batched matmuls (one baddbmm per layer for all members).

    iQRL: E = 5 with LayerNorm + Mish hidden layers; standard TD3: E = 2 with ReLU. Each member is initialised
    like nn.Linear (uniform +-1/sqrt(fan_in)); LayerNorm affine parameters are per member."""

    def __init__(self, in_dim: int, hidden_dims: List[int], num_members: int, layer_norm: bool):
        super().__init__()
        dims = [in_dim, *hidden_dims, 1]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(num_members, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_members, 1, fan_out).uniform_(-bound, bound)))
        self.layer_norm = layer_norm
        if layer_norm:
            self.ln_weights = nn.ParameterList([nn.Parameter(torch.ones(num_members, 1, d)) for d in hidden_dims])
            self.ln_biases = nn.ParameterList([nn.Parameter(torch.zeros(num_members, 1, d)) for d in hidden_dims])

    def forward(self, z: torch.Tensor, action: torch.Tensor, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Q values [E', B] of all members, or of the members indexed by `members` (E' = len(members))."""
        x = torch.cat([z, action], -1)
        for i, (weight, bias) in enumerate(zip(self.weights[:-1], self.biases[:-1])):
            if members is not None:
                weight, bias = weight[members], bias[members]
            x = torch.baddbmm(bias, x.expand(weight.shape[0], *x.shape[-2:]) if x.dim() == 2 else x, weight)
            if self.layer_norm:
                ln_w, ln_b = self.ln_weights[i], self.ln_biases[i]
                if members is not None:
                    ln_w, ln_b = ln_w[members], ln_b[members]
                x = F.mish(F.layer_norm(x, x.shape[-1:]) * ln_w + ln_b)
            else:
                x = F.relu(x)
        weight, bias = self.weights[-1], self.biases[-1]
        if members is not None:
            weight, bias = weight[members], bias[members]
        # the value head stays fp32 under bf16 autocast: bf16's 8-bit mantissa would round Q ~ 500 to steps of 2
        with torch.autocast(x.device.type, enabled=False):
            return torch.baddbmm(bias, x.float(), weight).squeeze(-1)


class Actor(nn.Module):
    """pi(z) = tanh(MLP(z)) * action_scale + action_bias."""

    def __init__(self, latent_dim: int, act_dim: int, args: Args, action_low: np.ndarray, action_high: np.ndarray):
        super().__init__()
        self.net = mlp(latent_dim, args.mlp_dims, act_dim, layer_norm=args.algo == "iqrl")
        self.register_buffer("action_scale", torch.tensor((action_high - action_low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((action_high + action_low) / 2.0, dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(z).float()) * self.action_scale + self.action_bias


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

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated", "episode_end")

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
        starts = self.rng.integers(0, self.size, size=batch_size)
        offsets = np.arange(self.seq_len)
        idx = (starts[:, None] + offsets[None, :]) % self.capacity  # [B, L]
        # steps written after the start (the newest transition is at pos - 1); later slots are stale or empty
        written = offsets[None, :] <= ((self.pos - 1 - starts) % self.capacity)[:, None]
        ends = self.episode_end[idx]
        valid = (written & (np.cumsum(ends, axis=1) - ends == 0)).astype(np.float32)  # no end at t..t+h-1
        return {"obs": self.obs[idx], "actions": self.actions[idx], "rewards": self.rewards[idx],
                "next_obs": self.next_obs[idx], "terminated": self.terminated[idx], "valid": valid}  # fmt: skip


def n_step_targets(rewards: torch.Tensor, terminated: torch.Tensor, valid: torch.Tensor, gamma: float, n_step: int):
    """n-step return pieces for sequences [B, L >= n_step] starting at t (paper's critic target y).

    y_t = sum_{k=0}^{m-1} gamma^k r_{t+k} + gamma^m (1 - terminated_{t+m-1}) min_j Qbar_j(z_{t+m}, a~),
    where m = min(n_step, steps until the episode ends, inclusive). Returns (discounted reward sum [B],
    bootstrap index m-1 [B] (whose next_obs is z_{t+m}), bootstrap coefficient gamma^m (1 - terminated) [B]).
    """
    valid_n = valid[:, :n_step]
    discounts = gamma ** torch.arange(n_step, dtype=rewards.dtype, device=rewards.device)
    reward_sum = (rewards[:, :n_step] * valid_n * discounts).sum(1)
    last = valid_n.sum(1).long() - 1
    not_terminated = 1.0 - terminated.gather(1, last[:, None]).squeeze(1)
    return reward_sum, last, gamma ** (last + 1).to(rewards.dtype) * not_terminated


@torch.no_grad()
def representation_diagnostics(encoder: Encoder, obs: torch.Tensor) -> dict:
    """The paper's dimensional-collapse diagnostics on a batch of N observations (N = D, the latent width).

    rank: number of singular values of the *pre-quantisation* latents e_theta(o) [N, D] above max(tol, tol * s_max)
    (atol = rtol = tol, as the official code's matrix_rank), as a share of D, at tol 1e-1 / 1e-2 / 1e-3; condition
    number s_max / s_min. With FSQ, the rank of the quantised codes f(e(o)) and the share of each group's codes in
    use are added: rounding noise makes quantised codes look full-rank even when e(o) is not, so only the
    pre-quantisation rank can show collapse."""
    pre = encoder.net(obs).float()

    def ranks(z: torch.Tensor, name: str) -> dict:
        s = torch.linalg.svdvals(z)
        return {
            f"{name}/tol{tol:.0e}": (s > max(tol, tol * s[0].item())).sum().item() / z.shape[1] for tol in (1e-1, 1e-2, 1e-3)
        }

    s = torch.linalg.svdvals(pre)
    out = {**ranks(pre, "rank_pre_fsq"), "condition_number_pre_fsq": (s[0] / s[-1]).item()}
    if isinstance(encoder.quantizer, FSQ):
        quantized = encoder.quantizer(pre)
        out.update(ranks(quantized, "rank_post_fsq"))
        codes = encoder.quantizer.codes(quantized)  # [N, groups]
        used = torch.zeros(codes.shape[1], encoder.quantizer.codebook_size).scatter_(1, codes.T.cpu(), 1.0).mean(1)
        out.update({"codebook_usage_mean": used.mean().item(), "codebook_usage_min": used.min().item(),
                    "codebook_usage_max": used.max().item()})  # fmt: skip
    return out


def make_env(env_id: str, seed: int) -> gym.Env:
    env = gym.make(env_id)
    if not isinstance(env.action_space, gym.spaces.Box) or len(env.observation_space.shape or ()) != 1:
        raise ValueError(
            f"--env-id {env_id!r} has action space {env.action_space} and observation space "
            f"{env.observation_space}; accepted: continuous (Box) actions and flat vector observations"
        )
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env.action_space.seed(seed)
    return env


if __name__ == "__main__":
    args = tyro.cli(Args)
    eval_only, checkpoint = args.eval_checkpoint is not None, None
    try:
        if args.resume is not None or eval_only:  # nanoGPT-style: the checkpoint's flags, except the run flags given here
            flag, path = ("--eval-checkpoint", args.eval_checkpoint) if eval_only else ("--resume", args.resume)
            path = os.path.join(path, "agent.pt") if os.path.isdir(path) else path
            accepted = "accepted: a {runs_dir}/{run_name}/agent.pt written by iqrl_td3.py"
            checkpoint = load_torch_file(path, f"{flag}: {accepted}")
            if not isinstance(checkpoint, dict) or checkpoint.get("format") != "iqrl-td3-v1":
                raise ValueError(f"{flag} {path!r} is not an 'iqrl-td3-v1' checkpoint; {accepted}")
            run_flags = ("total_timesteps", "torch_threads", "cuda", "save_every", "eval_episodes", "runs_dir", "precision")
            args = resume_args(args, checkpoint["args"], run_flags, keep=("resume", "eval_checkpoint"))
        # algorithm-dependent defaults of the flags left at None
        td3 = args.algo == "td3"
        args.mlp_dims = args.mlp_dims or ([256, 256] if td3 else [512, 512])
        args.noise_clip = args.noise_clip if args.noise_clip is not None else (0.5 if td3 else 0.3)
        args.exploration_noise_start = (
            args.exploration_noise_start if args.exploration_noise_start is not None else (0.1 if td3 else 1.0)
        )
        if args.env_id not in gym.registry:
            raise ValueError(f"unknown --env-id {args.env_id!r}; accepted: a registered gymnasium id with continuous (Box) "
                             "actions, e.g. HalfCheetah-v5, Hopper-v5, Walker2d-v5, Pendulum-v1")  # fmt: skip
        positive = ["n_step", "horizon", "latent_dim", "batch_size", "total_timesteps", "learning_starts", "torch_threads",
                    "policy_frequency", "log_every", "exploration_noise_decay_steps", "num_critics",
                    "num_sampled_critics"]  # fmt: skip
        noise = (args.policy_noise, args.noise_clip, args.exploration_noise_start, args.exploration_noise_end)
        checks = [
            *((getattr(args, k) >= 1, f"--{k.replace('_', '-')} {getattr(args, k)}", "an integer >= 1") for k in positive),
            (
                min(args.fsq_levels, default=0) >= 2,
                f"--fsq-levels {args.fsq_levels}",
                "one or more integers >= 2, e.g. 8 8 or 8 6 5",
            ),
            (0.0 < args.rho <= 1.0, f"--rho {args.rho}", "a float in (0, 1]"),
            (0.0 <= args.gamma <= 1.0, f"--gamma {args.gamma}", "a float in [0, 1]"),
            (0.0 < args.tau <= 1.0, f"--tau {args.tau}", "a float in (0, 1]"),
            (0.0 < args.enc_tau <= 1.0, f"--enc-tau {args.enc_tau}", "a float in (0, 1]"),
            (
                args.buffer_size > max(args.horizon, args.n_step),
                f"--buffer-size {args.buffer_size}",
                "an integer > max(--horizon, --n-step)",
            ),
            (min(noise) >= 0, f"--policy-noise/--noise-clip/--exploration-noise-* {noise}", "non-negative floats"),
            (min(args.mlp_dims) >= 1, f"--mlp-dims {args.mlp_dims}", "one or more positive integers"),
            (min(args.enc_mlp_dims, default=1) >= 1, f"--enc-mlp-dims {args.enc_mlp_dims}", "positive integers"),
            (
                args.num_sampled_critics <= args.num_critics,
                f"--num-sampled-critics {args.num_sampled_critics}",
                f"an integer in [1, --num-critics {args.num_critics}]",
            ),
            (args.eval_episodes >= 0, f"--eval-episodes {args.eval_episodes}", "an integer >= 0"),
            (
                args.save_every >= 0,
                f"--save-every {args.save_every}",
                "an integer >= 0 (environment steps; 0: only at the end)",
            ),
            (
                args.encoder or args.fsq,
                "--no-encoder with --no-fsq both set",
                "at most one of the two (--no-encoder has no FSQ)",
            ),
            (
                args.total_timesteps > args.learning_starts,
                f"--total-timesteps {args.total_timesteps}",
                f"more than --learning-starts {args.learning_starts}, or the run makes zero gradient steps",
            ),
            (
                eval_only or checkpoint is None or checkpoint["global_step"] < args.total_timesteps,
                f"--total-timesteps {args.total_timesteps}",
                f"more than the checkpoint's global_step {checkpoint and checkpoint['global_step']}",
            ),
        ]
        for ok, flag_value, accepted in checks:
            if not ok:
                raise ValueError(f"bad {flag_value}; accepted: {accepted}")
        env = make_env(args.env_id, args.seed)
        run_dir = (
            os.path.dirname(path)
            if checkpoint is not None
            else os.path.join(args.runs_dir, f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")
        )
        if not eval_only:
            ensure_writable_dir(run_dir, "--resume" if checkpoint is not None else "--runs-dir")
    except ValueError as e:
        fail(str(e))
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    args.precision = resolve_precision(args.precision, device)  # auto: bf16 where the device has bf16 units, else fp32
    bf16 = args.precision == "bf16"
    amp = torch.autocast(device.type, torch.bfloat16, enabled=bf16)
    torch.set_num_threads(args.torch_threads)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    action_low, action_high = env.action_space.low, env.action_space.high
    iqrl = args.algo == "iqrl"
    has_encoder = iqrl and args.encoder
    mode = "td3" if not iqrl else ("iqrl-no-encoder" if not args.encoder else ("iqrl" if args.fsq else "iqrl-no-fsq"))
    encoder = Encoder(obs_dim, args).to(device)
    latent_dim = encoder.latent_dim
    actor = Actor(latent_dim, act_dim, args, action_low, action_high).to(device)
    num_critics = args.num_critics if iqrl else 2
    critics = CriticEnsemble(latent_dim + act_dim, args.mlp_dims, num_critics, layer_norm=iqrl).to(device)
    modules = {"encoder": encoder, "actor": actor, "critics": critics}
    optimizers = {"actor": torch.optim.Adam(actor.parameters(), lr=args.actor_lr),
                  "critics": torch.optim.Adam(critics.parameters(), lr=args.q_lr)}  # fmt: skip
    if has_encoder:
        dynamics = LatentDynamics(latent_dim, act_dim, args).to(device)
        representation_params = list(encoder.parameters()) + list(dynamics.parameters())
        optimizers["representation"] = torch.optim.AdamW(
            representation_params, lr=args.enc_lr, weight_decay=args.enc_weight_decay
        )
        target_encoder = Encoder(obs_dim, args).to(device).requires_grad_(False)  # momentum encoder e_bar (EMA of e_theta)
        modules.update(dynamics=dynamics, target_encoder=target_encoder)
    target_actor = Actor(latent_dim, act_dim, args, action_low, action_high).to(device).requires_grad_(False)
    target_critics = CriticEnsemble(latent_dim + act_dim, args.mlp_dims, num_critics, layer_norm=iqrl).to(device)
    modules.update(target_actor=target_actor, target_critics=target_critics.requires_grad_(False))
    for online, target in (("encoder", "target_encoder"), ("actor", "target_actor"), ("critics", "target_critics")):
        if target in modules:
            modules[target].load_state_dict(modules[online].state_dict())

    # storage: one sequence serves both losses (H steps for the self-predictive loss, n steps for the n-step return)
    rb = SequenceReplayBuffer(
        args.buffer_size, obs_dim, act_dim, max(args.n_step, args.horizon if has_encoder else 1), args.seed
    )
    noise_rng = np.random.default_rng(args.seed + 1)
    diag_rng = np.random.default_rng(args.seed + 2)  # diagnostics draw their own batches: logging never changes training
    recent_returns = deque(maxlen=10)
    global_step, num_updates = 0, 0
    if checkpoint is not None:
        for name, module in modules.items():
            module.load_state_dict(checkpoint["modules"][name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(checkpoint["optimizers"][name])
        rb.pos, rb.size, rb.rng.bit_generator.state = (checkpoint["replay"][k] for k in ("pos", "size", "rng"))
        for name in rb.FIELDS:
            getattr(rb, name)[: rb.size] = checkpoint["replay"][name].numpy()
        rb.episode_end[(rb.pos - 1) % rb.capacity] = 1.0  # the interrupted episode is not continued: cut sequences there
        noise_rng.bit_generator.state, diag_rng.bit_generator.state = checkpoint["rng"]["noise"], checkpoint["rng"]["diag"]
        torch.set_rng_state(checkpoint["rng"]["torch"])
        global_step, num_updates = checkpoint["global_step"], checkpoint["num_updates"]
        recent_returns.extend(checkpoint["recent_returns"])
    if not eval_only:
        writer = SummaryWriter(run_dir, purge_step=global_step if checkpoint is not None else None)
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
        )
    action_low_t, action_high_t = torch.as_tensor(action_low, device=device), torch.as_tensor(action_high, device=device)
    action_scale = actor.action_scale
    q1_only = torch.zeros(1, dtype=torch.long, device=device)
    rho_powers = args.rho ** torch.arange(args.horizon, dtype=torch.float32, device=device)
    actor_params, critic_params = list(actor.parameters()), list(critics.parameters())
    target_actor_params, target_critic_params = list(target_actor.parameters()), list(target_critics.parameters())
    if has_encoder:
        encoder_params, target_encoder_params = list(encoder.parameters()), list(target_encoder.parameters())
    start_step, start_updates, start_time, update_time = global_step, num_updates, time.time(), 0.0
    actor_loss = torch.tensor(float("nan"))  # logged before the first delayed actor step of a resumed run

    obs, _ = env.reset(seed=args.seed + global_step)
    progress = tqdm(
        total=args.total_timesteps, initial=global_step, unit="step", mininterval=2.0, dynamic_ncols=True, disable=eval_only
    )
    with GracefulStop() as stop:
        if not eval_only:
            print(f"{mode} on {args.env_id}, precision {'bf16' if bf16 else 'fp32'}, run folder {run_dir}")
        while global_step < args.total_timesteps and not eval_only:
            # ALGO LOGIC: put action logic here
            if global_step < args.learning_starts:
                action = env.action_space.sample()
            else:
                # exploration std decays linearly from start to end (in units of the action scale)
                frac = min(1.0, (global_step - args.learning_starts) / args.exploration_noise_decay_steps)
                noise_start, noise_end = args.exploration_noise_start, args.exploration_noise_end
                exploration_std = noise_start + frac * (noise_end - noise_start)
                with torch.no_grad(), amp:
                    action = actor(encoder(torch.as_tensor(obs, dtype=torch.float32, device=device)[None]))[0].cpu().numpy()
                action = action + noise_rng.normal(0.0, exploration_std, size=act_dim) * action_scale.cpu().numpy()
                action = np.clip(action, action_low, action_high).astype(np.float32)

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminated, truncated, info = env.step(action)
            if "episode" in info:
                recent_returns.append(float(info["episode"]["r"]))
                writer.add_scalar("charts/episodic_return", float(info["episode"]["r"]), global_step)
                writer.add_scalar("charts/episodic_length", int(info["episode"]["l"]), global_step)
            # a single non-vector env: next_obs is the true next observation (also on truncation) and we reset
            # ourselves, so no autoreset transition ever reaches the buffer
            rb.add(obs, action, reward, next_obs, terminated, truncated)
            obs = next_obs
            if terminated or truncated:
                obs, _ = env.reset()

            # ALGO LOGIC: training.
            if global_step >= args.learning_starts:
                update_start = time.perf_counter()
                batch = {k: torch.as_tensor(v, device=device) for k, v in rb.sample(args.batch_size).items()}

                # 1) encoder + latent dynamics: L_rep over the horizon H, all H steps' targets in one forward pass
                if has_encoder:
                    H = args.horizon
                    with amp:
                        with torch.no_grad():
                            targets = target_encoder(batch["next_obs"][:, :H])  # f(e_bar(o_{t+h+1})) [B, H, D]
                        predictions = dynamics.rollout(encoder(batch["obs"][:, 0]), batch["actions"][:, :H])
                    cos = F.cosine_similarity(predictions.float(), targets.float(), dim=-1)  # [B, H]
                    rep_loss = ((1.0 - cos) * batch["valid"][:, :H]).mean(0).mul(rho_powers).sum()
                    optimizers["representation"].zero_grad(set_to_none=True)
                    rep_loss.backward()
                    enc_grad_norm = nn.utils.clip_grad_norm_(representation_params, args.enc_grad_clip)
                    optimizers["representation"].step()
                    with torch.no_grad():
                        torch._foreach_lerp_(target_encoder_params, encoder_params, args.enc_tau)  # e_bar <- EMA(e_theta)

                # 2) critics on the *detached* online latent (no critic gradient into e_theta); z_t and z_{t+m} in one pass
                reward_sum, last, bootstrap_coef = n_step_targets(
                    batch["rewards"], batch["terminated"], batch["valid"], args.gamma, args.n_step
                )
                actions_t = batch["actions"][:, 0]
                with torch.no_grad(), amp:
                    bootstrap_obs = batch["next_obs"][torch.arange(args.batch_size, device=device), last]
                    z, z_bootstrap = encoder(torch.cat([batch["obs"][:, 0], bootstrap_obs])).split(args.batch_size)
                    # target policy smoothing: a~ = pi_bar(z') + clip(eps, -c, c) * scale, eps ~ N(0, sigma^2)
                    clipped_noise = (torch.randn_like(actions_t) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)
                    next_actions = target_actor(z_bootstrap) + clipped_noise * action_scale
                    next_actions = next_actions.clamp(action_low_t, action_high_t)
                    # clipped double Q: min over 2 target critics (iQRL: 2 drawn from the ensemble, REDQ-style)
                    sampled = torch.randperm(num_critics, device=device)[: args.num_sampled_critics] if iqrl else None
                    min_q_next = target_critics(z_bootstrap, next_actions, sampled).float().min(0).values
                    td_target = reward_sum + bootstrap_coef * min_q_next
                with amp:
                    q_values = critics(z, actions_t).float()  # [E, B]
                qf_loss = (q_values - td_target).pow(2).mean(1).sum()  # sum over critics of each one's MSE
                optimizers["critics"].zero_grad(set_to_none=True)
                qf_loss.backward()
                optimizers["critics"].step()
                if iqrl and args.critic_target_every_step:
                    with torch.no_grad():
                        torch._foreach_lerp_(target_critic_params, critic_params, args.tau)

                # 3) delayed actor (and TD3's delayed targets)
                if num_updates % args.policy_frequency == 0:
                    # iQRL: mean of 2 critics drawn afresh (official code); TD3: Q1 alone
                    members = torch.randperm(num_critics, device=device)[: args.num_sampled_critics] if iqrl else q1_only
                    critics.requires_grad_(False)  # the actor's gradient only; no critic weight gradients to compute
                    with amp:
                        actor_loss = -critics(z, actor(z), members).float().mean()
                    optimizers["actor"].zero_grad(set_to_none=True)
                    actor_loss.backward()
                    optimizers["actor"].step()
                    critics.requires_grad_(True)
                    with torch.no_grad():
                        torch._foreach_lerp_(target_actor_params, actor_params, args.tau)
                        if not (iqrl and args.critic_target_every_step):
                            torch._foreach_lerp_(target_critic_params, critic_params, args.tau)
                update_time += time.perf_counter() - update_start
                num_updates += 1

                if (num_updates - 1) % args.log_every == 0:
                    for j in range(num_critics):
                        writer.add_scalar(f"losses/qf{j + 1}_values", q_values[j].mean().item(), global_step)
                    writer.add_scalar("losses/qf_loss", qf_loss.item() / num_critics, global_step)
                    writer.add_scalar("losses/actor_loss", actor_loss.item(), global_step)
                    writer.add_scalar("charts/exploration_noise", exploration_std, global_step)
                    writer.add_scalar("charts/updates_per_second", (num_updates - start_updates) / update_time, global_step)
                    if has_encoder:
                        writer.add_scalar("losses/representation_loss", rep_loss.item(), global_step)
                        writer.add_scalar("losses/encoder_grad_norm", enc_grad_norm.item(), global_step)
                        diag_obs = rb.obs[diag_rng.choice(rb.size, min(rb.size, latent_dim), replace=False)]
                        diagnostics = representation_diagnostics(encoder, torch.as_tensor(diag_obs, device=device))
                        for key, value in diagnostics.items():
                            writer.add_scalar(f"representation/{key}", value, global_step)

            # TRY NOT TO MODIFY: progress, checkpoint (periodic, at the end, on SIGINT/SIGTERM)
            global_step += 1
            progress.update(1)
            if global_step % 1000 == 0:
                sps = int((global_step - start_step) / (time.time() - start_time))
                writer.add_scalar("charts/SPS", sps, global_step)
                progress.set_postfix(SPS=sps, ret=f"{np.mean(recent_returns):.1f}" if recent_returns else "-", refresh=False)
            if (
                stop.requested
                or global_step == args.total_timesteps
                or (args.save_every and global_step % args.save_every == 0)
            ):
                save_atomic(
                    {
                        "format": "iqrl-td3-v1",
                        "args": asdict(args),
                        "mode": mode,
                        "global_step": global_step,
                        "num_updates": num_updates,
                        "recent_returns": list(recent_returns),
                        "modules": {
                            name: {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in m.state_dict().items()}
                            for name, m in modules.items()
                        },  # fp32 on disk, whatever the precision
                        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                        "replay": {
                            **{name: torch.from_numpy(getattr(rb, name)[: rb.size].copy()) for name in rb.FIELDS},
                            "pos": rb.pos,
                            "size": rb.size,
                            "rng": rb.rng.bit_generator.state,
                        },
                        "rng": {
                            "torch": torch.get_rng_state(),
                            "noise": noise_rng.bit_generator.state,
                            "diag": diag_rng.bit_generator.state,
                        },
                    },
                    os.path.join(run_dir, "agent.pt"),
                )
            if stop.requested:
                progress.close()
                writer.close()
                stop.exit(f"checkpoint at {os.path.join(run_dir, 'agent.pt')} (global_step={global_step}); "
                          f"resume with: python iqrl_td3.py --resume {os.path.join(run_dir, 'agent.pt')}")  # fmt: skip
    progress.close()
    env.close()
    if not eval_only:
        print(f"trained to global_step={global_step} ({num_updates} updates) in {time.time() - start_time:.1f}s; "
              f"s_per_1k_updates={1000 * update_time / max(num_updates - start_updates, 1):.4f}")  # fmt: skip
        print(f"checkpoint saved to {os.path.join(run_dir, 'agent.pt')}")
        if has_encoder:  # final diagnostics on D fresh replay observations (printed so benchmarks can parse them)
            diag_obs = rb.obs[diag_rng.choice(rb.size, min(rb.size, latent_dim), replace=False)]
            diagnostics = representation_diagnostics(encoder, torch.as_tensor(diag_obs, device=device))
            print(" ".join(f"final_{key.replace('/', '_')}={value:.4g}" for key, value in diagnostics.items()))

    # final deterministic evaluation (no exploration noise) on a fresh env
    eval_episodes, eval_env, returns = (
        max(args.eval_episodes, 1) if eval_only else args.eval_episodes,
        make_env(args.env_id, args.seed + 10_000),
        [],
    )
    for episode in range(eval_episodes):
        eval_obs, _ = eval_env.reset(seed=args.seed + 10_000 + episode)
        done, episode_return = False, 0.0
        while not done:
            with torch.no_grad(), amp:
                action = actor(encoder(torch.as_tensor(eval_obs, dtype=torch.float32, device=device)[None]))[0].cpu().numpy()
            eval_obs, reward, terminated, truncated, _ = eval_env.step(action)
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
        if not eval_only:
            writer.add_scalar("eval/episodic_return", episode_return, episode)
    eval_env.close()
    if returns:
        prefix = f"eval {args.env_id} ({mode}): " if eval_only else ""
        print(f"{prefix}eval_return_mean={np.mean(returns):.2f} eval_return_std={np.std(returns):.2f}")
    if not eval_only:
        writer.close()
