# docs and experiment results can be found at docs/repaint_ppo.md
"""REPAINT: teacher-student transfer on clipped PPO.

Tao, Guo, Smith, Hutter, "REPAINT: Knowledge Transfer in Deep Reinforcement Learning", ICML 2021, arXiv 2011.11827.
A teacher policy trained on a source task helps a student learn a target task with the same observation and action
spaces but a different reward. Every iteration k (the paper's Algorithm 1):
  1. collect S with the student pi_theta_old and S~ with pi_teacher, both in the target task with its reward;
  2. fit the critic V on S only;
  3. advantages for S and S~ with the student's critic (GAE);
  4. experience selection: keep the teacher transitions with advantage A >= zeta;
  5. representation transfer (kickstarting) on S:  L_rep^k = L_clip - beta_k * CE(pi_teacher, pi_theta)   (eq. 1)
  6. instance transfer on the kept S~:  L_ins = E[min(r A, clip(r, 1 - eps, 1 + eps) A)], r = pi_theta / pi_teacher
  7. theta <- theta + alpha_1 grad L_rep^k + alpha_2 grad L_ins.
`--transfer` picks the ablation: none (PPO), ks (step 5 only), it (steps 1-4, 6), repaint (all), and warm_start
(initialise the student with the teacher's weights, then PPO). A `--transfer none` checkpoint can be a teacher.

    python repaint_ppo.py --task similar --exp-name teacher                   # a gridworld teacher (plain PPO)
    python repaint_ppo.py --task target --transfer repaint --teacher runs/<teacher run>/agent.pt
    python repaint_ppo.py --env carracing --reward outer_lane --transfer repaint --teacher runs/<inner_lane run>
    python repaint_ppo.py --resume runs/<run_name>/agent.pt                    # continue a run from its checkpoint

Two task families: `--env gridworld` (envs/transfer_gridworld.py, an MLP actor-critic, seconds on a CPU) and
`--env carracing` (ColorCarRacing-v0 with the lane rewards and ppo_relative.py's Encoder + Policy, so ppo_relative.py
checkpoints load as teachers; docs/checkpoints.md).
"""

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

