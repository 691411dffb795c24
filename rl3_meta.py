# docs and experiment results can be found at docs/rl3_meta.md
"""RL^2, RL^3 and RL^3-coarse: meta-RL with a causal transformer trained by PPO.

RL^2 (Duan et al., "RL^2: Fast Reinforcement Learning via Slow Reinforcement Learning", arXiv 1611.02779) feeds a
sequence model the state, previous action, previous reward and flags, and trains it with PPO over whole meta-episodes
of H steps, each on one task drawn from a family. RL^3 (Bhatia, Nashed & Zilberstein, "RL^3: Boosting Meta
Reinforcement Learning via RL inside RL^2", arXiv 2306.15909) appends the output of an *object-level* learner running
inside the task: a count model solved by value iteration after every step,

    P(s'|s,a) = (N(s,a,s') + ls) / (N(s,a) + ls |S_seen|),   R(s,a,s') = mean observed reward,
    Q(s,a) = sum_s' P(s'|s,a) [R(s,a,s') + gamma V(s')],      V(s) = max_a Q(s,a),

and the meta-learner sees (Q(s,.) - V(s)) / scale, V(s) / scale and N(s,.) / 10 for the current state s.
RL^3-coarse runs the object-level learner on a coarser state abstraction (clusters of <= 2 adjacent states).
"""

