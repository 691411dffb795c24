# docs and experiment results can be found at docs/repaint_ppo.md
"""REPAINT: teacher-student transfer on clipped PPO (Tao et al., ICML 2021, arXiv 2011.11827; seed 004 section 2).

A teacher policy trained on a source task helps a student learn a target task with the same observation and
action spaces but a different reward. Every iteration k (Algorithm 1):
  1. collect S with the student pi_theta_old and S~ with pi_teacher, both in the target task with its reward;
  2. fit the critic V on S only;
  3. advantages for S and S~ with the student's critic;
  4. experience selection: keep the teacher transitions with advantage >= zeta;
  5. representation transfer (kickstarting) on S:  L_rep^k = L_clip - beta_k * CE(pi_teacher, pi_theta)   (eq. 1)
  6. instance transfer on the kept S~:  L_ins = clipped surrogate with the ratio pi_theta / pi_teacher
  7. theta <- theta + alpha_1 grad L_rep^k + alpha_2 grad L_ins.
`--transfer` picks the ablation: none (PPO), ks (steps 5 only), it (steps 1-4, 6), repaint (all), and warm_start
(initialise the student with the teacher's weights, then PPO). Without a teacher the run is plain PPO and its
checkpoint can serve as a teacher.

Two task families: `--env gridworld` (envs/transfer_gridworld.py, an MLP actor-critic, seconds on a CPU) and
`--env carracing` (ColorCarRacing-v0 with the lane reward variants and ppo_relative.py's Encoder + Policy, so
ppo_relative.py checkpoints load as teachers; see docs/checkpoints.md).
"""

import os
import pickle
import random
import sys
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

from envs import car_racing, transfer_gridworld  # importing the envs package registers ColorCarRacing-v0


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (network init, action sampling, environment resets)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    threads: int = 1
    """number of CPU threads torch may use"""
    runs_dir: str = "runs"
    """directory under which `{run_name}/` (TensorBoard events and the checkpoint agent.pt) is written"""
    save_every: int = 50
    """write the checkpoint every this many iterations (and always at the end); 0: only at the end"""

    # Algorithm specific arguments
    env: str = "gridworld"
    """task family: gridworld (envs/transfer_gridworld.py) or carracing (ColorCarRacing-v0)"""
    task: str | None = None
    """the task trained on. gridworld: target, similar or different (default target); carracing: the R3L task
    variant standard, far, slow, scrambled or no_idle (default standard)"""
    reward: str = "standard"
    """carracing reward variant: standard, inner_lane or outer_lane"""
    bg_color: str = "green"
    """carracing background colour: a name or '#rrggbb'"""
    frame_stack: int = 1
    """carracing frames stacked per observation"""
    teacher: str = ""
    """path of the teacher checkpoint (agent.pt of ppo_relative.py or repaint_ppo.py); empty: no teacher"""
    transfer: str = "none"
    """none (PPO), ks (kickstarting only), it (instance transfer only), repaint (both) or warm_start"""
    beta: float = 1.0
    """initial weight beta_1 of the kickstarting cross-entropy"""
    beta_schedule: str = "exponential"
    """decay of beta_k: exponential (beta * beta_decay^(k-1)), linear (to 0 at iteration beta_decay_iterations) or constant"""
    beta_decay: float = 0.9
    """per-iteration factor of the exponential beta schedule"""
    beta_decay_iterations: int = 20
    """iterations over which the linear beta schedule reaches 0"""
    zeta: float = 0.0
    """advantage threshold of the experience selection: teacher samples with A < zeta are dropped"""
    alpha_ins: float = 1.0
    """weight alpha_2 / alpha_1 of the instance-transfer loss relative to the PPO loss"""
    teacher_num_steps: int | None = None
    """steps per teacher environment per iteration (default: num_steps)"""
    total_timesteps: int = 20_480
    """total student environment steps (teacher rollouts come on top, see charts/teacher_steps)"""
    learning_rate: float | None = None
    """Adam learning rate alpha_1 (default: 1e-3 on gridworld, 2.5e-4 on carracing)"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0"""
    num_envs: int = 8
    """parallel student environments (and as many teacher environments)"""
    num_steps: int = 32
    """steps per student environment per iteration"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """lambda of generalized advantage estimation"""
    num_minibatches: int = 4
    """minibatches per epoch"""
    update_epochs: int = 4
    """epochs of critic fitting and of policy updates per iteration"""
    norm_adv: bool = True
    """normalise the advantages (see docs/repaint_ppo.md, detail 6)"""
    clip_coef: float = 0.2
    """surrogate clipping coefficient, for L_clip and L_ins"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    max_grad_norm: float = 0.5
    """gradient-norm clipping"""
    hidden_size: int = 64
    """gridworld: width of the two hidden layers of the actor and of the critic"""

    # to be filled in runtime
    batch_size: int = 0
    """student steps per iteration (num_envs * num_steps)"""
    num_iterations: int = 0
    """iterations (total_timesteps // batch_size)"""