from envs import car_racing, transfer_gridworld  # importing the envs package registers ColorCarRacing-v0
from envs.checkpoint import (
    AGENT_FILE,
    AGENT_FORMAT,
    GracefulStop,
    agent_payload,
    ensure_writable_dir,
    fail,
    load_agent_checkpoint,
    load_torch_file,
    resolve_precision,
    resume_args,
    save_atomic,
)


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the student (initial weights, action sampling, resets); the teacher samples with its own generator"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    torch_threads: int = 1
    """number of CPU threads torch may use"""
    precision: str = "fp32"
    """fp32, bf16 (autocast around the forward passes; measured no faster here: docs/repaint_ppo.md, Precision), or
    auto: bf16 where the device computes it natively (CUDA with bf16, CPUs with AMX or AVX512-BF16), else fp32"""
    runs_dir: str = "runs"
    """folder under which `{run_name}/` (TensorBoard events and the checkpoint agent.pt) is written"""
    save_every: int = 0
    """write the checkpoint every this many student environment steps (0: only at the end)"""
    resume: Optional[str] = None
    """continue the run of this checkpoint (agent.pt or its run folder)"""
    eval_episodes: int = 10
    """deterministic (argmax) evaluation episodes at the end of the run (0: none)"""
    capture_video: bool = False
    """carracing: save the agent's view of every final evaluation episode as a GIF in `videos/{run_name}/`"""

    # Algorithm specific arguments
    env: str = "gridworld"
    """task family: gridworld (envs/transfer_gridworld.py) or carracing (ColorCarRacing-v0)"""
    task: Optional[str] = None
    """gridworld: target (default), similar, different; carracing: standard (default), slow, scrambled, no_idle, far"""
    view: str = "near"
    """carracing camera: near (gymnasium's zoom) or far"""
    reward: str = "standard"
    """carracing reward variant: standard, inner_lane or outer_lane"""
    bg_color: str = "green"
    """carracing background colour: a name or '#rrggbb'"""
    frame_stack: int = 1
    """carracing frames stacked per observation"""
    teacher: str = ""
    """the teacher's checkpoint (agent.pt or its run folder, of ppo_relative.py or repaint_ppo.py); empty: none"""
    transfer: str = "none"
    """none (PPO), ks (kickstarting only), it (instance transfer only), repaint (both) or warm_start"""
    beta: float = 1.0
    """initial weight beta_1 of the kickstarting cross-entropy"""
    beta_schedule: str = "exponential"
    """decay of beta_k: exponential (beta * beta_decay^(k-1)), linear (to 0 at iteration beta_decay_iterations), constant"""
    beta_decay: float = 0.9
    """per-iteration factor of the exponential beta schedule"""
    beta_decay_iterations: int = 20
    """iterations over which the linear beta schedule reaches 0"""
    zeta: float = 0.0
    """advantage threshold of the experience selection: teacher samples with A < zeta are dropped"""
    alpha_ins: float = 1.0
    """weight alpha_2 / alpha_1 of the instance-transfer loss relative to the PPO loss"""
    teacher_adv_norm: str = "teacher"
    """divisor of the kept teacher advantages: the std of the teacher's (teacher) or the student's (student) batch"""
    teacher_num_steps: Optional[int] = None
    """steps per teacher environment per iteration (default: num_steps)"""
    total_timesteps: int = 20_480
    """total student environment steps (teacher rollouts come on top, see charts/teacher_steps)"""
    learning_rate: Optional[float] = None
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
    """normalise the student's advantages per minibatch"""
    clip_coef: float = 0.2
    """surrogate clipping coefficient, for L_clip and L_ins"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    max_grad_norm: float = 0.5
    """gradient-norm clipping"""
    hidden_size: int = 64
    """gridworld: width of the two hidden layers of the actor and of the critic"""


CHOICES = {
    "env": ("gridworld", "carracing"),
    "transfer": ("none", "ks", "it", "repaint", "warm_start"),
    "beta_schedule": ("exponential", "linear", "constant"),
    "precision": ("fp32", "bf16", "auto"),
    "teacher_adv_norm": ("teacher", "student"),
    "view": tuple(car_racing.VIEWS),
    "reward": car_racing.REWARDS,
}
GRIDWORLD_FORMAT = "repaint-gridworld-v1"
EVAL_SEED = 10_000  # evaluation episodes reset with EVAL_SEED, EVAL_SEED + 1, ...: the same tracks for every run
# the flags that may differ from the checkpoint's when resuming; every other flag comes from the checkpoint
RESUME_FREE_FLAGS = ("total_timesteps", "cuda", "torch_threads", "precision", "save_every", "eval_episodes",
                     "capture_video", "runs_dir")  # fmt: skip
NATURE_CNN_LATENT = 64 * 7 * 7  # flattened Nature-CNN output at 84x84


# ---- networks. layer_init, RelativeProjection, Encoder and Policy are ppo_relative.py's, with the same module and
# ---- buffer names so that its checkpoints load as teachers (docs/checkpoints.md); anchors come from a checkpoint.
def layer_init(layer, std=2**0.5, bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class RelativeProjection(nn.Module):
    """Relative representation (Moschella et al., "Relative representations enable zero-shot latent space
    communication", arXiv 2209.15430): cosine similarity between the latent and every anchor embedding, both centred
    on the anchors' mean. The anchor side is computed once, when the state dict is loaded."""

    def __init__(self, num_anchors: int, latent_dim: int, standardize: bool = False):
        super().__init__()
        self.standardize = standardize
        self.register_buffer("anchor_embeddings", torch.zeros(num_anchors, latent_dim))
        self.register_buffer("anchors_initialized", torch.tensor(False))
        # derived from anchor_embeddings, never saved (a checkpoint holds only the embeddings)
        self.register_buffer("anchor_center", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("anchor_scale", torch.ones(latent_dim), persistent=False)
        self.register_buffer("normalized_anchors_t", torch.zeros(latent_dim, num_anchors), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, incompatible_keys: module.refresh_anchor_side())

    @torch.no_grad()
    def refresh_anchor_side(self) -> None:
        """Recompute mu, the std and normalize(E(A) - mu), transposed (divided by the std too with `standardize`)."""
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
    """Observation -> latent: the Nature CNN on every RGB frame of the stack, optionally projected on anchors."""

    def __init__(self, frame_stack=1, relative=True, num_anchors=3136, standardize=False):
        super().__init__()
        self.frame_stack = frame_stack
        self.cnn = nn.Sequential(
            layer_init(nn.Conv2d(3, 32, 8, stride=4)), nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.Flatten(),
        )  # fmt: skip
        self.projection = RelativeProjection(num_anchors, NATURE_CNN_LATENT, standardize) if relative else None
        self.latent_dim = frame_stack * (num_anchors if relative else NATURE_CNN_LATENT)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        batch = obs.shape[0]
        latent = self.cnn(obs.reshape(batch * self.frame_stack, 3, *obs.shape[-2:]).float() / 255.0)
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
        hidden = self.trunk(latent)
        return self.actor(hidden), self.critic(hidden).squeeze(-1)


class MLPPolicy(nn.Module):
    """Gridworld actor-critic: separate tanh MLPs for the actor and the critic (CleanRL's ppo.py)."""

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int):
        super().__init__()

        def mlp(out_size, out_std):
            return nn.Sequential(
                layer_init(nn.Linear(obs_dim, hidden_size)), nn.Tanh(),
                layer_init(nn.Linear(hidden_size, hidden_size)), nn.Tanh(),
                layer_init(nn.Linear(hidden_size, out_size), std=out_std),
            )  # fmt: skip

        self.actor, self.critic = mlp(num_actions, 0.01), mlp(1, 1.0)

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(latent), self.critic(latent).squeeze(-1)


class Agent(nn.Module):
    """encoder -> policy (the encoder is the identity on the gridworld). With `bf16` the forward pass runs under
    torch.autocast; the logits and values it returns are fp32 either way, so every loss is computed in fp32."""

    def __init__(self, encoder: nn.Module, policy: nn.Module):
        super().__init__()
        self.encoder, self.policy = encoder, policy
        self.bf16 = False

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits, value = self.policy(self.encoder(obs))
        return logits.float(), value.float()


def build_agent(metadata: dict) -> Agent:
    """Networks from a checkpoint's metadata (docs/checkpoints.md for carracing)."""
    if "observation_shape" in metadata:  # gridworld
        obs_dim = metadata["observation_shape"][0]
        return Agent(nn.Identity(), MLPPolicy(obs_dim, metadata["num_actions"], metadata["hidden_size"]))
    encoder = Encoder(metadata["frame_stack"], metadata["relative"], metadata["num_anchors"] or NATURE_CNN_LATENT,
                      metadata["anchor_standardize"])  # fmt: skip
    return Agent(encoder, Policy(encoder.latent_dim, metadata["num_actions"]))


# ---- the pieces of REPAINT (pure functions, tested on hand-computed batches)
def beta_at(iteration: int, beta: float, schedule: str, decay: float, decay_iterations: int) -> float:
    """Kickstarting weight beta_k of iteration k = 1, 2, ... (eq. 1); it decays so that the student stops imitating
    the teacher and follows its own reward."""
    if schedule == "exponential":
        return beta * decay ** (iteration - 1)
    if schedule == "linear":
        return beta * max(0.0, 1.0 - (iteration - 1) / decay_iterations)
    return beta


def compute_gae(rewards, values, next_value, terminations, dones, valid, gamma, gae_lambda):
    """GAE on a (T, N) rollout under gymnasium 1.x next-step autoreset. After a step that ends an episode (dones[t])
    the env returns the final observation and resets on the next step, whose entry is not a transition (valid[t+1]
    False). So values[t+1] is V(final observation): a truncated episode bootstraps from it, a terminated one does not,
    and the recursion stops at every episode end. Returns (advantages, returns), zero on invalid entries."""
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * (1.0 - terminations[t]) - values[t]
        last_gae = (delta + gamma * gae_lambda * (1.0 - dones[t]) * last_gae) * valid[t]
        advantages[t] = last_gae
    return advantages, (advantages + values) * valid


def select_teacher_samples(advantages: torch.Tensor, valid: torch.Tensor, zeta: float) -> torch.Tensor:
    """Advantage-based experience selection (Algorithm 1): keep a teacher transition iff its advantage, computed with
    the student's critic and the target reward, is >= zeta (reset steps are never kept)."""
    return valid.bool() & (advantages >= zeta)


def teacher_advantage_scale(teacher_advantages, teacher_valid, student_advantages, rule: str) -> torch.Tensor:
    """The divisor of the kept teacher advantages in L_ins. `teacher`: the std of the teacher batch's (valid)
    advantages, so L_ins weighs a kept sample by how good it is among the teacher's own samples whatever the scale of
    the student's batch (early on every student episode times out, the student's std is tiny, and dividing by it
    blows the teacher's advantages up). `student`: the std of the student batch's advantages. Never centred: centring
    would turn kept (A >= zeta) samples into negative ones and undo the selection."""
    pool = teacher_advantages[teacher_valid.bool()] if rule == "teacher" else student_advantages
    return pool.std() + 1e-8 if pool.numel() > 1 else torch.ones((), device=pool.device)


def clipped_surrogate_loss(logprob, behaviour_logprob, advantages, clip_coef):
    """Negative clipped surrogate, -E[min(r A, clip(r, 1-eps, 1+eps) A)], r = pi_theta(a|s) / pi_b(a|s).
    pi_b = pi_theta_old on student samples gives -L_clip; pi_b = pi_teacher on kept teacher samples gives -L_ins."""
    ratio = (logprob - behaviour_logprob).exp()
    return torch.max(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)).mean()