import json
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from envs import bandit, gridworld, tabular_mdp
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
    """seed of the experiment (network init, action sampling and the training task seeds)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    torch_threads: int = 1
    """CPU threads torch may use (1 measured fastest here: docs/rl3_meta.md)"""
    cuda: bool = False
    """run the networks on CUDA if available (the tasks and the object-level RL stay on the CPU)"""
    precision: str = "fp32"
    """fp32, bf16 autocast around the forward passes (fp32 weights, losses, checkpoints; fp32 measured faster), or auto:
    bf16 where the device computes it natively (CUDA with bf16, CPUs with AMX or AVX512-BF16), else fp32"""
    runs_dir: str = "runs"
    """folder under which `{run_name}/` (TensorBoard events, agent.pt, eval.json) is written"""
    resume: str = ""
    """continue the run of this agent.pt (or its run folder); architecture and algorithm flags come from it"""
    save_every: int = 0
    """write agent.pt every this many environment steps (0: only at the end or on SIGINT/SIGTERM)"""
    eval_episodes: int = 100
    """held-out tasks (one meta-episode each) evaluated per task variant after training"""

    # Algorithm specific arguments
    algo: str = "rl3"
    """the meta-RL algorithm: rl2, rl3 or rl3-coarse"""
    domain: str = "bandit"
    """the task family: bandit, mdp or gridworld"""
    grid_size: int = 11
    """gridworld side length: 11 or 13"""
    horizon: int | None = None
    """meta-episode length H in steps (default: 100 bandit and mdp, 250 on 11x11, 350 on 13x13)"""
    ood: str = "all"
    """out-of-distribution task variants to evaluate: 'all', 'none' or a comma-separated list"""
    total_timesteps: int = 2_000_000
    """total environment steps of meta-training"""
    num_tasks: int = 64
    """parallel tasks (meta-episodes) per PPO iteration; the batch is num_tasks * H steps"""
    learning_rate: float | None = None
    """Adam learning rate (default: 3e-4, 2e-4 for gridworlds)"""
    minibatch_size: int = 4096
    """PPO minibatch size in steps, rounded down to whole meta-episodes"""
    update_epochs: int = 8
    """PPO epochs per iteration"""
    gamma: float = 0.99
    """meta-level discount factor"""
    gae_lambda: float = 0.3
    """lambda of generalized advantage estimation"""
    clip_coef: float = 0.2
    """PPO surrogate clipping coefficient"""
    target_kl: float = 0.01
    """stop the epochs of an iteration once the approximate KL exceeds this"""
    ent_coef: float | None = None
    """entropy coefficient (default: 0.1 for bandits and MDPs, 0.04 for gridworlds)"""
    ent_schedule: str = "auto"
    """linear (decay to 0 over training), constant, or auto: linear for bandits and MDPs, constant for gridworlds"""
    vf_coef: float = 0.5
    """value-loss coefficient"""
    max_grad_norm: float = 0.5
    """gradient-norm clipping"""
    d_model: int = 64
    """transformer width"""
    n_heads: int = 4
    """attention heads"""
    n_layers: int = 2
    """transformer layers"""
    d_ff: int = 256
    """feed-forward width"""
    obj_gamma: float = 0.95
    """discount of the object-level value iteration"""
    vi_init: str = "auto"
    """object-level value iteration start: zeros, warm (previous step's values) or auto: zeros when the task horizon < 100"""
    laplace_support: str = "seen"
    """states the Laplace smoothing spreads over: seen (so far, as the authors' code) or all"""


ALGOS = ("rl2", "rl3", "rl3-coarse")
# Per-domain settings (RL^3 paper and the authors' code): value scale of the object-level vector (also divides the
# rewards the meta-learner sees), Laplace smoothing ls, value-iteration tolerance, learning rate, entropy bonus.
DOMAINS = {
    "bandit": dict(module=bandit, horizon=100, value_scale=1.0, laplace=0.1, vi_tol=0.01, lr=3e-4, ent=0.1, ent_decay=True),
    "mdp": dict(module=tabular_mdp, horizon=100, value_scale=10.0, laplace=0.1, vi_tol=0.01, lr=3e-4, ent=0.1, ent_decay=True),
    "gridworld": dict(module=gridworld, horizon=None, value_scale=10.0, laplace=0.01, vi_tol=0.1, lr=2e-4, ent=0.04,
                      ent_decay=False),
}  # fmt: skip
GRID_HORIZON = {11: 250, 13: 350}
CHECKPOINT_FORMAT = "rl3-meta-v1"
RUN_FLAGS = ("total_timesteps", "torch_threads", "cuda", "precision", "save_every", "eval_episodes")  # may change on resume


def make_env(args: Args, num_tasks: int, variant: str | None = None):
    """The batched task family of `args.domain`; `variant` None is the training distribution."""
    if args.domain == "gridworld":
        return gridworld.GridworldEnv(num_tasks, args.horizon, variant or gridworld.IN_DISTRIBUTION, args.grid_size)
    if args.domain == "mdp":
        return tabular_mdp.TabularMDPEnv(num_tasks, args.horizon, variant or tabular_mdp.IN_DISTRIBUTION)
    return bandit.BanditEnv(num_tasks, args.horizon, variant or bandit.IN_DISTRIBUTION)


def state_abstraction(args: Args, env) -> np.ndarray:
    """Map from states to the object-level learner's states. RL^3: identity. RL^3-coarse: clusters of at
    most 2 adjacent states -- horizontally neighbouring cells (r, 2k), (r, 2k+1) on gridworlds, state
    pairs (2k, 2k+1) on random MDPs (which have no geometry), the single state of a bandit."""
    states = np.arange(env.num_states)
    if args.algo != "rl3-coarse":
        return states
    if args.domain == "gridworld":
        row, col = np.divmod(states, env.size)
        return row * ((env.size + 1) // 2) + col // 2
    return states // 2


class ObjectLevelRL:
    """Model-based RL inside each of B tasks (RL^3, arXiv 2306.15909, Sec. 4.1), batched over tasks.

    Count model with Laplace smoothing ls over the support Z' (the states seen so far, or all states):
    P(z'|z,a) = (N(z,a,z') + ls) / (N(z,a) + ls |Z'|) for z' in Z', so an untried (z,a) is uniform over Z';
    reward the running mean per (z,a,z'), 0 where unseen. Terminal transitions go to an extra absorbing state of
    value 0. After every step: synchronous value iteration, at most `max_iters` sweeps (the task horizon), stopping
    once the largest change is below `tol`, from V = 0 (`restart`) or from the previous step's values.

    The counts are sparse (at most t transitions seen after t steps), so a Bellman backup never forms the dense
    |Z| x A x |Z| model: sum_z' P(z'|z,a) V(z') = (sum over the seen transitions from (z,a) of V(z')
    + ls sum_{z' in Z'} V(z')) / (N(z,a) + ls |Z'|), which costs O(t + |Z| A) per task instead of O(|Z|^2 A).
    """

    def __init__(self, num_tasks, abstraction, num_actions, horizon, laplace, gamma, tol, max_iters, value_scale,
                 restart=False, seen_support=True):  # fmt: skip
        self.phi = abstraction
        self.Z = int(abstraction.max()) + 2  # abstract states + the absorbing state
        self.B, self.A = num_tasks, num_actions
        self.laplace, self.gamma, self.tol, self.max_iters, self.value_scale = laplace, gamma, tol, max_iters, value_scale
        self.restart = restart
        self.support = np.full((self.B, self.Z), not seen_support)  # Z' (grows with experience under seen_support)
        self.counts = np.zeros((self.B, self.Z, self.A, self.Z))  # N(z,a,z')
        self.reward_sums = np.zeros((self.B, self.Z, self.A, self.Z))
        self.visits = np.zeros((self.B, self.Z, self.A))  # N(z,a)
        self.reward_numerator = np.zeros((self.B, self.Z, self.A))  # sum_z' (N(z,a,z') + ls) mean reward(z,a,z')
        self.Q = np.zeros((self.B, self.Z, self.A))
        self.V = np.zeros((self.B, self.Z))
        # transition history: flat (task, z, a) index and successor z' of every step so far
        self.seen_rows = np.zeros((self.B, horizon), dtype=np.int64)
        self.seen_next = np.zeros((self.B, horizon), dtype=np.int64)
        self.t = 0

    def update(self, states, actions, rewards, next_states, terminated):
        """Record one transition per task, refresh the touched rows of the model, re-solve the model."""
        b = np.arange(self.B)
        z, z_next = self.phi[states], np.where(terminated, self.Z - 1, self.phi[next_states])
        self.support[b, z] = self.support[b, z_next] = True
        self.counts[b, z, actions, z_next] += 1.0
        self.reward_sums[b, z, actions, z_next] += rewards
        self.visits[b, z, actions] += 1.0
        n_zaz = self.counts[b, z, actions]  # (B, Z)
        mean_reward = np.divide(self.reward_sums[b, z, actions], n_zaz, out=np.zeros_like(n_zaz), where=n_zaz > 0)
        self.reward_numerator[b, z, actions] = ((n_zaz + self.laplace) * mean_reward).sum(axis=1)
        self.seen_rows[:, self.t] = (b * self.Z + z) * self.A + actions
        self.seen_next[:, self.t] = z_next
        self.t += 1
        self.value_iteration()

    def value_iteration(self):
        """Synchronous sweeps Q = R + gamma * E_P[V], V = max_a Q, with V(absorbing) = 0."""
        rows, next_z = self.seen_rows[:, : self.t].ravel(), self.seen_next[:, : self.t]
        task = np.arange(self.B)[:, None]
        normaliser = self.visits + self.laplace * self.support.sum(axis=1)[:, None, None]  # N(z,a) + ls |Z'|
        R = self.reward_numerator / normaliser  # R(z,a) = sum_z' P(z'|z,a) mean reward(z,a,z')
        V = np.zeros_like(self.V) if self.restart else self.V
        for _ in range(self.max_iters):
            seen_sum = np.bincount(rows, weights=V[task, next_z].ravel(), minlength=self.B * self.Z * self.A)
            smoothing = self.laplace * (V * self.support).sum(axis=1)[:, None, None]
            self.Q = R + self.gamma * (seen_sum.reshape(self.B, self.Z, self.A) + smoothing) / normaliser
            V_new = self.Q.max(axis=2)
            V_new[:, -1] = 0.0
            delta = np.abs(V_new - V).max()
            V = V_new
            if delta < self.tol:
                break
        self.V = V

    def features(self, states) -> np.ndarray:
        """RL^3's appended vector for the current state: (Q(s,.) - V(s)) / scale, V(s) / scale, N(s,.) / 10."""
        b, z = np.arange(self.B), self.phi[states]
        q, v = self.Q[b, z], self.V[b, z][:, None]
        return np.concatenate([(q - v) / self.value_scale, v / self.value_scale, self.visits[b, z] / 10.0], axis=1)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class CausalSelfAttentionBlock(nn.Module):
    """Pre-LayerNorm decoder block: causal multi-head self-attention + GELU feed-forward."""

    def __init__(self, d_model, n_heads, d_ff):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, h, cache=None, t=0):
        """h: (N, T, d) -> (N, T, d), each position attending to itself and earlier ones. Incremental
        decoding: h is position t alone (T = 1); its key and value are written into `cache`, the
        preallocated (keys, values) buffers of shape (N, heads, max_len, d_head), and it attends to 0..t."""
        N, T, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(N, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            keys, values = cache
            keys[:, :, t : t + 1], values[:, :, t : t + 1] = k, v
            attended = F.scaled_dot_product_attention(q, keys[:, :, : t + 1].to(q.dtype), values[:, :, : t + 1].to(q.dtype))
        h = h + self.proj(attended.transpose(1, 2).reshape(N, T, d))
        return h + self.mlp(self.ln2(h))


class CausalTransformer(nn.Module):
    """Decoder-only transformer over a whole meta-episode with learned positional encodings (RL^3 Sec. 5)."""

    def __init__(self, input_dim, output_dim, max_len, args: Args, head_std):
        super().__init__()
        self.embed = layer_init(nn.Linear(input_dim, args.d_model))
        self.positions = nn.Parameter(0.02 * torch.randn(max_len, args.d_model))
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(args.d_model, args.n_heads, args.d_ff) for _ in range(args.n_layers)
        )
        self.norm = nn.LayerNorm(args.d_model)
        self.head = layer_init(nn.Linear(args.d_model, output_dim), std=head_std)

    def forward(self, x):
        """x: (N, T, input_dim) -> (N, T, output_dim); position t sees inputs 0..t only."""
        h = self.embed(x) + self.positions[: x.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def new_cache(self, batch_size):
        """Empty key/value buffers for incremental decoding of `batch_size` sequences."""
        max_len, d_model = self.positions.shape
        shape = (batch_size, self.blocks[0].n_heads, max_len, d_model // self.blocks[0].n_heads)
        return [(self.positions.new_zeros(shape), self.positions.new_zeros(shape)) for _ in self.blocks]

    def step(self, x_t, t, cache):
        """Output at position t from its input x_t (N, input_dim), reusing the cached keys/values (rollouts)."""
        h = (self.embed(x_t) + self.positions[t])[:, None]
        for block, block_cache in zip(self.blocks, cache):
            h = block(h, block_cache, t)
        return self.head(self.norm(h))[:, 0]


class Agent(nn.Module):
    """Separate actor and critic transformers (actor head std 0.01, critic head std 1, as in CleanRL)."""

    def __init__(self, input_dim, num_actions, horizon, args: Args):
        super().__init__()
        self.actor = CausalTransformer(input_dim, num_actions, horizon, args, head_std=0.01)
        self.critic = CausalTransformer(input_dim, 1, horizon, args, head_std=1.0)


def input_dim(args: Args, env) -> int:
    """Per-step input: one-hot previous action, previous reward, new-episode flag, 2 time features, the state
    encoding, and for RL^3 the object-level vector (A advantages, V, A counts)."""
    object_level = 2 * env.num_actions + 1 if args.algo != "rl2" else 0
    return env.num_actions + 4 + env.obs_dim + object_level


def object_level_learner(args: Args, env) -> ObjectLevelRL:
    """The object-level learner of RL^3 for the B tasks of `env`, configured as in the authors' code: value
    iteration capped at the task horizon (1 bandit, 10 MDP, H gridworld) and, for `--vi-init auto`, restarted from
    V = 0 at every step when that horizon is below 100 (bandits, MDPs), warm-started otherwise (gridworlds)."""
    cfg, max_iters = DOMAINS[args.domain], min(env.episode_length, env.horizon)
    restart = args.vi_init == "zeros" or (args.vi_init == "auto" and max_iters < 100)
    return ObjectLevelRL(
        env.num_tasks, state_abstraction(args, env), env.num_actions, env.horizon, laplace=cfg["laplace"],
        gamma=args.obj_gamma, tol=cfg["vi_tol"], max_iters=max_iters, value_scale=cfg["value_scale"], restart=restart,
        seen_support=args.laplace_support == "seen",
    )  # fmt: skip


@torch.no_grad()
def rollout(agent: Agent, env, args: Args, task_seeds, greedy=False):
    """Play one meta-episode of H steps in each of B tasks with the actor (sampling, or argmax if `greedy`).
    Returns inputs (B, H, D), actions, logprobs, rewards (B, H) and the seconds spent in object-level RL."""
    B, H, A = env.num_tasks, env.horizon, env.num_actions
    device = next(agent.parameters()).device
    states = env.reset(task_seeds)
    cfg = DOMAINS[args.domain]
    object_level = object_level_learner(args, env) if args.algo != "rl2" else None
    inputs = torch.zeros(B, H, input_dim(args, env), device=device)
    actions = torch.zeros(B, H, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, H, device=device)
    rewards = np.zeros((B, H))
    prev_action, prev_reward, new_episode, episode_step = np.zeros((B, A)), np.zeros(B), np.ones(B), np.zeros(B)
    cache = agent.actor.new_cache(B)
    object_seconds = 0.0
    for t in range(H):
        parts = [prev_action, prev_reward[:, None], new_episode[:, None], np.full((B, 1), t / H),
                 (episode_step / env.episode_length)[:, None], env.observation(states)]  # fmt: skip
        if object_level is not None:
            parts.append(object_level.features(states))
        inputs[:, t] = torch.from_numpy(np.concatenate(parts, axis=1)).float().to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = agent.actor.step(inputs[:, t], t, cache).float()
        dist = Categorical(logits=logits)
        action = logits.argmax(dim=1) if greedy else dist.sample()
        actions[:, t], logprobs[:, t] = action, dist.log_prob(action)
        a = action.cpu().numpy()
        next_states, reward, terminated, episode_end = env.step(a)
        if object_level is not None:
            start = time.perf_counter()
            object_level.update(states, a, reward, env.last_next_state, terminated)
            object_seconds += time.perf_counter() - start
        rewards[:, t] = reward
        prev_action, prev_reward, new_episode = np.eye(A)[a], reward / cfg["value_scale"], episode_end.astype(np.float64)
        episode_step = np.where(episode_end, 0, episode_step + 1)
        states = next_states
    return dict(inputs=inputs, actions=actions, logprobs=logprobs, rewards=torch.from_numpy(rewards).float().to(device),
                object_seconds=object_seconds)  # fmt: skip


def validate(args: Args) -> None:
    """Check the command line and fill the per-domain defaults; a one-line ValueError names the bad value."""
    choices = dict(algo=ALGOS, domain=tuple(DOMAINS), grid_size=tuple(GRID_HORIZON), precision=("fp32", "bf16", "auto"),
                   ent_schedule=("auto", "linear", "constant"), vi_init=("auto", "zeros", "warm"),
                   laplace_support=("seen", "all"))  # fmt: skip
    for name, accepted in choices.items():
        if getattr(args, name) not in accepted:
            raise ValueError(f"unknown --{name.replace('_', '-')} {getattr(args, name)!r}; "
                             f"accepted: {', '.join(map(str, accepted))}")  # fmt: skip
    cfg, module = DOMAINS[args.domain], DOMAINS[args.domain]["module"]
    if args.horizon is None:
        args.horizon = GRID_HORIZON[args.grid_size] if args.domain == "gridworld" else cfg["horizon"]
    for name in ("horizon", "num_tasks", "eval_episodes", "minibatch_size", "update_epochs", "torch_threads", "d_model",
                 "n_heads", "n_layers", "d_ff"):  # fmt: skip
        if getattr(args, name) <= 0:
            raise ValueError(f"bad --{name.replace('_', '-')} {getattr(args, name)}; accepted: a positive integer")
    if args.save_every < 0:
        raise ValueError(f"bad --save-every {args.save_every}; accepted: 0 (only at the end) or a positive step count")
    if args.d_model % args.n_heads:
        raise ValueError(f"bad --d-model {args.d_model}; accepted: a multiple of --n-heads {args.n_heads}")
    if args.total_timesteps < args.num_tasks * args.horizon and not args.resume:
        raise ValueError(f"bad --total-timesteps {args.total_timesteps}; accepted: at least num_tasks * horizon = "
                         f"{args.num_tasks * args.horizon} (one PPO iteration)")  # fmt: skip
    if args.ood in ("all", "none"):
        args.ood = ",".join(module.OOD_VARIANTS) if args.ood == "all" else ""
    for variant in filter(None, args.ood.split(",")):
        if variant not in module.OOD_VARIANTS:
            raise ValueError(f"unknown --ood variant {variant!r} for {args.domain}; accepted: all, none or a "
                             f"comma-separated subset of {', '.join(module.OOD_VARIANTS)}")  # fmt: skip
    args.learning_rate = cfg["lr"] if args.learning_rate is None else args.learning_rate
    args.ent_coef = cfg["ent"] if args.ent_coef is None else args.ent_coef
    if args.ent_schedule == "auto":
        args.ent_schedule = "linear" if cfg["ent_decay"] else "constant"


if __name__ == "__main__":
    args = tyro.cli(Args)
    try:
        checkpoint = None
        if args.resume:  # nanoGPT-style: the flags saved in the checkpoint, except the run flags given now
            resume_path = os.path.join(args.resume, "agent.pt") if os.path.isdir(args.resume) else args.resume
            accepted = "accepted: a runs/{run_name}/agent.pt written by rl3_meta.py, or its run folder"
            checkpoint = load_torch_file(resume_path, accepted)
            found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
            if found != CHECKPOINT_FORMAT:
                what = f"has format {found!r}" if isinstance(found, str) else "is not an rl3_meta.py checkpoint"
                raise ValueError(f"{resume_path!r} {what} (expected {CHECKPOINT_FORMAT!r}); {accepted}")
            missing = [
                k for k in ("args", "model", "optimizer", "global_step", "iteration", "timing", "rng") if k not in checkpoint
            ]
            if missing:
                raise ValueError(f"{resume_path!r} lacks {', '.join(missing)}; {accepted}")
            unknown = sorted(set(checkpoint["args"]) - set(Args.__dataclass_fields__))
            if unknown:
                raise ValueError(
                    f"{resume_path!r} has flags this rl3_meta.py does not know ({', '.join(unknown)}); {accepted}"
                )
            args = resume_args(args, checkpoint["args"], RUN_FLAGS)
        validate(args)
        if checkpoint is None:
            run_name = f"{args.domain}__{args.algo}__{args.exp_name}__{args.seed}__{int(time.time())}"
            run_dir = ensure_writable_dir(os.path.join(args.runs_dir, run_name), "--runs-dir")
        else:
            run_dir = ensure_writable_dir(os.path.dirname(os.path.abspath(resume_path)), "--resume")
    except ValueError as e:
        fail(str(e))
    checkpoint_path = os.path.join(run_dir, "agent.pt")

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    args.precision = resolve_precision(args.precision, device)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    env = make_env(args, args.num_tasks)
    agent = Agent(input_dim(args, env), env.num_actions, args.horizon, args).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    batch_size = args.num_tasks * args.horizon
    num_iterations = args.total_timesteps // batch_size
    tasks_per_minibatch = max(1, min(args.num_tasks, args.minibatch_size // args.horizon))
    value_scale = DOMAINS[args.domain]["value_scale"]
    global_step, iteration = 0, 0
    timing = dict(rollout_seconds=0.0, object_level_seconds=0.0, update_seconds=0.0, update_epochs=0, iterations=0)
    if checkpoint is not None:
        agent.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"])
        global_step, iteration, timing = checkpoint["global_step"], checkpoint["iteration"], checkpoint["timing"]
    # on resume, drop what the interrupted run logged after its checkpoint (steps > global_step): no overlapping curves
    writer = SummaryWriter(run_dir, purge_step=global_step + 1 if checkpoint is not None else None)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))

    def save(path: str) -> None:
        """Atomic agent.pt: fp32 CPU weights, optimiser, counters and the torch RNG, everything a resume needs."""
        model = {k: v.detach().float().cpu() for k, v in agent.state_dict().items()}
        state = dict(global_step=global_step, iteration=iteration, timing=timing, rng=torch.get_rng_state())
        save_atomic(
            dict(format=CHECKPOINT_FORMAT, args=asdict(args), model=model, optimizer=optimizer.state_dict(), **state), path
        )

    start_time, start_step = time.time(), global_step
    progress = tqdm(total=num_iterations * batch_size, initial=global_step, unit="step", dynamic_ncols=True)
    with GracefulStop() as stop:
        while iteration < num_iterations:
            iteration += 1
            iteration_start = time.time()
            # ALGO LOGIC: one meta-episode in each of num_tasks training tasks; the task seeds of an iteration come
            # from (seed, iteration), in [0, 2^31), so a resumed run draws the same tasks
            task_seeds = np.random.default_rng([args.seed, iteration]).integers(2**31, size=args.num_tasks).tolist()
            batch = rollout(agent, env, args, task_seeds)
            rollout_seconds = time.time() - iteration_start
            global_step += batch_size
            meta_returns = batch["rewards"].sum(dim=1).cpu().numpy()
            normalized_returns = meta_returns / env.optimal_returns()
            ent_coef = args.ent_coef * ((1.0 - (iteration - 1) / num_iterations) if args.ent_schedule == "linear" else 1.0)

            # GAE over the meta-episode (rewards divided by the domain's value scale); after step H the meta-episode
            # is over, so the bootstrap value there is 0. Task-episode ends are not boundaries (RL^2 objective).
            with torch.no_grad(), torch.autocast(**autocast):
                values = agent.critic(batch["inputs"]).squeeze(-1).float()
            rewards = batch["rewards"] / value_scale
            advantages = torch.zeros_like(rewards)
            last_gae = torch.zeros(args.num_tasks, device=device)
            for t in reversed(range(args.horizon)):
                next_value = values[:, t + 1] if t + 1 < args.horizon else torch.zeros_like(last_gae)
                delta = rewards[:, t] + args.gamma * next_value - values[:, t]
                last_gae = delta + args.gamma * args.gae_lambda * last_gae
                advantages[:, t] = last_gae
            returns = advantages + values

            # PPO on whole meta-episodes: a minibatch is a set of tasks, each with its full H-step context
            update_start = time.time()
            clipfracs = []
            for epoch in range(1, args.update_epochs + 1):
                order = torch.randperm(args.num_tasks)
                for start in range(0, args.num_tasks, tasks_per_minibatch):
                    idx = order[start : start + tasks_per_minibatch].to(device)
                    with torch.autocast(**autocast):
                        logits = agent.actor(batch["inputs"][idx]).float()
                        new_values = agent.critic(batch["inputs"][idx]).squeeze(-1).float()
                    dist = Categorical(logits=logits)
                    logratio = dist.log_prob(batch["actions"][idx]) - batch["logprobs"][idx]
                    ratio = logratio.exp()
                    with torch.no_grad():
                        approx_kl = ((ratio - 1) - logratio).mean()
                        clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
                    mb_adv = advantages[idx]
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                    pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
                    v_loss = 0.5 * ((new_values - returns[idx]) ** 2).mean()
                    entropy = dist.entropy().mean()
                    loss = pg_loss - ent_coef * entropy + args.vf_coef * v_loss
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()
                if approx_kl > args.target_kl:
                    break
            update_seconds = time.time() - update_start
            for key, value in [("rollout_seconds", rollout_seconds), ("object_level_seconds", batch["object_seconds"]),
                               ("update_seconds", update_seconds), ("update_epochs", epoch), ("iterations", 1)]:  # fmt: skip
                timing[key] += value

            # TRY NOT TO MODIFY: record rewards for plotting purposes
            y_pred, y_true = values.flatten().cpu().numpy(), returns.flatten().cpu().numpy()
            explained_var = np.nan if np.var(y_true) == 0 else 1 - np.var(y_true - y_pred) / np.var(y_true)
            sps = int((global_step - start_step) / (time.time() - start_time))
            scalars = {"charts/episodic_return": meta_returns.mean(), "charts/normalized_return": normalized_returns.mean(),
                       "charts/learning_rate": optimizer.param_groups[0]["lr"], "charts/ent_coef": ent_coef, "charts/SPS": sps,
                       "charts/iteration_seconds": time.time() - iteration_start, "charts/rollout_seconds": rollout_seconds,
                       "charts/object_level_seconds": batch["object_seconds"], "charts/update_seconds": update_seconds,
                       "charts/update_epochs": epoch, "losses/value_loss": v_loss.item(), "losses/policy_loss": pg_loss.item(),
                       "losses/entropy": entropy.item(), "losses/approx_kl": approx_kl.item(),
                       "losses/clipfrac": np.mean(clipfracs), "losses/explained_variance": explained_var}  # fmt: skip
            for key, value in scalars.items():
                writer.add_scalar(key, value, global_step)
            progress.update(batch_size)
            progress.set_postfix(SPS=sps, ret=f"{meta_returns.mean():.1f}", norm=f"{normalized_returns.mean():.3f}")
            if args.save_every and global_step // args.save_every > (global_step - batch_size) // args.save_every:
                save(checkpoint_path)
            if stop.requested:
                save(checkpoint_path)
                progress.close()
                writer.close()
                stop.exit(f"checkpoint at {checkpoint_path} (global_step={global_step}); "
                          f"resume with: python rl3_meta.py --resume {checkpoint_path}")  # fmt: skip
    progress.close()
    save(checkpoint_path)
    print(f"checkpoint saved to {checkpoint_path}")

    # Meta-test on held-out tasks (seeds 2^31 + i, outside the training range [0, 2^31)) of the training distribution
    # and every --ood variant, sampling actions as in training; the non-learning baselines play the same tasks.
    module = DOMAINS[args.domain]["module"]
    iterations = max(timing["iterations"], 1)
    results = {"args": asdict(args), "global_step": global_step, "train_seconds": time.time() - start_time, "eval": {},
               **{f"{k}_per_iteration": v / iterations for k, v in timing.items() if k != "iterations"},
               "iteration_seconds": (timing["rollout_seconds"] + timing["update_seconds"]) / iterations}  # fmt: skip
    task_seeds = [2**31 + i for i in range(args.eval_episodes)]
    for variant in [module.IN_DISTRIBUTION] + list(filter(None, args.ood.split(","))):
        eval_env = make_env(args, args.eval_episodes, variant)
        returns = rollout(agent, eval_env, args, task_seeds)["rewards"].sum(dim=1).cpu().numpy().astype(np.float64)
        oracle = eval_env.optimal_returns()
        result = {"oracle": oracle.mean(), "rl": bandit.summary(returns, oracle)}
        for name, baseline in bandit.baseline_returns(eval_env, task_seeds, args.seed).items():
            result[name] = bandit.summary(baseline, oracle)
        results["eval"][variant] = result
        rl = result["rl"]
        line = (f"eval {variant}: {args.algo} return {rl['mean']:.1f} +- {rl['std']:.1f}, "
                f"normalized {rl['normalized_mean']:.3f} +- {rl['normalized_std']:.3f}")  # fmt: skip
        line += "".join(f" | {k} {result[k]['normalized_mean']:.3f}" for k in ("random", "thompson", "ucb1") if k in result)
        print(line + f" | oracle return {result['oracle']:.1f}", flush=True)
        writer.add_scalar(f"eval/{variant}/episodic_return", rl["mean"], global_step)
        writer.add_scalar(f"eval/{variant}/normalized_return", rl["normalized_mean"], global_step)
    # final deterministic evaluation: greedy (argmax) actions on the in-distribution held-out tasks
    eval_env = make_env(args, args.eval_episodes)
    greedy = rollout(agent, eval_env, args, task_seeds, greedy=True)["rewards"].sum(dim=1).cpu().numpy().astype(np.float64)
    results["greedy"] = bandit.summary(greedy, eval_env.optimal_returns())
    with open(os.path.join(run_dir, ".eval.json.tmp"), "w") as f:
        json.dump(results, f, indent=1)
    os.replace(os.path.join(run_dir, ".eval.json.tmp"), os.path.join(run_dir, "eval.json"))
    writer.close()
    print(f"eval_return_mean={greedy.mean():.3f} eval_return_std={greedy.std():.3f} "
          f"eval_normalized_mean={results['greedy']['normalized_mean']:.3f}")  # fmt: skip
