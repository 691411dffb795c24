"""benchmarks/r3l_grid.py: the cells and their seeds, resumable state, a tiny grid end to end (local and Ray)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_agent_checkpoint

from benchmarks.r3l_grid import Args, cell_state, given_flags, grid_cells

GRID = Path(__file__).resolve().parent.parent / "benchmarks" / "r3l_grid.py"
TINY_PPO = "--num-envs 2 --num-steps 32 --num-anchors 16 --anchor-steps-per-track 10 --eval-episodes 0"


def test_seeds_differ_between_configurations_and_pair_kinds_and_algorithms():
    args = Args(algos=("ppo", "ddqn"), colors=("green", "red", "blue"), tasks=("standard", "slow", "no_idle"),
                seeds=(1, 2), task_seeds=(1,))  # fmt: skip
    cells = grid_cells(args)
    ppo = [c for c in cells if c.algo == "ppo"]
    # 3 colours x 2 seeds x 2 kinds on standard, 2 tasks x green x 1 seed x 2 kinds
    assert len(ppo) == 12 + 4
    seeds = {(c.color, c.task): set() for c in ppo}
    for c in ppo:
        seeds[(c.color, c.task)].add(c.seed)
    # C = 5 configurations: green 1/6, red 2/7, blue 3/8, green slow 4, green no_idle 5
    assert seeds == {("green", "standard"): {1, 6}, ("red", "standard"): {2, 7}, ("blue", "standard"): {3, 8},
                     ("green", "slow"): {4}, ("green", "no_idle"): {5}}  # fmt: skip
    for c in ppo:  # relative and absolute runs of a configuration and seed are paired
        assert any(o.kind != c.kind and o.seed == c.seed and (o.color, o.task) == (c.color, c.task) for o in ppo)
    ddqn = [c for c in cells if c.algo == "ddqn"]
    assert [(c.color, c.task, c.kind, c.seed) for c in ddqn] == [("green", "standard", "relative", 1)]
    assert len({c.name for c in cells}) == len(cells)


def test_given_flags_read_like_the_checkpoint_args():
    assert given_flags("--num-envs 8 --no-anneal-lr --precision=bf16 --capture-video") == {
        "num_envs": "8", "anneal_lr": "False", "precision": "bf16", "capture_video": "True"
    }  # fmt: skip


def test_cell_state_refuses_a_run_of_another_configuration(tmp_path):
    args = Args(colors=("green",), kinds=("relative",), seeds=(1,))
    (cell,) = grid_cells(args)
    assert cell_state(cell, args, tmp_path) == ("todo", None, 0)
    save_agent_checkpoint(tmp_path / cell.name / "run" / "agent.pt", "red", seed=cell.seed)
    with pytest.raises(
        ValueError, match=r"has bg_color='red', the grid's cell ppo-green-near-standard-relative-s1 wants 'green'"
    ):
        cell_state(cell, args, tmp_path)


def run_grid(tmp_path, *flags):
    command = [sys.executable, str(GRID), "--runs-dir", str(tmp_path / "runs"),
               "--out-dir", str(tmp_path / "out"), *flags]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_tiny_grid_trains_skips_when_done_and_evaluates(tmp_path):
    flags = ["--colors", "green", "red", "--kinds", "relative", "--seeds", "1", "--total-timesteps", "64",
             f"--ppo-args={TINY_PPO}", "--workers", "2", "--num-tracks", "1", "--stitch-args=--max-episode-steps 15",
             "--latent-args=--num-steps 15"]  # fmt: skip
    first = run_grid(tmp_path, *flags)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 cells, 0 already done, 2 to train" in first.stdout
    assert "finished ppo-green-near-standard-relative-s1" in first.stdout
    assert "finished ppo-red-near-standard-relative-s2" in first.stdout
    assert "relative: off-diagonal / diagonal max return" in first.stdout
    summary = json.loads((tmp_path / "out" / "grid_summary.json").read_text())
    assert {r["state"] for r in summary["cells"].values()} == {"done"}
    assert set(summary["own_returns"]) == {"ppo-green-near-standard-relative-s1", "ppo-red-near-standard-relative-s2"}
    assert "latent similarity, relative encoders, different colours" in "\n".join(summary["lines"])
    checkpoint = next((tmp_path / "runs" / "ppo-green-near-standard-relative-s1").glob("*/agent.pt"))
    weights = torch.load(checkpoint, weights_only=True)["encoder"]

    again = run_grid(tmp_path, *flags)  # a finished grid trains nothing; unchanged evaluations are kept
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 cells, 2 already done, 0 to train" in again.stdout
    assert "stitch_relative: same command and checkpoints as its last run, kept" in again.stdout
    assert "relative: off-diagonal / diagonal max return" in again.stdout
    assert all(torch.equal(v, weights[k]) for k, v in torch.load(checkpoint, weights_only=True)["encoder"].items())

    longer = run_grid(tmp_path, *[f if f != "64" else "128" for f in flags], "--no-evaluate")  # a larger budget resumes
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert "2 to train (2 resumed)" in longer.stdout
    assert torch.load(checkpoint, weights_only=True)["metadata"]["global_step"] == 128

    other = run_grid(tmp_path, *[f.replace("--num-envs 2", "--num-envs 4") for f in flags])
    assert other.returncode == 2
    assert other.stderr.strip().count("\n") == 0
    assert "has num_envs=2, the grid's cell" in other.stderr and "wants '4'" in other.stderr


def test_ray_backend_runs_a_cell_as_a_ray_task(tmp_path):
    pytest.importorskip("ray")
    flags = ["--colors", "green", "--kinds", "relative", "--seeds", "1", "--total-timesteps", "64",
             f"--ppo-args={TINY_PPO}", "--backend", "ray", "--no-evaluate"]  # fmt: skip
    result = run_grid(tmp_path, *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend ray" in result.stdout and "finished ppo-green-near-standard-relative-s1" in result.stdout
    checkpoint = next((tmp_path / "runs" / "ppo-green-near-standard-relative-s1").glob("*/agent.pt"))
    assert torch.load(checkpoint, weights_only=True)["metadata"]["global_step"] == 64