def kickstarting_cross_entropy(teacher_logits, student_logits):
    """L_aux of eq. 1: H(pi_teacher, pi_theta) = -sum_a pi_teacher(a|s) log pi_theta(a|s), mean over s."""
    return -(F.softmax(teacher_logits, dim=-1) * F.log_softmax(student_logits, dim=-1)).sum(dim=-1).mean()


# ---- environments, checkpoints, batched forward passes
def make_envs(args: Args, num_envs: int) -> gym.vector.VectorEnv:
    """`num_envs` copies of the target task; episode statistics from RecordEpisodeStatistics infos."""

    def thunk():
        if args.env == "gridworld":
            return transfer_gridworld.TransferGridworld(args.task)
        return car_racing.make_color_car_racing(args.bg_color, args.task, args.frame_stack, reward=args.reward, view=args.view)

    return gym.wrappers.vector.RecordEpisodeStatistics(gym.vector.SyncVectorEnv([thunk] * num_envs))


def read_checkpoint(path: str, flag: str) -> dict:
    """A gridworld or CarRacing checkpoint of this collection (agent.pt or its folder); one-line ValueError otherwise."""
    accepted = "accepted: a runs/{run_name}/agent.pt written by repaint_ppo.py (or, on carracing, ppo_relative.py)"
    path = os.path.join(path, AGENT_FILE) if os.path.isdir(path) else path
    checkpoint = load_torch_file(path, f"{flag}: {accepted}")
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if found == AGENT_FORMAT:
        return load_agent_checkpoint(path)
    metadata = checkpoint.get("metadata") if found == GRIDWORLD_FORMAT else None
    if not isinstance(metadata, dict) or not isinstance(checkpoint.get("policy"), dict):
        what = f"has format {found!r}" if isinstance(found, str) else "is not a checkpoint of this collection"
        raise ValueError(f"{flag} {path!r} {what} (expected {AGENT_FORMAT!r} or {GRIDWORLD_FORMAT!r}); {accepted}")
    return checkpoint


