"""Shared test set-up: run from the repository root, keep anchor caches out of the user's home."""

import os
import runpy
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# One anchor cache for the whole test session (subprocess smoke tests inherit it), removed when the session ends.
SESSION_ANCHOR_CACHE = None
if "R3L_ANCHOR_CACHE" not in os.environ:
    SESSION_ANCHOR_CACHE = os.environ["R3L_ANCHOR_CACHE"] = tempfile.mkdtemp(prefix="r3l-anchors-tests-")


def pytest_sessionfinish(session, exitstatus):
    if SESSION_ANCHOR_CACHE is not None:
        shutil.rmtree(SESSION_ANCHOR_CACHE, ignore_errors=True)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def colour_change_residual(frames_a, frames_b, colour_a: str, colour_b: str, channel_axis: int = -1) -> float:
    """Largest part of the pixel differences between two renders of the same states in two colours
    that background and grass cannot explain.

    A pixel covering background and grass fractions (w_bg, w_grass) changes by
    w_bg * delta_background + w_grass * delta_grass between colours, so every difference lies in the
    span of those two colour differences; the residual is only rounding when nothing else changed."""
    from envs.car_racing import parse_bg_color

    (background_a, grass_a), (background_b, grass_b) = parse_bg_color(colour_a), parse_bg_color(colour_b)
    span = np.array([np.subtract(background_b, background_a), np.subtract(grass_b, grass_a)], dtype=float).T
    projector = span @ np.linalg.pinv(span)
    difference = np.moveaxis(np.asarray(frames_b, dtype=float) - np.asarray(frames_a, dtype=float), channel_axis, -1)
    return float(np.abs(difference - difference @ projector.T).max())


def run_script_in_process(script: str, args: list[str], tmp_path: Path, capsys) -> tuple[int, str, str]:
    """Run a script's __main__ in this process (no interpreter start-up), with `--runs-dir tmp_path/runs`
    and tmp_path as working directory; returns (exit code, stdout, stderr)."""
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [script, "--runs-dir", str(tmp_path / "runs"), *args]
    os.chdir(tmp_path)
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = argv
        os.chdir(cwd)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def random_orthogonal(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random (dim, dim) orthogonal matrix in float64 (QR of a Gaussian matrix, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def save_agent_checkpoint(
    path: Path,
    bg_color: str,
    relative: bool = True,
    seed: int = 0,
    algorithm: str = "ppo",
    task: str = "standard",
    num_anchors: int = 16,
    anchor_set_id: str = "set-a",
    view: str = "near",
) -> Path:
    """An r3l-agent-v1 checkpoint (docs/checkpoints.md) with randomly initialised networks and anchor embeddings."""
    from ddqn_relative import QNetwork
    from envs.checkpoint import agent_payload, save_atomic
    from ppo_relative import Encoder, Policy

    torch.manual_seed(seed)
    num_actions = 4 if task == "no_idle" else 5
    encoder = Encoder(1, relative, num_anchors)
    if relative:
        encoder.projection.update_anchors(torch.randn(num_anchors, 3136))
    policy = (QNetwork if algorithm == "ddqn" else Policy)(encoder.latent_dim, num_actions)
    metadata = {
        "algorithm": algorithm, "bg_color": bg_color, "view": view, "task": task, "reward": "standard", "frame_stack": 1,
        "num_actions": num_actions, "relative": relative, "anchor_set_id": anchor_set_id if relative else None,
        "num_anchors": num_anchors if relative else None, "anchor_standardize": False,
        "latent_dim": encoder.latent_dim, "seed": seed, "global_step": 0, "args": {},
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(agent_payload(encoder, policy, metadata, {}), str(path))
    return path
