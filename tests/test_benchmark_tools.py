"""Tests of the shared benchmark tools: benchmarks/curves.py (TensorBoard logs -> CSV + PNG) and
benchmarks/interleave.py (variants run in turn, figures and ratios per round)."""

import csv
import runpy
import sys

import pytest
from conftest import REPO_ROOT
from torch.utils.tensorboard import SummaryWriter

from benchmarks import curves, interleave


def fake_run(folder, returns, eval_returns=()):
    """A run folder with TensorBoard events: charts/episodic_return at steps 100, 200, ... and per-episode
    eval/episodic_return logged as the trainers do (step = episode index)."""
    writer = SummaryWriter(str(folder))
    for i, value in enumerate(returns):
        writer.add_scalar("charts/episodic_return", value, 100 * (i + 1))
    for episode, value in enumerate(eval_returns):
        writer.add_scalar("eval/episodic_return", value, episode)
    writer.close()
    return str(folder)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_curves_write_csv_and_png_for_panels_seeds_and_evaluations(tmp_path):
    seed1 = fake_run(tmp_path / "runs" / "a__1", [1.0, 2.0, 3.0, 4.0], eval_returns=[10.0, 20.0])
    seed2 = fake_run(tmp_path / "runs" / "a__2", [3.0, 4.0, 5.0])
    other = fake_run(tmp_path / "runs" / "b__1", [0.5, 0.25])
    out = str(tmp_path / "results" / "curves")
    curves.write_curves({"left/a": [seed1, seed2], "right/b": [other]}, out, window=2, hlines={"right": {"random": 0.1}})
    rows = read_csv(out + ".csv")
    assert rows[0] == ["label", "run", "global_step", "charts/episodic_return"]
    assert rows[1:] == [
        ["left/a", "a__1", "100", "1.0"],
        ["left/a", "a__1", "200", "2.0"],
        ["left/a", "a__1", "300", "3.0"],
        ["left/a", "a__1", "400", "4.0"],
        ["left/a", "a__2", "100", "3.0"],
        ["left/a", "a__2", "200", "4.0"],
        ["left/a", "a__2", "300", "5.0"],
        ["right/b", "b__1", "100", "0.5"],
        ["right/b", "b__1", "200", "0.25"],
    ]
    # the final evaluation is placed at the run's last training step, as mean and std over its episodes
    assert read_csv(out + "_eval.csv") == [
        ["label", "run", "source", "global_step", "mean", "std", "returns"],
        ["left/a", "a__1", "eval/episodic_return", "400", "15.00", "5.00", "10.0 20.0"],
    ]
    assert (tmp_path / "results" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_command_line(tmp_path, capsys):
    run = fake_run(tmp_path / "run", [1.0, 2.0])

    def curves_cli(*flags):  # in-process: the command line without an interpreter start-up
        argv, sys.argv = sys.argv, ["curves.py", *flags]
        try:
            runpy.run_path(str(REPO_ROOT / "benchmarks" / "curves.py"), run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            sys.argv = argv
        return code, capsys.readouterr().err

    assert curves_cli(f"x={run}", "--out", str(tmp_path / "c")) == (0, "")
    assert (tmp_path / "c.png").is_file() and len(read_csv(tmp_path / "c.csv")) == 3 and not (tmp_path / "c_eval.csv").exists()
    for flags, message in [([f"{tmp_path}/nothing*"], "accepted: SERIES="), ([f"x={tmp_path}/nothing*"], "matches no folder"),
                           ([f"x={run}", "--checkpoints", "y=*.pt"], "--checkpoints label 'y' has no series")]:  # fmt: skip
        code, err = curves_cli(*flags, "--out", str(tmp_path / "d"))
        assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_interleave_runs_variants_in_turn_and_alternates():
    calls = []
    runs = interleave.interleave(lambda name, v: calls.append(name) or {"x": v}, {"a": 1, "b": 2, "c": 4}, 3, alternate=True)
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert runs == {"a": [{"x": 1}] * 3, "b": [{"x": 2}] * 3, "c": [{"x": 4}] * 3}
    assert interleave.round_ratios(runs, "a", "x") == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [4.0] * 3}


def test_run_interleaved_reads_printed_sps_and_collected_figures(tmp_path):
    script = tmp_path / "fake_trainer.py"
    script.write_text(
        "import argparse, os\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--speed', type=int)\n"
        "parser.add_argument('--runs-dir')\n"
        "args = parser.parse_args()\n"
        "open(os.path.join(args.runs_dir, 'figure.txt'), 'w').write(str(2 * args.speed))\n"
        "print(f'SPS=1 SPS={args.speed}')\n"
    )

    def collect(runs_dir):
        with open(f"{runs_dir}/figure.txt") as f:
            return {"figure": float(f.read())}

    log = []
    runs = interleave.run_interleaved(str(script), [], {"slow": ["--speed", "10"], "fast": ["--speed", "30"]}, 2, 100,
                                      log=log.append, collect=collect)  # fmt: skip
    assert [r["sps"] for r in runs["slow"]] == [10.0, 10.0] and [r["figure"] for r in runs["fast"]] == [60.0, 60.0]
    assert interleave.round_ratios(runs, "slow", "sps")["fast"] == [3.0, 3.0] and len(log) == 4
    assert "fast" in interleave.ratio_table(runs, "slow")
    with pytest.raises(RuntimeError, match="exited with 2"):
        interleave.run_once(str(script), ["--bogus"], 100)
