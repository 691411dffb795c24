# docs and experiment results can be found at docs/rl3_meta.md
"""RL^2, RL^3 and RL^3-coarse: meta-RL with a causal transformer trained by PPO.

RL^2 (Duan et al., 2016) feeds a sequence model the observation, previous action, previous reward and
flags, and trains it with PPO over whole meta-episodes of H steps drawn from a task family.
RL^3 (Bhatia, Nashed & Zilberstein, 2023, arXiv 2306.15909) appends the output of an *object-level*
learner that runs inside every task: a count model of the task solved by value iteration after every
step; the meta-learner sees the advantages Q(s,.) - V(s), the value V(s) and the action counts N(s,.)
of the current state. RL^3-coarse runs the object-level learner on a coarser state abstraction.
"""

import json
import os
import pickle
import random
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter

from envs import bandit, gridworld, tabular_mdp


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (network init, action sampling and the training task seeds)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    threads: int = 1
    """number of CPU threads torch may use"""
    runs_dir: str = "runs"
    """directory under which `{run_name}/` (TensorBoard events, checkpoint, eval.json) is written"""
    save_model: bool = True
    """whether to save the trained meta-learner to `{runs_dir}/{run_name}/{exp_name}.cleanrl_model`"""
    load_model: str = ""
    """path of a checkpoint to evaluate instead of training"""

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
    ent_coef: float = 0.04
    """initial entropy coefficient, decayed linearly to 0 over training"""
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
    eval_tasks: int = 100
    """held-out tasks evaluated per task variant after training"""

    # to be filled in runtime
    batch_size: int = 0
    """steps per iteration (num_tasks * horizon)"""
    num_iterations: int = 0
    """PPO iterations (total_timesteps // batch_size)"""


ALGOS = ("rl2", "rl3", "rl3-coarse")
# Per-domain settings from the reference (rl3.md): value scale of the object-level vector (also used to
# scale rewards for the meta-learner), Laplace smoothing, value-iteration tolerance, learning rate.
DOMAINS = {
    "bandit": dict(module=bandit, horizon=100, value_scale=1.0, laplace=0.1, vi_tol=0.01, lr=3e-4),
    "mdp": dict(module=tabular_mdp, horizon=100, value_scale=10.0, laplace=0.1, vi_tol=0.01, lr=3e-4),
    "gridworld": dict(module=gridworld, horizon=None, value_scale=10.0, laplace=0.01, vi_tol=0.1, lr=2e-4),
}
GRID_HORIZON = {11: 250, 13: 350}


