"""latent_similarity.py: relative latents are invariant to an orthogonal transform and rescaling of the
encoder's latent space while absolute ones are not; the figures of merit; which pairs get a relative
matrix; greedy action replays; the outputs and one-line errors. (The end-to-end run on real trainings is in
test_stitch_eval.py.)"""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import latent_similarity
from envs.anchors import record_trajectory, render_trajectory
from envs.car_racing import make_color_car_racing
from latent_similarity import Args, cosine_similarity_matrix, figures_of_merit, frame_latents, greedy_gym_actions, relative_refusal
from ppo_relative import Encoder
from stitch_eval import UserError, load_agent
from conftest import save_agent_checkpoint as save_checkpoint


def random_orthogonal(dim: int, block: int, generator: torch.Generator) -> torch.Tensor:
    """A random orthogonal matrix: random orthogonal blocks on the diagonal, then a random permutation of rows."""
    blocks = [torch.linalg.qr(torch.randn(block, block, generator=generator))[0] for _ in range(dim // block)]
    return torch.block_diag(*blocks)[torch.randperm(dim, generator=generator)]


def test_relative_latents_are_invariant_to_orthogonal_transform_and_rescaling():
    """Encoder B = encoder A followed by z -> 3.7 Q z (Q orthogonal): the relative similarity matrix of B
    against A is A-with-A's and every frame retrieves itself; the absolute one is not."""
    torch.manual_seed(0)
    actions = record_trajectory(3, 80)
    frames = render_trajectory(3, actions, "green")
    anchor_frames = torch.from_numpy(render_trajectory(2, record_trajectory(2, 60), "green"))
    encoder_a = Encoder(frame_stack=1, relative=True, num_anchors=60)
    encoder_a.update_anchors(anchor_frames)
    encoder_b = copy.deepcopy(encoder_a)
    rotation = nn.Linear(3136, 3136, bias=False)
    rotation.weight.data = 3.7 * random_orthogonal(3136, 64, torch.Generator().manual_seed(1))
    encoder_b.cnn = nn.Sequential(encoder_a.cnn, rotation)
    encoder_b.projection.anchors_initialized.fill_(False)
    encoder_b.update_anchors(anchor_frames)  # B's own anchor embeddings, as training would store them

    abs_a, rel_a = frame_latents(encoder_a, frames)
    abs_b, rel_b = frame_latents(encoder_b, frames)
    assert not torch.allclose(abs_a, abs_b, atol=1e-2)
    reference = cosine_similarity_matrix(rel_a, rel_a)
    relative = cosine_similarity_matrix(rel_b, rel_a)
    absolute = cosine_similarity_matrix(abs_b, abs_a)
    np.testing.assert_allclose(relative, reference, atol=1e-3)
    assert figures_of_merit(relative, window=2)["retrieval"] == 1.0
    merit = figures_of_merit(absolute, window=2)
    assert merit["retrieval"] < 0.3 and abs(merit["diagonal"]) < 0.3
    assert figures_of_merit(cosine_similarity_matrix(abs_a, abs_a), window=2)["diagonal"] == pytest.approx(1.0)


def test_figures_of_merit():
    identity = np.eye(6)
    assert figures_of_merit(identity, window=0) == {"diagonal": 1.0, "off_diagonal": 0.0, "retrieval": 1.0}
    shifted = np.roll(np.eye(6), 2, axis=1)  # frame i is most similar to frame i + 2 (mod 6)
    assert figures_of_merit(shifted, window=1)["retrieval"] == 0.0
    assert figures_of_merit(shifted, window=2)["retrieval"] == pytest.approx(4 / 6)  # the wrapped rows are 4 away
    assert figures_of_merit(np.full((4, 4), 0.5), window=0)["off_diagonal"] == pytest.approx(0.5)


def test_relative_matrices_only_for_relative_encoders_with_the_same_anchors():
    meta = {"relative": True, "anchor_set_id": "set-a", "num_anchors": 64, "anchor_standardize": False}
    assert relative_refusal(meta, {**meta}) is None
    assert relative_refusal(meta, {**meta, "relative": False}) == "absolute encoder: no relative latents"
    assert relative_refusal(meta, {**meta, "anchor_set_id": "set-b"}) == "different anchor_set_id (set-a vs set-b)"
    assert relative_refusal(meta, {**meta, "num_anchors": 32}) == "different num_anchors (64 vs 32)"


def test_greedy_actions_replay_the_agent_episode(tmp_path):
    """A scrambled-task agent's greedy actions, mapped to gymnasium's numbering, replay its own frames."""
    path = save_checkpoint(tmp_path / "run" / "agent.pt", "red", task="scrambled", seed=3)
    actions = greedy_gym_actions(path, track_seed=5, num_steps=20)
    encoder, policy, _ = load_agent(path)
    env = make_color_car_racing("red", "scrambled")
    obs, _ = env.reset(seed=5)
    own_frames = []
    with torch.no_grad():
        for _ in range(20):
            obs, *_ = env.step(int(policy.greedy_action(encoder(torch.from_numpy(obs)[None]))[0]))
            own_frames.append(obs)
    np.testing.assert_array_equal(render_trajectory(5, actions, "red"), np.stack(own_frames))


def test_outputs_for_relative_and_absolute_pairs(tmp_path, capsys):
    runs = tmp_path / "runs"
    save_checkpoint(runs / "green_rel" / "agent.pt", "green", seed=1)
    save_checkpoint(runs / "red_rel" / "agent.pt", "red", seed=2)
    save_checkpoint(runs / "red_abs" / "agent.pt", "red", relative=False, seed=2)
    out = tmp_path / "out"
    latent_similarity.main(Args(checkpoints=(str(runs / "*"),), num_steps=30, out_dir=str(out)))
    printed = capsys.readouterr().out
    summary = json.loads((out / "similarity_summary.json").read_text())
    assert summary["num_frames"] == 30 and summary["actions"] == "the anchors' scripted waypoint driver"
    notes = {(Path(p["path_1"]).parent.name, Path(p["path_2"]).parent.name): p["relative_note"] for p in summary["pairs"]}
    assert notes == {("green_rel", "red_abs"): "absolute encoder: no relative latents", ("green_rel", "red_rel"): None,
                     ("red_abs", "red_rel"): "absolute encoder: no relative latents"}
    for pair in summary["pairs"]:
        assert ("relative" in pair) == (pair["relative_note"] is None)
        assert Path(pair["figure"]).parent == out and Path(pair["figure"]).stat().st_size > 10_000
    assert printed.count("n/a: absolute encoder: no relative latents") == 2
    # two checkpoints of one configuration are told apart by their run folders
    assert "[1] red near standard ppo abs seed 2 (red_abs)" in printed and "[2] red near standard ppo rel seed 2 (red_rel)" in printed


def test_unwritable_out_dir_fails_before_the_replays(tmp_path, capsys):
    a = save_checkpoint(tmp_path / "a" / "agent.pt", "green", seed=1)
    b = save_checkpoint(tmp_path / "b" / "agent.pt", "red", seed=2)
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(UserError, match="--out-dir .* is not a writable folder"):
        latent_similarity.main(Args(checkpoints=(str(a), str(b)), out_dir=str(tmp_path / "file" / "out")))
    assert "replaying" not in capsys.readouterr().out


def test_bad_input_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "run" / "agent.pt", "green")
    with pytest.raises(UserError, match="1 checkpoint given .*; accepted: two or more checkpoints to compare"):
        latent_similarity.main(Args(checkpoints=(str(path),), out_dir=str(tmp_path / "out")))
    with pytest.raises(UserError, match="--num-steps 1 is invalid; accepted: an integer >= 2"):
        latent_similarity.main(Args(checkpoints=(str(path), str(path)), num_steps=1))
