# docs and experiment results can be found in docs/ppo_relative.md
"""PPO with relative (or absolute) representations on colour-variable CarRacing.

R3L: Ricciardi et al., "R3L: Relative Representations for Reinforcement Learning" (arXiv 2404.12917). The agent is an
encoder E (Nature CNN) and a policy (controller with actor and critic heads), kept as two modules because stitching
combines the encoder of one run with the policy of another. The relative representation of an observation x is its
cosine similarity to the embeddings of a fixed set of anchor frames A, centred on the anchors' mean mu:

    z = normalize(E(x) - mu) normalize(E(A) - mu)^T,   pi(a | x) = Policy(z)   (absolute baseline: Policy(E(x)))

PPO (Schulman et al., "Proximal Policy Optimization Algorithms", arXiv 1707.06347, eq. 7 and 9), with
r_t = pi(a_t | s_t) / pi_old(a_t | s_t), minimises

    -E_t[ min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ] + c_1 L^VF_t - c_2 H[pi(. | s_t)],   L^VF_t = 1/2 (V(s_t) - R_t)^2

(--clip-vloss clips the value change like the ratio), with returns R_t = A_t + V_old(s_t) and advantages from GAE
(Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage Estimation", arXiv 1506.02438,
eq. 16): A_t = sum_l (gamma lambda)^l delta_{t+l},  delta_t = r_t + gamma V(s_{t+1}) - V(s_t).

    python ppo_relative.py --bg-color green                  # relative: pi( cos(E(x), E(A)) )   (eq. 3-4)
    python ppo_relative.py --bg-color green --no-relative    # absolute baseline: pi( E(x) )
    python ppo_relative.py --resume runs/<run_name>/agent.pt # continue a run from its checkpoint

Every run writes `runs/{run_name}/agent.pt` (the checkpoint contract, docs/checkpoints.md) and TensorBoard logs.
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
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from envs.anchors import AnchorRecipe, load_anchor_set  # importing the envs package registers ColorCarRacing-v0
from envs.car_racing import NAMED_COLORS, TASKS, VIEWS, make_color_car_racing, parse_bg_color, resolve_view_task
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
    """CPU threads torch uses: 1 suits machines where several runs share the cores (the R3L grid runs one per core);
    on an idle 2-core machine 2 threads gave 1.35x SPS (docs, Precision)"""
    precision: str = "auto"
    """forward passes in bf16 (torch.autocast; weights, optimiser, losses and checkpoints stay fp32) or fp32;
    auto: bf16 where the device computes it natively (CUDA with bf16, CPUs with AMX or AVX512-BF16), else fp32"""
    capture_video: bool = False
    """if toggled, save GIFs of the agent's view during the final evaluation episodes to `videos/{run_name}/`"""
    runs_dir: str = "runs"
    """directory that receives `{run_name}/` (TensorBoard logs and the checkpoint `agent.pt`)"""
    save_every: int = 20_000
    """write the checkpoint at the end of the first PPO iteration past every multiple of this many env steps (0: only at
    the end)"""
    resume: Optional[str] = None
    """continue the run stored in this checkpoint (`runs/{run_name}/agent.pt` or its directory)"""
    eval_episodes: int = 10
    """number of deterministic (argmax) evaluation episodes at the end (0 disables the evaluation)"""

    # Environment arguments
    bg_color: str = "green"
    """background colour: green, red, blue, yellow, violet, pink or a hex colour '#rrggbb'"""
    view: str = "near"
    """camera: near (gymnasium's zoom 2.7) or far (zoom 1); part of what the encoder sees, like the colour"""
    task: str = "standard"
    """task variant: standard, slow, scrambled or no_idle (reward rule, actions, episode length); 'far' = --view far"""
    frame_stack: int = 1
    """RGB frames per observation (1: the seed paper's single frame; 4 reproduces R3L)"""

    # Representation arguments
    relative: bool = True
    """relative representation (cosine to the anchors); --no-relative is the absolute baseline"""
    num_anchors: int = 3136
    """number of anchor frames = size of the relative representation per frame (3136 = 64*7*7, as in R3L)"""
    anchor_ema: float = 0.999
    """EMA coefficient of the anchor embeddings per gradient step (the authors' rate; see docs)"""
    anchor_standardize: bool = False
    """also divide every latent dimension by the anchors' std (authors' code); breaks rotation invariance"""
    anchor_steps_per_track: int = 1000
    """steps the scripted driver records on each of the anchor recipe's 4 tracks (anchor pool size)"""

    # Algorithm specific arguments
    total_timesteps: int = 5_000_000
    """total environment steps of the experiment (R3L: 5M)"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer"""
    num_envs: int = 16
    """the number of parallel game environments"""
    num_steps: int = 128
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """toggle learning rate annealing (linear to 0 over the run)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float = 0.1
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """toggles whether or not to use a clipped loss for the value function, as per the paper"""
    ent_coef: float = 0.01
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: Optional[float] = None
    """the target KL divergence threshold (None: no early stopping)"""


# ---------------------------------------------------------------------------------------------------------
# Networks: encoder (Nature CNN + relative projection) and policy (controller), stitched separately
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


class Policy(nn.Module):
    """Controller on top of the encoder: LayerNorm -> ReLU -> Linear(512) -> ReLU -> actor and critic heads
    (the authors' controller; the same for relative and absolute latents)."""

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
        """The deterministic (argmax) action, used for evaluation and stitching."""
        return self.forward(latent)[0].argmax(dim=-1)


def compute_gae(rewards, values, next_value, terminations, dones, gamma: float, gae_lambda: float) -> torch.Tensor:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) over a (num_steps, num_envs) rollout of
    gymnasium 1.x vector envs, which reset an env on the step *after* its episode ended.

    `terminations[t]` / `dones[t]`: the episode ended at step t by termination / by termination or truncation;
    step t + 1 is then the env's reset step, whose advantage is meaningless (it is dropped from the batch).
    V(s_{t+1}) is the value of the observation step t returned: after a truncation that is the episode's true
    final observation, so truncated episodes bootstrap and terminated ones do not."""
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(next_value)
    for t in reversed(range(len(rewards))):
        next_values = next_value if t == len(rewards) - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_values * (1.0 - terminations[t]) - values[t]
        # the lambda-sum stops at the end of an episode: nothing after it belongs to the episode
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * (1.0 - dones[t]) * lastgaelam
    return advantages


if __name__ == "__main__":
    args = tyro.cli(Args)
    # Ctrl-C / SIGTERM from here on: the loop finishes its step, the last update is saved, one line, exit 130 / 143
    stop = GracefulStop().install()
    try:
        checkpoint = None
        if args.resume is not None:
            checkpoint = load_agent_checkpoint(args.resume)
            algorithm = checkpoint["metadata"]["algorithm"]
            missing = [k for k in ("optimizer", "iteration", "torch_rng_state") if k not in checkpoint["training_state"]]
            if algorithm != "ppo" or missing:
                found = f"a {algorithm!r} run" if algorithm != "ppo" else f"no training_state {', '.join(missing)}"
                raise ValueError(f"--resume {args.resume!r} holds {found}; accepted: a checkpoint written by ppo_relative.py")
            # nanoGPT-style resume: the checkpoint's flags, except these run flags when given on the command line
            run_flags = ("total_timesteps", "cuda", "torch_threads", "precision", "save_every", "eval_episodes",
                         "capture_video", "runs_dir")  # fmt: skip
            args = resume_args(args, checkpoint["metadata"]["args"], run_flags)
        if args.task == "far":  # the alias of the far view of the standard task
            args.view, args.task = resolve_view_task(args.view, args.task)
        try:
            parse_bg_color(args.bg_color)
        except ValueError:
            raise ValueError(
                f"unknown --bg-color {args.bg_color!r}; accepted: {', '.join(NAMED_COLORS)} or a hex colour '#rrggbb'"
            ) from None
        anchor_pool = len(AnchorRecipe().track_seeds) * args.anchor_steps_per_track
        for unknown, flag, accepted in [
            (args.precision not in ("auto", "bf16", "fp32"), "--precision", "auto, bf16, fp32"),
            (args.view not in VIEWS, "--view", ", ".join(VIEWS)),
            (args.task not in TASKS, "--task", f"{', '.join(TASKS)} ('far' is --view far)"),
        ]:
            if unknown:
                raise ValueError(f"unknown {flag} {getattr(args, flag[2:])!r}; accepted: {accepted}")
        for ok, flag, value, accepted in [
            (args.frame_stack >= 1, "--frame-stack", args.frame_stack, "an integer >= 1"),
            (1 <= args.num_anchors <= anchor_pool, "--num-anchors", args.num_anchors,
             f"an integer in [1, {anchor_pool}] (the anchor pool: 4 tracks * --anchor-steps-per-track)"),
            (0.0 <= args.anchor_ema < 1.0, "--anchor-ema", args.anchor_ema, "a float in [0, 1)"),
            (args.anchor_steps_per_track >= 1, "--anchor-steps-per-track", args.anchor_steps_per_track, "an integer >= 1"),
            (args.num_envs >= 1, "--num-envs", args.num_envs, "an integer >= 1"),
            (args.num_steps >= 1, "--num-steps", args.num_steps, "an integer >= 1"),
            (args.num_minibatches >= 1, "--num-minibatches", args.num_minibatches, "an integer >= 1"),
            (args.update_epochs >= 1, "--update-epochs", args.update_epochs, "an integer >= 1"),
            (args.total_timesteps >= args.num_envs * args.num_steps, "--total-timesteps", args.total_timesteps,
             f"an integer >= --num-envs * --num-steps = {args.num_envs * args.num_steps} (one PPO iteration)"),
            (args.learning_rate > 0, "--learning-rate", args.learning_rate, "a float > 0"),
            (0.0 <= args.gamma <= 1.0, "--gamma", args.gamma, "a float in [0, 1]"),
            (0.0 <= args.gae_lambda <= 1.0, "--gae-lambda", args.gae_lambda, "a float in [0, 1]"),
            (args.clip_coef > 0, "--clip-coef", args.clip_coef, "a float > 0"),
            (args.max_grad_norm > 0, "--max-grad-norm", args.max_grad_norm, "a float > 0"),
            (args.target_kl is None or args.target_kl > 0, "--target-kl", args.target_kl, "a float > 0 or None"),
            (args.save_every >= 0, "--save-every", args.save_every, "an integer >= 0 (0: only at the end)"),
            (args.eval_episodes >= 0, "--eval-episodes", args.eval_episodes, "an integer >= 0"),
            (args.torch_threads >= 1, "--torch-threads", args.torch_threads, "an integer >= 1"),
            (not args.capture_video or args.eval_episodes >= 1, "--capture-video with --eval-episodes", args.eval_episodes,
             "--eval-episodes >= 1 (videos are taken during the final evaluation)"),
        ]:  # fmt: skip
            if not ok:
                raise ValueError(f"bad {flag} {value!r}; accepted: {accepted}")
        batch_size = args.num_envs * args.num_steps
        num_iterations = args.total_timesteps // batch_size
        start_iteration = 1 if checkpoint is None else checkpoint["training_state"]["iteration"] + 1
        if start_iteration > num_iterations:
            raise ValueError(
                f"--resume {args.resume!r} is already at step {checkpoint['metadata']['global_step']}; "
                f"accepted: --total-timesteps >= {start_iteration * batch_size} to continue it (one more iteration of "
                f"--num-envs * --num-steps = {batch_size} steps)"
            )
        # anchor frames of the run's own colour and view (R3L §3.1): the same states for every colour
        anchor_set = None
        if args.relative:
            recipe = AnchorRecipe(steps_per_track=args.anchor_steps_per_track, num_anchors=args.num_anchors)
            anchor_set = load_anchor_set(args.bg_color, view=args.view, recipe=recipe)
            print(f"anchor set {anchor_set.set_id} ({args.bg_color}, {args.view} view): {anchor_set.source}")
            if checkpoint is not None and checkpoint["metadata"]["anchor_set_id"] != anchor_set.set_id:
                raise ValueError(
                    f"--resume {args.resume!r} used anchor set {checkpoint['metadata']['anchor_set_id']!r}, this "
                    f"installation builds {anchor_set.set_id!r}; accepted: a checkpoint of the current anchor recipe"
                )
        if checkpoint is None:
            ensure_writable_dir(args.runs_dir, "--runs-dir")
    except ValueError as e:
        fail(str(e))

    # TRY NOT TO MODIFY: seeding
    torch.set_num_threads(args.torch_threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    args.precision = resolve_precision(args.precision, device)  # auto: bf16 where the device has bf16 units, else fp32
    # mixed precision: forward passes under bf16 autocast; weights, optimiser state, losses, returns and
    # advantages stay fp32 (network outputs are cast back with .float() before any loss arithmetic)
    amp = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    if checkpoint is None:
        color_name = args.bg_color.lstrip("#").lower()
        view_name = "" if args.view == "near" else f"-{args.view}"
        run_name = f"ColorCarRacing-{color_name}{view_name}-{args.task}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir = os.path.join(args.runs_dir, run_name)
    else:  # continue logging next to the checkpoint
        run_dir = os.path.abspath(args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume))
        run_name = os.path.basename(run_dir)
    # a resumed run drops the TensorBoard events logged after its checkpoint, so the curves do not overlap
    writer = SummaryWriter(run_dir, purge_step=None if checkpoint is None else checkpoint["metadata"]["global_step"] + 1)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    # env setup: gymnasium 1.x vector env, autoreset on the NEXT step (see the rollout below)
    envs = gym.vector.SyncVectorEnv(
        [
            lambda: make_color_car_racing(args.bg_color, args.task, args.frame_stack, view=args.view)
            for _ in range(args.num_envs)
        ]
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    assert isinstance(envs.single_action_space, gym.spaces.Discrete), "only discrete action space is supported"
    num_actions = int(envs.single_action_space.n)

    # ALGO LOGIC: initialize agent here
    # The anchor embeddings move once per PPO iteration, after the optimisation epochs: within an iteration
    # the projection is a fixed function, so the log-probs stored during the rollout and those recomputed in
    # the update see the same anchors (PPO's ratio measures only the change of the networks), and the anchor
    # forward pass (num_anchors frames through the CNN) is paid once per iteration. The authors' code moves
    # the anchors after every gradient step with coefficient a; one step with a^K, K = gradient steps per
    # iteration, keeps that time scale (1 / (1 - a) gradient steps; ~62 iterations at the defaults).
    updates_per_iteration = args.update_epochs * args.num_minibatches
    encoder = Encoder(
        args.frame_stack, args.relative, args.num_anchors, args.anchor_ema**updates_per_iteration, args.anchor_standardize
    ).to(device)
    policy = Policy(encoder.latent_dim, num_actions).to(device)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(policy.parameters()), lr=args.learning_rate, eps=1e-5)
    anchor_frames = torch.from_numpy(anchor_set.frames).to(device) if anchor_set is not None else None

    global_step = 0 if checkpoint is None else checkpoint["metadata"]["global_step"]
    if checkpoint is None:
        with amp():
            encoder.update_anchors(anchor_frames)  # initialise E(A) with the untrained encoder's embeddings
    else:
        try:
            encoder.load_state_dict(checkpoint["encoder"])
            policy.load_state_dict(checkpoint["policy"])
            optimizer.load_state_dict(checkpoint["training_state"]["optimizer"])
            torch.set_rng_state(checkpoint["training_state"]["torch_rng_state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            fail(
                f"--resume {args.resume!r} does not match its metadata ({str(e).strip().splitlines()[0]}); "
                "accepted: an unmodified ppo_relative.py checkpoint"
            )
        print(f"resumed {run_name} at global_step={global_step} (iteration {start_iteration - 1})")

    def write_checkpoint(iteration: int, step: int) -> None:
        """The r3l-agent-v1 contract (docs/checkpoints.md): fp32 CPU tensors whatever the precision, written atomically."""
        metadata = {
            "algorithm": "ppo", "bg_color": args.bg_color, "view": args.view, "task": args.task, "reward": "standard",
            "frame_stack": args.frame_stack, "num_actions": num_actions, "relative": args.relative,
            "anchor_set_id": anchor_set.set_id if anchor_set is not None else None,
            "num_anchors": args.num_anchors if args.relative else None,
            "anchor_standardize": args.relative and args.anchor_standardize, "latent_dim": encoder.latent_dim,
            "seed": args.seed, "global_step": step, "args": asdict(args),
        }  # fmt: skip
        training_state = {
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "torch_rng_state": torch.get_rng_state(),
        }
        save_atomic(agent_payload(encoder, policy, metadata, training_state), os.path.join(run_dir, AGENT_FILE))

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=torch.uint8, device=device)
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long, device=device)
    logprobs = torch.zeros((args.num_steps, args.num_envs), device=device)
    rewards = torch.zeros((args.num_steps, args.num_envs), device=device)
    terminations = torch.zeros((args.num_steps, args.num_envs), device=device)
    dones = torch.zeros((args.num_steps, args.num_envs), device=device)
    reset_steps = torch.zeros((args.num_steps, args.num_envs), dtype=torch.bool, device=device)
    values = torch.zeros((args.num_steps, args.num_envs), device=device)

    # TRY NOT TO MODIFY: start the game
    start_time, start_step = time.time(), global_step
    # the simulator's state is not in the checkpoint: a resumed run starts new episodes on tracks seeded from
    # (seed, iteration), so it is reproducible but not identical to an uninterrupted run
    next_obs, _ = envs.reset(seed=args.seed if checkpoint is None else args.seed + start_iteration * args.num_envs)
    next_obs = torch.as_tensor(next_obs, device=device)
    next_is_reset = torch.zeros(args.num_envs, dtype=torch.bool, device=device)
    recent_returns = deque(maxlen=20)
    progress = tqdm(total=num_iterations * batch_size, initial=global_step, unit="step", dynamic_ncols=True, mininterval=2.0,
                    smoothing=0.05)  # fmt: skip

    completed_iteration, completed_step = start_iteration - 1, global_step
    for iteration in range(start_iteration, num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / num_iterations
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate

        for step in range(0, args.num_steps):
            if stop.requested:  # Ctrl-C / SIGTERM: drop the unfinished rollout, keep the last update
                break
            global_step += args.num_envs
            obs[step] = next_obs
            # Gymnasium 1.x autoreset (NEXT_STEP): the step after an episode ends only resets that env. Its
            # "transition" (final obs -> first obs, action ignored, reward 0) is not part of any episode.
            reset_steps[step] = next_is_reset

            # ALGO LOGIC: action logic
            with torch.no_grad():
                with amp():
                    logits, value = policy(encoder(next_obs))
                probs = Categorical(logits=logits.float())
                action = probs.sample()
            values[step] = value
            actions[step] = action
            logprobs[step] = probs.log_prob(action)

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminated, truncated, infos = envs.step(action.cpu().numpy())
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
            terminations[step] = torch.as_tensor(terminated, dtype=torch.float32, device=device)
            next_is_reset = torch.as_tensor(np.logical_or(terminated, truncated), device=device)
            dones[step] = next_is_reset.float()
            next_obs = torch.as_tensor(next_obs, device=device)

            if "_episode" in infos:
                for i in np.nonzero(infos["_episode"])[0]:
                    episodic_return, episodic_length = float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])
                    recent_returns.append(episodic_return)
                    tqdm.write(f"global_step={global_step}, episodic_return={episodic_return:.2f}")
                    writer.add_scalar("charts/episodic_return", episodic_return, global_step)
                    writer.add_scalar("charts/episodic_length", episodic_length, global_step)
            progress.update(args.num_envs)

        if stop.requested:
            break
        # bootstrap value if not done
        with torch.no_grad():
            with amp():
                next_value = policy(encoder(next_obs))[1].float()
            advantages = compute_gae(rewards, values, next_value, terminations, dones, args.gamma, args.gae_lambda)
            returns = advantages + values

        # flatten the batch and drop the reset steps: they are not transitions of the MDP
        valid = ~reset_steps.reshape(-1)
        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)[valid]
        b_logprobs = logprobs.reshape(-1)[valid]
        b_actions = actions.reshape(-1)[valid]
        b_advantages = advantages.reshape(-1)[valid]
        b_returns = returns.reshape(-1)[valid]
        b_values = values.reshape(-1)[valid]

        # Optimizing the policy and value network
        clipfracs = []
        for epoch in range(args.update_epochs):
            b_inds = torch.randperm(len(b_obs), device=device)
            for mb_inds in b_inds.tensor_split(args.num_minibatches):
                with amp():
                    logits, newvalue = policy(encoder(b_obs[mb_inds]))
                probs = Categorical(logits=logits.float())
                newvalue = newvalue.float()
                newlogprob = probs.log_prob(b_actions[mb_inds])
                entropy = probs.entropy()
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()

                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]

                mb_advantages = b_advantages[mb_inds]
                if args.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                # Policy loss
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                # Value loss
                if args.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef)
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(list(encoder.parameters()) + list(policy.parameters()), args.max_grad_norm)
                optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        # move the anchor embeddings towards the updated CNN's (one EMA step per iteration, see above)
        with amp():
            encoder.update_anchors(anchor_frames)

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        recent = f"{np.mean(recent_returns):.1f}" if recent_returns else "n/a"
        progress.set_postfix_str(f"SPS={sps} return(last {len(recent_returns)})={recent}", refresh=False)

        completed_iteration, completed_step = iteration, global_step
        crossed_save_point = (
            args.save_every > 0 and global_step // args.save_every > (global_step - batch_size) // args.save_every
        )
        if crossed_save_point and iteration < num_iterations:
            write_checkpoint(iteration, global_step)

    progress.close()
    envs.close()
    checkpoint_path = os.path.join(run_dir, AGENT_FILE)
    if stop.requested:
        write_checkpoint(completed_iteration, completed_step)
        writer.close()
        stop.exit(f"checkpoint at {checkpoint_path} (global_step={completed_step}); "
                  f"resume with: python ppo_relative.py --resume {checkpoint_path}")  # fmt: skip
    write_checkpoint(num_iterations, global_step)
    print(f"checkpoint saved to {checkpoint_path} (global_step={global_step}, SPS={sps})")

    # final evaluation: deterministic (argmax) whole episodes on fresh tracks seed + 10000, seed + 10001, ...
    if args.eval_episodes > 0:
        env = make_color_car_racing(args.bg_color, args.task, args.frame_stack, view=args.view)
        eval_returns = []
        for episode in range(args.eval_episodes):
            eval_obs, _ = env.reset(seed=args.seed + 10_000 + episode)
            done, episodic_return, frames = False, 0.0, [eval_obs[-3:].transpose(1, 2, 0)]
            while not done:
                with torch.no_grad():
                    action = policy.greedy_action(encoder(torch.as_tensor(eval_obs, device=device)[None]))
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
            f"({args.eval_episodes} deterministic episodes on tracks {args.seed + 10_000}..)"
        )
    writer.close()
