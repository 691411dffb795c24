# PPO with relative (or absolute) representations on colour-variable CarRacing.
# R3L: Ricciardi et al., "Zero-shot stitching in RL using relative representations" (seed 001, arXiv 2404.12917).
import torch
import torch.nn as nn
import torch.nn.functional as F

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
    """

    def __init__(self, num_anchors: int, latent_dim: int, anchor_ema: float = 0.999, standardize: bool = False):
        super().__init__()
        self.anchor_ema = anchor_ema
        self.standardize = standardize
        self.register_buffer("anchor_embeddings", torch.zeros(num_anchors, latent_dim))
        self.register_buffer("anchors_initialized", torch.tensor(False))

    @torch.no_grad()
    def update_anchors(self, fresh_embeddings: torch.Tensor) -> None:
        if not self.anchors_initialized:
            self.anchor_embeddings.copy_(fresh_embeddings)
            self.anchors_initialized.fill_(True)
        else:
            self.anchor_embeddings.lerp_(fresh_embeddings, 1.0 - self.anchor_ema)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        anchors = self.anchor_embeddings
        center = anchors.mean(dim=0)
        latent, anchors = latent - center, anchors - center
        if self.standardize:
            scale = anchors.std(dim=0) + 1e-6
            latent, anchors = latent / scale, anchors / scale
        return F.normalize(latent, dim=-1) @ F.normalize(anchors, dim=-1).T


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
        return self.forward(latent)[0].argmax(dim=-1)