ENVS = ("gridworld", "carracing")
TRANSFERS = ("none", "ks", "it", "repaint", "warm_start")
BETA_SCHEDULES = ("exponential", "linear", "constant")
REWARDS = ("standard", "inner_lane", "outer_lane")
CARRACING_FORMAT = "r3l-agent-v1"  # docs/checkpoints.md
GRIDWORLD_FORMAT = "repaint-gridworld-v1"


def fail(message: str):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"repaint_ppo.py: error: {message}", file=sys.stderr)
    sys.exit(2)


# ---- networks. layer_init, RelativeProjection, Encoder and Policy are ppo_relative.py's, with the same module and
# ---- buffer names so that its checkpoints load as teachers (docs/checkpoints.md); the anchor-update methods are
# ---- left out: anchors here come from a checkpoint and stay fixed.
NATURE_CNN_LATENT = 64 * 7 * 7  # flattened Nature-CNN output at 84x84


def layer_init(layer, std=2**0.5, bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class RelativeProjection(nn.Module):
    """Relative representation of a latent with respect to anchor embeddings (seed 001, eq. 2-3): the cosine
    similarity between the latent and every anchor embedding, both centred on the anchors' mean. The anchor
    embeddings are a buffer; here they come from the teacher's checkpoint and are never updated, so the
    anchor side (mean, std, normalised anchors) is computed once when the state dict is loaded."""

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

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        latent = latent - self.anchor_center
        if self.standardize:
            latent = latent / self.anchor_scale
        return F.normalize(latent, dim=-1) @ self.normalized_anchors_t


class Encoder(nn.Module):
    """Observation -> latent: the Nature CNN on every RGB frame of the stack, optionally projected on anchors.
    Output size: frame_stack * (num_anchors if relative else 3136)."""

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

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        batch = obs.shape[0]
        frames = obs.reshape(batch * self.frame_stack, 3, *obs.shape[-2:])
        latent = self.embed_frames(frames)
        if self.projection is not None:
            latent = self.projection(latent)
        return latent.reshape(batch, -1)


class Policy(nn.Module):
    """Controller on top of the encoder: LayerNorm -> ReLU -> Linear(512) -> ReLU -> actor and critic heads."""

    def __init__(self, latent_dim: int, num_actions: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.LayerNorm(latent_dim), nn.ReLU(), layer_init(nn.Linear(latent_dim, 512)), nn.ReLU())
        self.actor = layer_init(nn.Linear(512, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1.0)

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action logits and state value."""
        hidden = self.trunk(latent)
        return self.actor(hidden), self.critic(hidden).squeeze(-1)

    def greedy_action(self, latent: torch.Tensor) -> torch.Tensor:
        return self.forward(latent)[0].argmax(dim=-1)


class MLPPolicy(nn.Module):
    """Gridworld actor-critic: separate tanh MLPs for the actor and the critic (CleanRL's ppo.py)."""

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int):
        super().__init__()
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, num_actions), std=0.01),
        )
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
            layer_init(nn.Linear(hidden_size, 1), std=1.0),
        )

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action logits and state value."""
        return self.actor(latent), self.critic(latent).squeeze(-1)

    def greedy_action(self, latent: torch.Tensor) -> torch.Tensor:
        return self.actor(latent).argmax(dim=-1)


class Agent(nn.Module):
    """encoder -> policy (the encoder is the identity on the gridworld)."""

    def __init__(self, encoder: nn.Module, policy: nn.Module):
        super().__init__()
        self.encoder, self.policy = encoder, policy

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action logits and state value of a batch of observations."""
        return self.policy(self.encoder(obs))