def fail(message: str):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"rl3_meta.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def make_env(args: Args, num_tasks: int, variant: str | None = None):
    """The batched task family of `args.domain`; `variant` None is the training distribution."""
    module = DOMAINS[args.domain]["module"]
    variant = variant or module.IN_DISTRIBUTION
    if args.domain == "gridworld":
        return gridworld.GridworldEnv(num_tasks, args.horizon, variant, args.grid_size)
    if args.domain == "mdp":
        return tabular_mdp.TabularMDPEnv(num_tasks, args.horizon, variant)
    return bandit.BanditEnv(num_tasks, args.horizon, variant)


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
    """Model-based RL inside each of B tasks (RL^3 Sec. 4.1), all array operations batched over tasks.

    Count model with Laplace smoothing ls: P(z'|z,a) = (N(z,a,z') + ls) / (N(z,a) + ls |Z|), reward the
    running mean per (z,a,z') (0 for unseen), so an untried (z,a) has uniform transitions and reward 0.
    Terminal transitions go to an extra absorbing state of value 0. After every step: value iteration on
    the estimated model, warm-started from the previous values, at most `max_iters` sweeps (the task's
    episode length), stopping once the largest change is below `tol`.

    The counts are sparse (at most t transitions seen after t steps), so a Bellman backup never forms the
    dense |Z| x A x |Z| model: sum_z' P(z'|z,a) V(z') = (sum over the seen transitions from (z,a) of V(z')
    + ls sum_z' V(z')) / (N(z,a) + ls |Z|), which costs O(t + |Z| A) per task instead of O(|Z|^2 A).
    """

    def __init__(self, num_tasks, abstraction, num_actions, horizon, laplace, gamma, tol, max_iters, value_scale):
        self.phi = abstraction
        self.Z = int(abstraction.max()) + 2  # abstract states + the absorbing state
        self.B, self.A = num_tasks, num_actions
        self.laplace, self.gamma, self.tol, self.max_iters, self.value_scale = laplace, gamma, tol, max_iters, value_scale
        self.counts = np.zeros((self.B, self.Z, self.A, self.Z))  # N(z,a,z')
        self.reward_sums = np.zeros((self.B, self.Z, self.A, self.Z))
        self.visits = np.zeros((self.B, self.Z, self.A))  # N(z,a)
        self.R = np.zeros((self.B, self.Z, self.A))  # expected reward under the smoothed model
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
        self.counts[b, z, actions, z_next] += 1.0
        self.reward_sums[b, z, actions, z_next] += rewards
        self.visits[b, z, actions] += 1.0
        n_zaz = self.counts[b, z, actions]  # (B, Z)
        mean_reward = np.divide(self.reward_sums[b, z, actions], n_zaz, out=np.zeros_like(n_zaz), where=n_zaz > 0)
        # R(z,a) = sum_z' P(z'|z,a) mean_reward(z,a,z')
        self.R[b, z, actions] = ((n_zaz + self.laplace) * mean_reward).sum(axis=1) / (
            self.visits[b, z, actions] + self.laplace * self.Z
        )
        self.seen_rows[:, self.t] = (b * self.Z + z) * self.A + actions
        self.seen_next[:, self.t] = z_next
        self.t += 1
        self.value_iteration()

    def value_iteration(self):
        """Synchronous sweeps Q = R + gamma * E_P[V], V = max_a Q, with V(absorbing) = 0."""
        rows, next_z = self.seen_rows[:, : self.t].ravel(), self.seen_next[:, : self.t]
        task = np.arange(self.B)[:, None]
        normaliser = self.visits + self.laplace * self.Z
        V = self.V
        for _ in range(self.max_iters):
            seen_sum = np.bincount(rows, weights=V[task, next_z].ravel(), minlength=self.B * self.Z * self.A)
            expected_next = (seen_sum.reshape(self.B, self.Z, self.A) + self.laplace * V.sum(axis=1)[:, None, None]) / normaliser
            self.Q = self.R + self.gamma * expected_next
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
            attended = F.scaled_dot_product_attention(q, keys[:, :, : t + 1], values[:, :, : t + 1])
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
        n_heads = self.blocks[0].n_heads
        shape = (batch_size, n_heads, max_len, d_model // n_heads)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in self.blocks]

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


@torch.no_grad()
def rollout(agent: Agent, env, args: Args, task_seeds):
    """Play one meta-episode of H steps in each of B tasks with the actor. Returns a dict of tensors
    inputs (B, H, D), actions, logprobs, rewards (B, H), and the seconds spent in object-level RL."""
    B, H, A = env.num_tasks, env.horizon, env.num_actions
    states = env.reset(task_seeds)
    cfg = DOMAINS[args.domain]
    object_level = None
    if args.algo != "rl2":
        object_level = ObjectLevelRL(
            B, state_abstraction(args, env), A, H, cfg["laplace"], args.obj_gamma, cfg["vi_tol"],
            env.episode_length, cfg["value_scale"],
        )
    inputs = torch.zeros(B, H, input_dim(args, env))
    actions = torch.zeros(B, H, dtype=torch.long)
    logprobs = torch.zeros(B, H)
    rewards = np.zeros((B, H))
    prev_action = np.zeros((B, A))
    prev_reward = np.zeros(B)
    new_episode = np.ones(B)
    episode_step = np.zeros(B)
    cache = agent.actor.new_cache(B)
    object_seconds = 0.0
    for t in range(H):
        parts = [prev_action, prev_reward[:, None], new_episode[:, None], np.full((B, 1), t / H),
                 (episode_step / env.episode_length)[:, None], env.observation(states)]
        if object_level is not None:
            parts.append(object_level.features(states))
        inputs[:, t] = torch.from_numpy(np.concatenate(parts, axis=1)).float()
        logits = agent.actor.step(inputs[:, t], t, cache)
        dist = Categorical(logits=logits)
        action = dist.sample()
        actions[:, t], logprobs[:, t] = action, dist.log_prob(action)
        a = action.numpy()
        next_states, reward, terminated, episode_end = env.step(a)
        if object_level is not None:
            start = time.perf_counter()
            object_level.update(states, a, reward, env.last_next_state, terminated)
            object_seconds += time.perf_counter() - start
        rewards[:, t] = reward
        prev_action = np.eye(A)[a]
        prev_reward = reward / cfg["value_scale"]
        new_episode = episode_end.astype(np.float64)
        episode_step = np.where(episode_end, 0, episode_step + 1)
        states = next_states
    return dict(inputs=inputs, actions=actions, logprobs=logprobs, rewards=torch.from_numpy(rewards).float(),
                object_seconds=object_seconds)


def baseline_returns(env, task_seeds, seed: int) -> dict:
    """Meta-episode returns of the non-learning baselines on the same tasks (and, through the env's
    pre-drawn random numbers, the same reward draws): random actions everywhere; on bandits also
    Thompson sampling with Beta(1, 1) priors and UCB1 (each arm once, then mean + sqrt(2 ln t / n))."""
    rng = np.random.default_rng(seed)
    B, A = env.num_tasks, env.num_actions
    policies = ["random"] + (["thompson", "ucb1"] if isinstance(env, bandit.BanditEnv) else [])
    results = {}
    for name in policies:
        env.reset(task_seeds)
        pulls, wins, total = np.zeros((B, A)), np.zeros((B, A)), np.zeros(B)
        for t in range(env.horizon):
            if name == "random":
                action = rng.integers(A, size=B)
            elif name == "thompson":
                action = rng.beta(1.0 + wins, 1.0 + pulls - wins).argmax(axis=1)
            else:
                bonus = np.sqrt(2.0 * np.log(max(t, 1)) / np.maximum(pulls, 1))
                action = np.where(t < A, t, (wins / np.maximum(pulls, 1) + bonus).argmax(axis=1))
            _, reward, _, _ = env.step(action)
            pulls[np.arange(B), action] += 1
            wins[np.arange(B), action] += reward
            total += reward
        results[name] = total
    return results


def evaluate(agent: Agent, args: Args, variant: str) -> dict:
    """Meta-test on `args.eval_tasks` held-out tasks of `variant`. Their task seeds 2^31 + i lie outside
    the training seed range [0, 2^31), so no evaluation task was ever trained on."""
    env = make_env(args, args.eval_tasks, variant)
    task_seeds = [2**31 + i for i in range(args.eval_tasks)]
    returns = rollout(agent, env, args, task_seeds)["rewards"].sum(dim=1).numpy().astype(np.float64)
    oracle = env.optimal_returns()
    result = {"oracle": oracle.mean(), "rl": summary(returns, oracle)}
    for name, baseline in baseline_returns(env, task_seeds, args.seed).items():
        result[name] = summary(baseline, oracle)
    return result


def summary(returns: np.ndarray, oracle: np.ndarray) -> dict:
    """Mean +- std over tasks of the meta-episode return and of the oracle-normalised return."""
    normalized = returns / oracle
    return dict(mean=float(returns.mean()), std=float(returns.std()),
                normalized_mean=float(normalized.mean()), normalized_std=float(normalized.std()))


def validate(args: Args):
    """Check the command line; one-line error naming the bad value and what is accepted."""
    if args.algo not in ALGOS:
        fail(f"unknown --algo '{args.algo}'; expected one of {', '.join(ALGOS)}")
    if args.domain not in DOMAINS:
        fail(f"unknown --domain '{args.domain}'; expected one of {', '.join(DOMAINS)}")
    if args.grid_size not in GRID_HORIZON:
        fail(f"unsupported --grid-size {args.grid_size}; expected one of {', '.join(map(str, GRID_HORIZON))}")
    if args.horizon is None:
        args.horizon = GRID_HORIZON[args.grid_size] if args.domain == "gridworld" else DOMAINS[args.domain]["horizon"]
    if args.horizon <= 0 or (args.domain == "mdp" and args.horizon % tabular_mdp.EPISODE_LENGTH):
        fail(f"bad --horizon {args.horizon}; expected a positive integer" + (" multiple of 10" if args.domain == "mdp" else ""))
    for name in ("num_tasks", "eval_tasks", "minibatch_size", "update_epochs", "threads", "d_model", "n_heads", "n_layers", "d_ff"):
        if getattr(args, name) <= 0:
            fail(f"bad --{name.replace('_', '-')} {getattr(args, name)}; expected a positive integer")
    if args.d_model % args.n_heads:
        fail(f"bad --d-model {args.d_model}; expected a multiple of --n-heads {args.n_heads}")
    args.batch_size = args.num_tasks * args.horizon
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations < 1 and not args.load_model:
        fail(f"bad --total-timesteps {args.total_timesteps}; expected at least num_tasks * horizon = {args.batch_size}")
    module = DOMAINS[args.domain]["module"]
    if args.ood in ("all", "none"):
        args.ood = ",".join(module.OOD_VARIANTS) if args.ood == "all" else ""
    for variant in filter(None, args.ood.split(",")):
        if variant not in module.OOD_VARIANTS:
            fail(f"unknown --ood variant '{variant}' for {args.domain}; expected all, none or a comma-separated "
                 f"subset of {', '.join(module.OOD_VARIANTS)}")
    if args.learning_rate is None:
        args.learning_rate = DOMAINS[args.domain]["lr"]


def checkpoint_config(args: Args) -> dict:
    """The settings a checkpoint must match to be loaded into this script's networks."""
    return dict(algo=args.algo, domain=args.domain, grid_size=args.grid_size, horizon=args.horizon,
                d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers, d_ff=args.d_ff)


def save_checkpoint(agent: Agent, args: Args, path: str):
    """Atomic write: temp file in the same directory, then os.replace."""
    tmp = f"{path}.tmp"
    torch.save({"config": checkpoint_config(args), "model": agent.state_dict()}, tmp)
    os.replace(tmp, path)


def load_checkpoint(agent: Agent, args: Args, path: str):
    """Load weights saved by `save_checkpoint`; any problem is a one-line error."""
    try:
        checkpoint = torch.load(path, weights_only=True)
        config = checkpoint["config"]
        if config != checkpoint_config(args):
            fail(f"checkpoint {path} was trained with {config}; this run has {checkpoint_config(args)}")
        agent.load_state_dict(checkpoint["model"])
    except (OSError, RuntimeError, KeyError, IndexError, TypeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        fail(f"cannot load checkpoint '{path}' ({type(error).__name__}); expected a file written by rl3_meta.py --save-model")


if __name__ == "__main__":
    args = tyro.cli(Args)
    validate(args)
    run_name = f"{args.domain}__{args.algo}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.runs_dir, run_name)
    writer = SummaryWriter(run_dir)
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.threads)

    env = make_env(args, args.num_tasks)
    agent = Agent(input_dim(args, env), env.num_actions, args.horizon, args)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    task_rng = np.random.default_rng(args.seed)  # training task seeds in [0, 2^31)
    value_scale = DOMAINS[args.domain]["value_scale"]
    tasks_per_minibatch = max(1, min(args.num_tasks, args.minibatch_size // args.horizon))

    if args.load_model:
        load_checkpoint(agent, args, args.load_model)
        args.num_iterations = 0
    start_time = time.time()
    global_step = 0
    timing = dict(rollout_seconds=0.0, object_level_seconds=0.0, update_seconds=0.0, update_epochs=0)
    for iteration in range(1, args.num_iterations + 1):
        iteration_start = time.time()
        ent_coef = args.ent_coef * (1.0 - (iteration - 1) / args.num_iterations)
        batch = rollout(agent, env, args, task_rng.integers(2**31, size=args.num_tasks).tolist())
        rollout_seconds = time.time() - iteration_start
        global_step += args.batch_size
        meta_returns = batch["rewards"].sum(dim=1).numpy()
        oracle = env.optimal_returns()

        # GAE over the meta-episode (rewards divided by the domain's value scale); after step H the
        # meta-episode is over, so the bootstrap value there is 0. Task-episode ends are not boundaries.
        with torch.no_grad():
            values = agent.critic(batch["inputs"]).squeeze(-1)
        rewards = batch["rewards"] / value_scale
        advantages = torch.zeros_like(rewards)
        last_gae = torch.zeros(args.num_tasks)
        for t in reversed(range(args.horizon)):
            next_value = values[:, t + 1] if t + 1 < args.horizon else torch.zeros(args.num_tasks)
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
                idx = order[start : start + tasks_per_minibatch]
                logits = agent.actor(batch["inputs"][idx])
                dist = Categorical(logits=logits)
                new_logprob = dist.log_prob(batch["actions"][idx])
                logratio = new_logprob - batch["logprobs"][idx]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
                mb_adv = advantages[idx]
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
                v_loss = 0.5 * ((agent.critic(batch["inputs"][idx]).squeeze(-1) - returns[idx]) ** 2).mean()
                entropy = dist.entropy().mean()
                loss = pg_loss - ent_coef * entropy + args.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
            if approx_kl > args.target_kl:
                break
        update_seconds = time.time() - update_start
        timing["rollout_seconds"] += rollout_seconds
        timing["object_level_seconds"] += batch["object_seconds"]
        timing["update_seconds"] += update_seconds
        timing["update_epochs"] += epoch

        y_pred, y_true = values.flatten().numpy(), returns.flatten().numpy()
        explained_var = np.nan if np.var(y_true) == 0 else 1 - np.var(y_true - y_pred) / np.var(y_true)
        elapsed = time.time() - start_time
        sps = int(global_step / elapsed)
        writer.add_scalar("charts/episodic_return", meta_returns.mean(), global_step)
        writer.add_scalar("charts/normalized_return", (meta_returns / oracle).mean(), global_step)
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("charts/ent_coef", ent_coef, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        writer.add_scalar("charts/iteration_seconds", time.time() - iteration_start, global_step)
        writer.add_scalar("charts/rollout_seconds", rollout_seconds, global_step)
        writer.add_scalar("charts/object_level_seconds", batch["object_seconds"], global_step)
        writer.add_scalar("charts/update_seconds", update_seconds, global_step)
        writer.add_scalar("charts/update_epochs", epoch, global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        eta = elapsed / iteration * (args.num_iterations - iteration)
        print(f"iter {iteration}/{args.num_iterations} step {global_step} return {meta_returns.mean():.1f} "
              f"normalized {(meta_returns / oracle).mean():.3f} SPS {sps} ETA {eta / 60:.1f} min", flush=True)

    if args.save_model and not args.load_model:
        model_path = os.path.join(run_dir, f"{args.exp_name}.cleanrl_model")
        save_checkpoint(agent, args, model_path)
        print(f"model saved to {model_path}")

    module = DOMAINS[args.domain]["module"]
    per_iteration = {f"{key}_per_iteration": value / max(args.num_iterations, 1) for key, value in timing.items()}
    results = {"args": vars(args), "train_seconds": time.time() - start_time,
               "iteration_seconds": (time.time() - start_time) / max(args.num_iterations, 1), **per_iteration, "eval": {}}
    for variant in [module.IN_DISTRIBUTION] + list(filter(None, args.ood.split(","))):
        result = evaluate(agent, args, variant)
        results["eval"][variant] = result
        rl = result["rl"]
        line = f"eval {variant}: {args.algo} return {rl['mean']:.1f} +- {rl['std']:.1f}, normalized {rl['normalized_mean']:.3f} +- {rl['normalized_std']:.3f}"
        line += "".join(f" | {name} {result[name]['normalized_mean']:.3f}" for name in ("random", "thompson", "ucb1") if name in result)
        print(line + f" | oracle return {result['oracle']:.1f}", flush=True)
        writer.add_scalar(f"eval/{variant}/episodic_return", rl["mean"], global_step)
        writer.add_scalar(f"eval/{variant}/normalized_return", rl["normalized_mean"], global_step)
    tmp = os.path.join(run_dir, "eval.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, os.path.join(run_dir, "eval.json"))
    writer.close()