@torch.no_grad()
def batched(fn, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    return torch.cat([fn(part) for part in x.split(chunk)])


def advantages_of(agent: Agent, batch: dict, args: Args):
    """GAE advantages, returns and values of a rollout (T, N) under the student's current critic."""
    values = batched(lambda o: agent(o)[1], batch["obs"].flatten(0, 1)).reshape(batch["rewards"].shape)
    next_value = batched(lambda o: agent(o)[1], batch["next_obs"])
    advantages, returns = compute_gae(batch["rewards"], values, next_value, batch["terminations"], batch["dones"],
                                      batch["valid"], args.gamma, args.gae_lambda)  # fmt: skip
    return advantages, returns, values


if __name__ == "__main__":
    args = tyro.cli(Args)
    try:
        checkpoint = None
        if args.resume is not None:
            checkpoint = read_checkpoint(args.resume, "--resume")
            if checkpoint["metadata"].get("algorithm") != "repaint" or "optimizer" not in checkpoint["training_state"]:
                raise ValueError(f"--resume {args.resume!r} holds a {checkpoint['metadata'].get('algorithm')!r} run without "
                                 "REPAINT's training state; accepted: a checkpoint written by repaint_ppo.py")  # fmt: skip
            # nanoGPT-style resume: the checkpoint's flags, except the RESUME_FREE_FLAGS given on the command line
            args = resume_args(args, checkpoint["metadata"]["args"], RESUME_FREE_FLAGS)
        # validation: a one-line ValueError naming the first bad flag; the defaults that depend on --env
        for name, accepted in CHOICES.items():
            if getattr(args, name) not in accepted:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"unknown {flag} {getattr(args, name)!r}; accepted: {', '.join(accepted)}")
        if args.env == "gridworld":
            args.task = args.task or "target"
            if args.task not in transfer_gridworld.TASKS:
                tasks = ", ".join(transfer_gridworld.TASKS)
                raise ValueError(f"unknown --task {args.task!r} for --env gridworld; accepted: {tasks}")
            if args.reward != "standard" or args.view != "near":
                raise ValueError("--reward and --view apply to --env carracing only; accepted on gridworld: their defaults")
        else:
            args.view, args.task = car_racing.resolve_view_task(args.view, args.task or "standard")  # task 'far': alias
            try:
                car_racing.parse_bg_color(args.bg_color)
            except ValueError as e:
                raise ValueError(f"bad --bg-color: {e}") from None
        if args.capture_video and (args.env != "carracing" or args.eval_episodes < 1):
            raise ValueError(
                f"--capture-video with --env {args.env} and --eval-episodes {args.eval_episodes}; accepted: "
                "--env carracing and --eval-episodes >= 1 (videos are taken during the final evaluation)"
            )
        if (args.transfer == "none") == bool(args.teacher):
            raise ValueError(f"--transfer {args.transfer} with --teacher {args.teacher!r}; accepted: a --teacher PATH with "
                             "ks, it, repaint or warm_start, and no teacher with none")  # fmt: skip
        if args.learning_rate is None:
            args.learning_rate = 1e-3 if args.env == "gridworld" else 2.5e-4
        batch_size, teacher_num_steps = args.num_envs * args.num_steps, args.teacher_num_steps or args.num_steps
        for names, ok, accepted in (
            (("num_envs", "num_steps", "num_minibatches", "update_epochs", "torch_threads", "hidden_size", "frame_stack",
              "beta_decay_iterations", "teacher_num_steps"), lambda v: v is None or v >= 1, "an integer >= 1"),
            (("beta", "alpha_ins", "learning_rate", "clip_coef", "save_every", "eval_episodes"), lambda v: v >= 0,
             "a number >= 0"),
            (("beta_decay",), lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
            (("total_timesteps",), lambda v: v >= batch_size,
             f"at least --num-envs * --num-steps = {batch_size} (one iteration)"),
        ):  # fmt: skip
            bad = [name for name in names if not ok(getattr(args, name))]
            if bad:
                raise ValueError(f"bad --{bad[0].replace('_', '-')} {getattr(args, bad[0])!r}; accepted: {accepted}")
        num_iterations = args.total_timesteps // batch_size
        start_iteration = 1 if checkpoint is None else checkpoint["training_state"]["iteration"] + 1
        if start_iteration > num_iterations:
            raise ValueError(f"--resume {args.resume!r} is already at step {checkpoint['metadata']['global_step']}; "
                             f"accepted: --total-timesteps >= {start_iteration * batch_size} to continue it (one more "
                             f"iteration of --num-envs * --num-steps = {batch_size} steps)")  # fmt: skip
        if checkpoint is None:
            env_name = f"{args.env}-{args.task}" + (f"-{args.view}-{args.reward}" if args.env == "carracing" else "")
            run_name = f"{env_name}__{args.exp_name}__{args.transfer}__{args.seed}__{int(time.time())}"
            run_dir = os.path.join(args.runs_dir, run_name)
            ensure_writable_dir(args.runs_dir, "--runs-dir")
        else:  # continue logging next to the checkpoint
            run_dir = os.path.abspath(args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume))
            ensure_writable_dir(run_dir, "--resume folder")
        device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
        args.precision = resolve_precision(args.precision, device)
        envs = make_envs(args, args.num_envs)
        num_actions, obs_shape = int(envs.single_action_space.n), tuple(envs.single_observation_space.shape)

        # the frozen teacher, built before the seeding below: the student's initial weights and draws do not depend
        # on it. A teacher that cannot serve this target task (observations, meaning of the actions) is refused.
        teacher = teacher_metadata = None
        if args.teacher:
            teacher_checkpoint = read_checkpoint(args.teacher, "--teacher")
            teacher_metadata = teacher_checkpoint["metadata"]
            teacher_env = "gridworld" if "observation_shape" in teacher_metadata else "carracing"
            frames = (3 * teacher_metadata.get("frame_stack", 0), car_racing.OBS_SIZE, car_racing.OBS_SIZE)
            teacher_obs = tuple(teacher_metadata["observation_shape"]) if teacher_env == "gridworld" else frames
            if teacher_obs != obs_shape:
                raise ValueError(
                    f"--teacher {args.teacher!r} observes shape {teacher_obs} ({teacher_env}) but the target task "
                    f"observes {obs_shape} ({args.env}); accepted: a teacher with the target's observation space"
                )
            if teacher_env == "carracing" and teacher_metadata["task"] not in car_racing.TASKS:
                raise ValueError(f"--teacher {args.teacher!r} was trained on CarRacing task {teacher_metadata['task']!r}; "
                                 f"accepted: one of {', '.join(car_racing.TASKS)}")  # fmt: skip
            meaning = {
                "gridworld": lambda task, n: ("gridworld moves", tuple(range(n))),
                "carracing": lambda task, n: (f"CarRacing task {task!r}", tuple(car_racing.TASKS[task]["actions"])),
            }
            teacher_actions = meaning[teacher_env](teacher_metadata["task"], teacher_metadata["num_actions"])
            target_actions = meaning[args.env](args.task, num_actions)
            if teacher_actions != target_actions:
                raise ValueError(
                    f"--teacher {args.teacher!r} acts with {teacher_actions[0]} {teacher_actions[1]} but the target "
                    f"task acts with {target_actions[0]} {target_actions[1]}; accepted: a teacher with its action space"
                )
            teacher = build_agent(teacher_metadata)
            try:
                teacher.encoder.load_state_dict(teacher_checkpoint["encoder"])
                teacher.policy.load_state_dict(teacher_checkpoint["policy"])
            except (RuntimeError, KeyError) as e:
                raise ValueError(
                    f"--teacher {args.teacher!r} does not match the networks its metadata describes "
                    f"({str(e).strip().splitlines()[0]}); accepted: an unmodified checkpoint"
                ) from None
            teacher = teacher.to(device).eval().requires_grad_(False)
    except ValueError as e:
        fail(str(e))

    # TRY NOT TO MODIFY: seeding. The teacher samples with its own generator and permutes its minibatches with it,
    # so the student's initial weights and random draws are the same in every --transfer mode for one seed.
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    teacher_generator = torch.Generator(device).manual_seed(args.seed + 1)
    uses_ks, uses_it = args.transfer in ("ks", "repaint"), args.transfer in ("it", "repaint")

    # the checkpoint's metadata, which also describes the student's networks: its encoder is absolute, except with
    # warm_start, where the student takes the teacher's architecture (a relative teacher's anchors then stay frozen)
    metadata = dict(algorithm="repaint", task=args.task, num_actions=num_actions, seed=args.seed, global_step=0,
                    args=asdict(args))  # fmt: skip
    warm = teacher_metadata if args.transfer == "warm_start" else None
    if args.env == "gridworld":
        hidden_size = warm["hidden_size"] if warm else args.hidden_size
        metadata.update(env="gridworld", observation_shape=list(obs_shape), hidden_size=hidden_size)
    else:
        keys = ("relative", "num_anchors", "anchor_set_id", "anchor_standardize")
        metadata.update({k: warm[k] for k in keys} if warm else dict(zip(keys, (False, None, None, False))))
        frame_latent = metadata["num_anchors"] if metadata["relative"] else NATURE_CNN_LATENT
        metadata.update(bg_color=args.bg_color, view=args.view, reward=args.reward, frame_stack=args.frame_stack,
                        latent_dim=args.frame_stack * frame_latent)  # fmt: skip
    agent = build_agent(metadata).to(device)
    if args.transfer == "warm_start":  # the paper's extra baseline: start from the teacher's weights
        agent.load_state_dict(teacher.state_dict())
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    agent.bf16 = args.precision == "bf16"
    if teacher is not None:
        teacher.bf16 = agent.bf16
    global_step = teacher_steps = 0
    if checkpoint is not None:
        state = checkpoint["training_state"]
        try:
            agent.encoder.load_state_dict(checkpoint["encoder"])
            agent.policy.load_state_dict(checkpoint["policy"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng_state"])
            teacher_generator.set_state(state["teacher_rng_state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            fail(f"--resume {args.resume!r} does not match its metadata ({str(e).strip().splitlines()[0]}); "
                 "accepted: an unmodified repaint_ppo.py checkpoint")  # fmt: skip
        global_step, teacher_steps = checkpoint["metadata"]["global_step"], state["teacher_steps"]
    # a resumed run drops the TensorBoard events logged after its checkpoint, so the curves do not overlap
    writer = SummaryWriter(run_dir, purge_step=None if checkpoint is None else global_step + 1)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    checkpoint_path = os.path.join(run_dir, AGENT_FILE)

    def save_checkpoint(iteration: int, step: int) -> None:
        training_state = {
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "teacher_steps": teacher_steps,
            "torch_rng_state": torch.get_rng_state(),
            "teacher_rng_state": teacher_generator.get_state(),
        }
        payload = agent_payload(agent.encoder, agent.policy, dict(metadata, global_step=step), training_state)
        save_atomic(payload if args.env == "carracing" else dict(payload, format=GRIDWORLD_FORMAT), checkpoint_path)

    # TRY NOT TO MODIFY: start the game. A resumed run starts new episodes (the simulator's state is not saved), reset
    # with seeds that depend on the iteration: reproducible, not identical to the uninterrupted run.
    # ALGO LOGIC: storage of S and, for instance transfer, of S~ (the teacher acts in its own copies of the target
    # task, other reset seeds, its own generator): (T, N) tensors refilled every iteration
    env_seed = args.seed + (start_iteration - 1) * args.num_envs
    actors = [(agent, envs, args.num_steps, None, env_seed)]
    if uses_it:
        actors.append((teacher, make_envs(args, args.num_envs), teacher_num_steps, teacher_generator, env_seed + 1_000_000))
    rollouts = []
    for actor, actor_envs, num_steps, generator, reset_seed in actors:
        next_obs = torch.as_tensor(actor_envs.reset(seed=reset_seed)[0], device=device)
        rollouts.append(
            dict(
                actor=actor,
                envs=actor_envs,
                generator=generator,
                next_obs=next_obs,
                next_done=torch.zeros(args.num_envs, device=device),
                obs=torch.zeros((num_steps, *next_obs.shape), dtype=next_obs.dtype, device=device),
                actions=torch.zeros((num_steps, args.num_envs), dtype=torch.long, device=device),
                **{
                    k: torch.zeros((num_steps, args.num_envs), device=device)
                    for k in ("logprobs", "rewards", "terminations", "dones", "valid")
                },
            )
        )
    batch, teacher_batch = rollouts[0], rollouts[-1] if uses_it else None
    start_time, start_step, recent_returns = time.time(), global_step, deque(maxlen=20)
    progress = tqdm(total=num_iterations * batch_size, initial=global_step, unit="step", dynamic_ncols=True, mininterval=2.0)
    completed_iteration = start_iteration - 1
    with GracefulStop() as stop:
        for iteration in range(start_iteration, num_iterations + 1):
            if args.anneal_lr:
                optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - (iteration - 1.0) / num_iterations)
            beta_k = beta_at(iteration, args.beta, args.beta_schedule, args.beta_decay, args.beta_decay_iterations)

            # ALGO LOGIC 1. S with pi_theta_old, S~ with pi_teacher, both in the target task with the target reward
            for r in rollouts:
                r["episodes"] = []  # (return, length) of the episodes that end in this rollout
                for t in range(len(r["obs"])):
                    if stop.requested:
                        break
                    r["obs"][t] = r["next_obs"]
                    r["valid"][t] = 1.0 - r["next_done"]  # the step after an episode end only resets (next-step autoreset)
                    with torch.no_grad():
                        probs = F.softmax(r["actor"](r["next_obs"])[0], dim=-1)
                    action = torch.multinomial(probs, 1, True, generator=r["generator"]).squeeze(1)  # Categorical.sample
                    r["actions"][t], r["logprobs"][t] = action, probs.gather(1, action[:, None]).squeeze(1).log()
                    next_obs, reward, terminated, truncated, infos = r["envs"].step(action.cpu().numpy())
                    r["rewards"][t] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                    r["terminations"][t] = torch.as_tensor(terminated, dtype=torch.float32, device=device)
                    r["dones"][t] = torch.as_tensor(np.logical_or(terminated, truncated), dtype=torch.float32, device=device)
                    r["next_obs"], r["next_done"] = torch.as_tensor(next_obs, device=device), r["dones"][t]
                    for i in np.flatnonzero(infos.get("_episode", [])):
                        r["episodes"].append((float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])))
            if stop.requested:  # Ctrl-C / SIGTERM: drop the unfinished iteration, keep the last update
                break
            global_step += batch_size
            teacher_steps += args.num_envs * teacher_num_steps if uses_it else 0
            valid = batch["valid"].reshape(-1).bool()
            b_obs = batch["obs"].flatten(0, 1)[valid]
            b_actions, b_logprobs = batch["actions"].reshape(-1)[valid], batch["logprobs"].reshape(-1)[valid]

            # 2. fit the critic V on S only: regression on the lambda-returns under the critic that collected S
            _, returns, values_before = advantages_of(agent, batch, args)
            b_returns = returns.reshape(-1)[valid]
            for epoch in range(args.update_epochs):
                for mb in torch.randperm(len(b_obs), device=device).tensor_split(args.num_minibatches):
                    v_loss = 0.5 * ((agent(b_obs[mb])[1] - b_returns[mb]) ** 2).mean()
                    optimizer.zero_grad()
                    v_loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()

            # 3. advantages of S and S~ with the fitted student critic (target reward for both)
            b_advantages = advantages_of(agent, batch, args)[0].reshape(-1)[valid]
            if uses_ks:  # pi_teacher on the student's states, for the cross-entropy of eq. 1
                b_teacher_logits = batched(lambda o: teacher(o)[0], b_obs)
            if uses_it:
                # 4. experience selection: keep the teacher transitions with A >= zeta
                teacher_advantages = advantages_of(agent, teacher_batch, args)[0]
                kept = select_teacher_samples(teacher_advantages, teacher_batch["valid"], args.zeta).reshape(-1)
                t_obs = teacher_batch["obs"].flatten(0, 1)[kept]
                t_actions, t_logprobs = teacher_batch["actions"].reshape(-1)[kept], teacher_batch["logprobs"].reshape(-1)[kept]
                scale = teacher_advantage_scale(
                    teacher_advantages, teacher_batch["valid"], b_advantages, args.teacher_adv_norm
                )
                t_advantages = teacher_advantages.reshape(-1)[kept] / scale
                kept_fraction = kept.sum().item() / max(teacher_batch["valid"].sum().item(), 1.0)

            # 5-7. policy update: minimise -L_clip + beta_k * CE on S, plus alpha_ins * (-L_ins) on the kept S~
            # (eq. 1 and L_ins are objectives to maximise; the loss below is their negative)
            clipfracs, ce_losses, ins_losses = [], [], []
            for epoch in range(args.update_epochs):
                student_mbs = torch.randperm(len(b_obs), device=device).tensor_split(args.num_minibatches)
                teacher_mbs = (
                    torch.randperm(len(t_obs), device=device, generator=teacher_generator).tensor_split(args.num_minibatches)
                    if uses_it
                    else []
                )
                for i, mb in enumerate(student_mbs):
                    logits = agent(b_obs[mb])[0]
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

            # TRY NOT TO MODIFY: record rewards for plotting purposes
            y_pred, y_true = values_before.reshape(-1)[valid].cpu().numpy(), b_returns.cpu().numpy()
            explained_var = np.nan if np.var(y_true) == 0 else 1 - np.var(y_true - y_pred) / np.var(y_true)
            sps = int((global_step - start_step) / (time.time() - start_time))
            for episodic_return, episodic_length in batch["episodes"]:
                recent_returns.append(episodic_return)
                writer.add_scalar("charts/episodic_return", episodic_return, global_step)
                writer.add_scalar("charts/episodic_length", episodic_length, global_step)
            for episodic_return, _ in teacher_batch["episodes"] if uses_it else ():
                writer.add_scalar("charts/teacher_episodic_return", episodic_return, global_step)
            scalars = {
                "charts/learning_rate": optimizer.param_groups[0]["lr"],
                "charts/SPS": sps,
                "charts/iteration": iteration,
                "losses/value_loss": v_loss.item(),
                "losses/policy_loss": pg_loss.item(),
                "losses/entropy": entropy.item(),
                "losses/approx_kl": approx_kl.item(),
                "losses/clipfrac": np.mean(clipfracs),
                "losses/explained_variance": explained_var,
            }
            line = f"iteration {iteration}/{num_iterations} step {global_step}"
            if batch["episodes"]:
                line += f" return {np.mean([r for r, _ in batch['episodes']]):.3f}"
            if uses_ks:
                scalars.update({"transfer/beta_k": beta_k, "losses/kickstart_cross_entropy": np.mean(ce_losses)})
                line += f" beta_k {beta_k:.3f}"
            if uses_it:
                scalars.update(
                    {
                        "transfer/teacher_kept_fraction": kept_fraction,
                        "charts/teacher_steps": teacher_steps,
                        "transfer/teacher_adv_scale": scale.item(),
                    }
                )
                if ins_losses:
                    scalars["losses/instance_loss"] = np.mean(ins_losses)
                line += f" kept {kept_fraction:.2f}"
            for key, value in scalars.items():
                writer.add_scalar(key, value, global_step)
            tqdm.write(line + f" SPS {sps}")
            recent = f"{np.mean(recent_returns):.2f}" if recent_returns else "n/a"
            progress.set_postfix_str(f"SPS={sps} return(last {len(recent_returns)})={recent}", refresh=False)
            progress.update(batch_size)
            completed_iteration = iteration
            if args.save_every and global_step // args.save_every > (global_step - batch_size) // args.save_every:
                save_checkpoint(iteration, global_step)

    progress.close()
    envs.close()
    save_checkpoint(completed_iteration, global_step)
    if stop.requested:
        writer.close()
        stop.exit(f"checkpoint at {checkpoint_path} (global_step={global_step}); "
                  f"resume with: python repaint_ppo.py --resume {checkpoint_path}")  # fmt: skip
    print(f"checkpoint saved to {checkpoint_path} (global_step={global_step}, teacher_steps={teacher_steps})")

    if args.eval_episodes > 0:  # deterministic (argmax) evaluation, one episode per env, the same resets for every run
        eval_envs = make_envs(args, args.eval_episodes)
        obs, _ = eval_envs.reset(seed=EVAL_SEED)
        eval_returns = np.zeros(args.eval_episodes)
        running, finished = np.zeros(args.eval_episodes), np.zeros(args.eval_episodes, dtype=bool)
        frames = [[] for _ in range(args.eval_episodes)]
        with torch.no_grad():
            while not finished.all():
                for i in np.flatnonzero(~finished) if args.capture_video else ():
                    frames[i].append(obs[i, -3:].transpose(1, 2, 0))  # the newest RGB frame, (84, 84, 3)
                action = agent(torch.as_tensor(obs, device=device))[0].argmax(dim=-1)
                obs, reward, terminated, truncated, _ = eval_envs.step(action.cpu().numpy())
                running += np.where(finished, 0.0, reward)
                ended = ~finished & (terminated | truncated)
                eval_returns[ended], finished = running[ended], finished | ended
        eval_envs.close()
        video_dir = os.path.join("videos", os.path.basename(run_dir))
        for episode, episode_frames in enumerate(frames if args.capture_video else ()):
            os.makedirs(video_dir, exist_ok=True)
            crisp = np.stack(episode_frames).repeat(3, axis=1).repeat(3, axis=2)  # 3x nearest neighbour: crisp pixels
            iio.imwrite(os.path.join(video_dir, f"eval-episode-{episode}.gif"), crisp, duration=20, loop=0)
        for episode, episodic_return in enumerate(eval_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, episode)
        print(
            f"eval_return_mean={eval_returns.mean():.3f} eval_return_std={eval_returns.std():.3f} "
            f"({args.eval_episodes} deterministic episodes, resets {EVAL_SEED}..{EVAL_SEED + args.eval_episodes - 1})"
        )
    writer.close()