# ---- the pieces of REPAINT (pure functions, tested in tests/test_repaint_ppo.py)


def beta_at(iteration: int, beta: float, schedule: str, decay: float, decay_iterations: int) -> float:
    """Kickstarting weight beta_k of iteration k = 1, 2, ... (eq. 1); it decays so that the student stops
    imitating the teacher and follows its own reward."""
    if schedule == "exponential":
        return beta * decay ** (iteration - 1)
    if schedule == "linear":
        return beta * max(0.0, 1.0 - (iteration - 1) / decay_iterations)
    return beta


def compute_gae(rewards, values, next_value, terminations, dones, valid, gamma, gae_lambda):
    """Generalized advantage estimation on a (T, N) rollout under gymnasium 1.x next-step autoreset.

    After a step that ends an episode (dones[t]), the environment returns the episode's final observation and
    resets on the *next* step, whose entry is not a transition (valid[t+1] False, its action ignored). So
    values[t+1] is V(final observation): a truncated episode bootstraps from it, a terminated one does not, and
    the advantage recursion stops at every episode end. `next_value` is V of the observation after the last step.
    Returns (advantages, returns), zero on invalid entries."""
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(next_value)
    for t in reversed(range(num_steps)):
        following = next_value if t == num_steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * (1.0 - terminations[t]) - values[t]
        last_gae = (delta + gamma * gae_lambda * (1.0 - dones[t]) * last_gae) * valid[t]
        advantages[t] = last_gae
    return advantages, (advantages + values) * valid


def select_teacher_samples(advantages: torch.Tensor, valid: torch.Tensor, zeta: float) -> torch.Tensor:
    """Advantage-based experience selection (Algorithm 1): keep a teacher transition iff its advantage,
    computed with the student's critic and the target reward, is >= zeta (reset steps are never kept)."""
    return valid.bool() & (advantages >= zeta)


def clipped_surrogate_loss(logprob, behaviour_logprob, advantages, clip_coef):
    """Negative clipped surrogate, -E[min(r A, clip(r, 1-eps, 1+eps) A)], r = pi_theta(a|s) / pi_b(a|s).
    pi_b = pi_theta_old on student samples gives -L_clip; pi_b = pi_teacher on kept teacher samples gives -L_ins."""
    ratio = (logprob - behaviour_logprob).exp()
    return torch.max(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)).mean()


def kickstarting_cross_entropy(teacher_logits, student_logits):
    """L_aux of eq. 1: cross-entropy H(pi_teacher, pi_theta) = -sum_a pi_teacher(a|s) log pi_theta(a|s), mean over s."""
    return -(F.softmax(teacher_logits, dim=-1) * F.log_softmax(student_logits, dim=-1)).sum(dim=-1).mean()


# ---- environments, rollouts, checkpoints


def make_env_fn(args: Args):
    if args.env == "gridworld":
        return lambda: transfer_gridworld.TransferGridworld(args.task)
    return lambda: car_racing.ColorCarRacingObservation(
        gym.make("ColorCarRacing-v0", bg_color=args.bg_color, task=args.task, reward=args.reward), args.frame_stack
    )


def make_envs(args: Args) -> gym.vector.VectorEnv:
    """`num_envs` copies of the target task; episode statistics from RecordEpisodeStatistics infos."""
    return gym.wrappers.vector.RecordEpisodeStatistics(gym.vector.SyncVectorEnv([make_env_fn(args)] * args.num_envs))


def action_spec(env: str, task: str, num_actions: int) -> tuple:
    """What an action index means: gridworld moves, or the gymnasium CarRacing actions of the task variant."""
    if env == "gridworld":
        return ("gridworld moves", tuple(range(num_actions)))
    return (f"CarRacing task {task!r}", tuple(car_racing.TASKS[task]["actions"]))


@torch.no_grad()
def rollout(agent: nn.Module, envs, state: dict, num_steps: int, episode_stats: list):
    """`num_steps` steps of every environment with actions sampled from `agent` (student or teacher).
    `state` carries the current observation and done flags across iterations. Returns the batch as tensors
    (T, N, ...): obs, actions, logprobs (of the acting policy), rewards, terminations, dones, valid, and
    next_obs (N, ...). Finished episodes' (return, length) are appended to `episode_stats`."""
    n = envs.num_envs
    obs = torch.zeros((num_steps, n) + state["obs"].shape[1:], dtype=state["obs"].dtype)
    actions = torch.zeros((num_steps, n), dtype=torch.long)
    logprobs, rewards, terminations, dones, valid = (torch.zeros((num_steps, n)) for _ in range(5))
    for t in range(num_steps):
        obs[t] = state["obs"]
        valid[t] = 1.0 - state["done"]  # the step after an episode end only resets (next-step autoreset)
        logits, _ = agent(state["obs"])
        dist = torch.distributions.Categorical(logits=logits, validate_args=False)
        action = dist.sample()
        actions[t], logprobs[t] = action, dist.log_prob(action)
        next_obs, reward, terminated, truncated, infos = envs.step(action.numpy())
        rewards[t] = torch.as_tensor(reward, dtype=torch.float32)
        terminations[t] = torch.as_tensor(terminated, dtype=torch.float32)
        dones[t] = torch.as_tensor(np.logical_or(terminated, truncated), dtype=torch.float32)
        state["obs"], state["done"] = torch.as_tensor(next_obs), dones[t]
        if "episode" in infos:
            for i in np.flatnonzero(infos["_episode"]):
                episode_stats.append((float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])))
    return dict(obs=obs, actions=actions, logprobs=logprobs, rewards=rewards, terminations=terminations,
                dones=dones, valid=valid, next_obs=state["obs"])


@torch.no_grad()
def batched(fn, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    return torch.cat([fn(part) for part in x.split(chunk)])


def advantages_of(agent: Agent, batch: dict, args: Args):
    """GAE advantages and returns of a rollout under the student's current critic."""
    flat_obs = batch["obs"].reshape((-1,) + batch["obs"].shape[2:])
    values = batched(lambda o: agent(o)[1], flat_obs).reshape(batch["rewards"].shape)
    next_value = batched(lambda o: agent(o)[1], batch["next_obs"])
    advantages, returns = compute_gae(batch["rewards"], values, next_value, batch["terminations"], batch["dones"],
                                      batch["valid"], args.gamma, args.gae_lambda)
    return advantages, returns, values


def build_agent(metadata: dict, env: str) -> Agent:
    """Networks from a checkpoint's metadata (docs/checkpoints.md for carracing)."""
    if env == "gridworld":
        policy = MLPPolicy(metadata["observation_shape"][0], metadata["num_actions"], metadata["hidden_size"])
        return Agent(nn.Identity(), policy)
    encoder = Encoder(metadata["frame_stack"], metadata["relative"], metadata["num_anchors"] or NATURE_CNN_LATENT,
                      standardize=metadata["anchor_standardize"])
    return Agent(encoder, Policy(encoder.latent_dim, metadata["num_actions"]))


def student_metadata(args: Args, envs, teacher_metadata: dict | None) -> dict:
    """The metadata of this run's checkpoint, which also describes the student's networks. With warm_start the
    student takes the teacher's architecture (on carracing a relative teacher's anchors stay frozen)."""
    num_actions = int(envs.single_action_space.n)
    common = dict(algorithm="repaint", task=args.task, num_actions=num_actions, seed=args.seed, global_step=0,
                  args=vars(args))
    if args.env == "gridworld":
        hidden = teacher_metadata["hidden_size"] if args.transfer == "warm_start" else args.hidden_size
        return dict(common, env="gridworld", observation_shape=list(envs.single_observation_space.shape),
                    hidden_size=hidden)
    relative, num_anchors, anchor_set_id, standardize = False, None, None, False
    if args.transfer == "warm_start":
        relative, num_anchors = teacher_metadata["relative"], teacher_metadata["num_anchors"]
        anchor_set_id, standardize = teacher_metadata["anchor_set_id"], teacher_metadata["anchor_standardize"]
    frame_latent = num_anchors if relative else NATURE_CNN_LATENT
    return dict(common, bg_color=args.bg_color, reward=args.reward, frame_stack=args.frame_stack, relative=relative,
                anchor_set_id=anchor_set_id, num_anchors=num_anchors, anchor_standardize=standardize,
                latent_dim=args.frame_stack * frame_latent)


def load_teacher(path: str, args: Args, envs) -> tuple[Agent, dict]:
    """The frozen teacher agent and its metadata; a checkpoint that cannot serve this target task is refused
    with a one-line reason."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        fail(f"cannot load teacher checkpoint '{path}' ({type(error).__name__}); expected an agent.pt written by "
             "ppo_relative.py or repaint_ppo.py")
    fmt = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if fmt not in (CARRACING_FORMAT, GRIDWORLD_FORMAT):
        fail(f"teacher '{path}' has format {fmt!r}; expected {CARRACING_FORMAT!r} or {GRIDWORLD_FORMAT!r}")
    metadata = checkpoint["metadata"]
    teacher_env = "carracing" if fmt == CARRACING_FORMAT else "gridworld"
    if teacher_env == "carracing":
        teacher_obs = (3 * metadata["frame_stack"], car_racing.OBS_SIZE, car_racing.OBS_SIZE)
        if metadata["task"] not in car_racing.TASKS:
            fail(f"teacher '{path}' was trained on unknown CarRacing task {metadata['task']!r}")
    else:
        teacher_obs = tuple(metadata["observation_shape"])
    target_obs = tuple(envs.single_observation_space.shape)
    if teacher_obs != target_obs:
        fail(f"teacher '{path}' observes shape {teacher_obs} ({teacher_env}) but the target task observes "
             f"{target_obs} ({args.env}); a teacher must share the target's observation space")
    teacher_actions = action_spec(teacher_env, metadata["task"], metadata["num_actions"])
    target_actions = action_spec(args.env, args.task, int(envs.single_action_space.n))
    if teacher_actions != target_actions:
        fail(f"teacher '{path}' acts with {teacher_actions[0]} {teacher_actions[1]} but the target task acts with "
             f"{target_actions[0]} {target_actions[1]}; a teacher must share the target's action space")
    teacher = build_agent(metadata, teacher_env)
    try:
        teacher.encoder.load_state_dict(checkpoint["encoder"])
        teacher.policy.load_state_dict(checkpoint["policy"])
    except (RuntimeError, KeyError) as error:
        fail(f"teacher '{path}' does not match the networks its metadata describes ({type(error).__name__})")
    teacher.eval().requires_grad_(False)
    return teacher, metadata


def save_checkpoint(path: str, agent: Agent, args: Args, metadata: dict, optimizer, iteration: int, global_step: int):
    """Atomic write of the checkpoint (docs/checkpoints.md): a temporary file, then os.replace."""
    checkpoint = {
        "format": CARRACING_FORMAT if args.env == "carracing" else GRIDWORLD_FORMAT,
        "encoder": agent.encoder.state_dict(),
        "policy": agent.policy.state_dict(),
        "metadata": dict(metadata, global_step=global_step),
        "training_state": {"optimizer": optimizer.state_dict(), "iteration": iteration},
    }
    tmp = f"{path}.tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def validate(args: Args):
    """Check the command line; one-line error naming the bad value and what is accepted."""
    if args.env not in ENVS:
        fail(f"unknown --env {args.env!r}; expected one of {', '.join(ENVS)}")
    if args.transfer not in TRANSFERS:
        fail(f"unknown --transfer {args.transfer!r}; expected one of {', '.join(TRANSFERS)}")
    if args.beta_schedule not in BETA_SCHEDULES:
        fail(f"unknown --beta-schedule {args.beta_schedule!r}; expected one of {', '.join(BETA_SCHEDULES)}")
    tasks = transfer_gridworld.TASKS if args.env == "gridworld" else car_racing.TASKS
    args.task = args.task or next(iter(tasks))
    if args.task not in tasks:
        fail(f"unknown --task {args.task!r} for --env {args.env}; expected one of {', '.join(tasks)}")
    if args.reward not in REWARDS:
        fail(f"unknown --reward {args.reward!r}; expected one of {', '.join(REWARDS)}")
    if args.env == "gridworld" and args.reward != "standard":
        fail(f"--reward {args.reward!r} applies to --env carracing only; gridworld rewards are set by --task")
    if args.env == "carracing":
        try:
            car_racing.parse_bg_color(args.bg_color)
        except ValueError as error:
            fail(str(error))
    if args.transfer != "none" and not args.teacher:
        fail(f"--transfer {args.transfer} needs a teacher: --teacher PATH")
    if args.transfer == "none" and args.teacher:
        fail("--teacher is unused with --transfer none; pick ks, it, repaint or warm_start")
    for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs", "threads", "hidden_size", "frame_stack",
                 "beta_decay_iterations"):
        if getattr(args, name) <= 0:
            fail(f"bad --{name.replace('_', '-')} {getattr(args, name)}; expected a positive integer")
    if args.learning_rate is None:
        args.learning_rate = 1e-3 if args.env == "gridworld" else 2.5e-4
    for name in ("beta", "alpha_ins", "learning_rate", "clip_coef"):
        if getattr(args, name) < 0:
            fail(f"bad --{name.replace('_', '-')} {getattr(args, name)}; expected a number >= 0")
    if not 0.0 < args.beta_decay <= 1.0:
        fail(f"bad --beta-decay {args.beta_decay}; expected a number in (0, 1]")
    args.teacher_num_steps = args.teacher_num_steps or args.num_steps
    if args.teacher_num_steps <= 0:
        fail(f"bad --teacher-num-steps {args.teacher_num_steps}; expected a positive integer")
    if args.save_every < 0:
        fail(f"bad --save-every {args.save_every}; expected an integer >= 0")
    args.batch_size = args.num_envs * args.num_steps
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations < 1:
        fail(f"bad --total-timesteps {args.total_timesteps}; expected at least num_envs * num_steps = {args.batch_size}")


if __name__ == "__main__":
    args = tyro.cli(Args)
    validate(args)
    env_name = f"{args.env}-{args.task}" + (f"-{args.reward}" if args.env == "carracing" else "")
    run_name = f"{env_name}__{args.exp_name}__{args.transfer}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.runs_dir, run_name)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.threads)

    envs = make_envs(args)
    teacher, teacher_metadata = load_teacher(args.teacher, args, envs) if args.teacher else (None, None)
    metadata = student_metadata(args, envs, teacher_metadata)
    agent = build_agent(metadata, args.env)
    if args.transfer == "warm_start":  # the paper's extra baseline: start from the teacher's weights
        agent.load_state_dict(teacher.state_dict())
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    uses_ks = args.transfer in ("ks", "repaint")
    uses_it = args.transfer in ("it", "repaint")

    writer = SummaryWriter(run_dir)
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )
    checkpoint_path = os.path.join(run_dir, "agent.pt")

    next_obs, _ = envs.reset(seed=args.seed)
    student_state = {"obs": torch.as_tensor(next_obs), "done": torch.zeros(args.num_envs)}
    if uses_it:  # the teacher acts in its own copies of the target task (different reset seeds)
        teacher_envs = make_envs(args)
        teacher_obs, _ = teacher_envs.reset(seed=args.seed + args.num_envs)
        teacher_state = {"obs": torch.as_tensor(teacher_obs), "done": torch.zeros(args.num_envs)}
    start_time = time.time()
    global_step = teacher_steps = 0
    for iteration in range(1, args.num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - (iteration - 1.0) / args.num_iterations)
        beta_k = beta_at(iteration, args.beta, args.beta_schedule, args.beta_decay, args.beta_decay_iterations) if uses_ks else 0.0

        # 1. S with pi_theta_old, S~ with pi_teacher, both in the target task with the target reward
        episode_stats, teacher_episode_stats = [], []
        batch = rollout(agent, envs, student_state, args.num_steps, episode_stats)
        global_step += args.batch_size
        if uses_it:
            teacher_batch = rollout(teacher, teacher_envs, teacher_state, args.teacher_num_steps, teacher_episode_stats)
            teacher_steps += args.num_envs * args.teacher_num_steps

        obs_shape = batch["obs"].shape[2:]
        valid = batch["valid"].reshape(-1).bool()
        b_obs = batch["obs"].reshape((-1,) + obs_shape)[valid]
        b_actions, b_logprobs = batch["actions"].reshape(-1)[valid], batch["logprobs"].reshape(-1)[valid]
        num_samples = b_obs.shape[0]

        # 2. fit the critic V on S only: regression on the lambda-returns under the critic that collected S
        _, returns, values_before = advantages_of(agent, batch, args)
        b_returns = returns.reshape(-1)[valid]
        for epoch in range(args.update_epochs):
            for mb in np.array_split(np.random.permutation(num_samples), args.num_minibatches):
                v_loss = 0.5 * ((agent(b_obs[mb])[1] - b_returns[mb]) ** 2).mean()
                optimizer.zero_grad()
                v_loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

        # 3. advantages of S and S~ with the fitted student critic (target reward for both)
        advantages, _, _ = advantages_of(agent, batch, args)
        b_advantages = advantages.reshape(-1)[valid]
        adv_scale = b_advantages.std() + 1e-8 if args.norm_adv else torch.tensor(1.0)
        if uses_ks:  # pi_teacher on the student's states, for the cross-entropy of eq. 1
            b_teacher_logits = batched(lambda o: teacher(o)[0], b_obs)
        if uses_it:
            # 4. experience selection: keep the teacher transitions with A >= zeta
            teacher_advantages, _, _ = advantages_of(agent, teacher_batch, args)
            kept = select_teacher_samples(teacher_advantages, teacher_batch["valid"], args.zeta).reshape(-1)
            t_obs = teacher_batch["obs"].reshape((-1,) + obs_shape)[kept]
            t_actions, t_logprobs = teacher_batch["actions"].reshape(-1)[kept], teacher_batch["logprobs"].reshape(-1)[kept]
            # kept advantages are scaled by the student batch's std but not centred: centring would turn
            # kept (A >= zeta) samples into negative ones
            t_advantages = teacher_advantages.reshape(-1)[kept] / adv_scale
            kept_fraction = kept.sum().item() / max(teacher_batch["valid"].sum().item(), 1.0)

        # 5-7. policy update: minimise -L_clip + beta_k * CE on S, plus alpha_ins * (-L_ins) on the kept S~
        # (eq. 1 is an objective to maximise; the loss below is its negative)
        clipfracs, ce_losses, ins_losses = [], [], []
        for epoch in range(args.update_epochs):
            student_mbs = np.array_split(np.random.permutation(num_samples), args.num_minibatches)
            teacher_mbs = np.array_split(np.random.permutation(t_obs.shape[0]), args.num_minibatches) if uses_it else []
            for i, mb in enumerate(student_mbs):
                logits, _ = agent(b_obs[mb])
                log_probs = F.log_softmax(logits, dim=-1)
                new_logprob = log_probs.gather(1, b_actions[mb, None]).squeeze(1)
                logratio = new_logprob - b_logprobs[mb]
                with torch.no_grad():
                    approx_kl = ((logratio.exp() - 1) - logratio).mean()
                    clipfracs.append(((logratio.exp() - 1.0).abs() > args.clip_coef).float().mean().item())
                mb_adv = b_advantages[mb]
                if args.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = clipped_surrogate_loss(new_logprob, b_logprobs[mb], mb_adv, args.clip_coef)
                entropy = -(log_probs.exp() * log_probs).sum(dim=-1).mean()
                loss = pg_loss - args.ent_coef * entropy
                if uses_ks:
                    ce_loss = kickstarting_cross_entropy(b_teacher_logits[mb], logits)
                    loss = loss + beta_k * ce_loss
                    ce_losses.append(ce_loss.item())
                if uses_it and len(teacher_mbs[i]) > 0:
                    tmb = teacher_mbs[i]
                    t_logprob = F.log_softmax(agent(t_obs[tmb])[0], dim=-1).gather(1, t_actions[tmb, None]).squeeze(1)
                    ins_loss = clipped_surrogate_loss(t_logprob, t_logprobs[tmb], t_advantages[tmb], args.clip_coef)
                    loss = loss + args.alpha_ins * ins_loss
                    ins_losses.append(ins_loss.item())
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

        y_pred, y_true = values_before.reshape(-1)[valid].numpy(), b_returns.numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
        sps = int(global_step / (time.time() - start_time))
        for episodic_return, episodic_length in episode_stats:
            writer.add_scalar("charts/episodic_return", episodic_return, global_step)
            writer.add_scalar("charts/episodic_length", episodic_length, global_step)
        for episodic_return, _ in teacher_episode_stats:
            writer.add_scalar("charts/teacher_episodic_return", episodic_return, global_step)
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        writer.add_scalar("charts/iteration", iteration, global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        line = f"iteration {iteration}/{args.num_iterations} step {global_step}"
        if episode_stats:
            line += f" return {np.mean([r for r, _ in episode_stats]):.3f}"
        if uses_ks:
            writer.add_scalar("transfer/beta_k", beta_k, global_step)
            writer.add_scalar("losses/kickstart_cross_entropy", np.mean(ce_losses), global_step)
            line += f" beta_k {beta_k:.3f}"
        if uses_it:
            writer.add_scalar("transfer/teacher_kept_fraction", kept_fraction, global_step)
            writer.add_scalar("charts/teacher_steps", teacher_steps, global_step)
            if ins_losses:
                writer.add_scalar("losses/instance_loss", np.mean(ins_losses), global_step)
            line += f" kept {kept_fraction:.2f}"
        print(line + f" SPS {sps}", flush=True)
        if args.save_every and iteration % args.save_every == 0:
            save_checkpoint(checkpoint_path, agent, args, metadata, optimizer, iteration, global_step)

    save_checkpoint(checkpoint_path, agent, args, metadata, optimizer, args.num_iterations, global_step)
    print(f"checkpoint saved to {checkpoint_path}")
    envs.close()
    writer.close()
