"""R3L's stitching experiment as one resumable grid: train every cell, then stitch and compare latents over it.

Ricciardi et al., "R3L: Relative Representations for Reinforcement Learning" (arXiv 2404.12917), and Table 1 of
their workshop paper "Zero-shot stitching in RL using relative representations": agents trained independently on
CarRacing under several background colours and tasks, 4 seeds each, 5M steps; every encoder is stitched with
every policy on 10 tracks. This script declares such a grid, trains each cell as
its own ``ppo_relative.py`` / ``ddqn_relative.py`` process, then runs ``stitch_eval.py`` and
``latent_similarity.py`` over the finished cells and prints the figures of merit.

Usage::

    python benchmarks/r3l_grid.py --colors green red blue --seeds 1 2 --total-timesteps 100000 \\
        --ppo-args="--num-envs 8 --num-steps 128" --workers 2
    python benchmarks/r3l_grid.py ... --backend ray --ray-address auto     # the same grid on a Ray cluster

Cells. A *configuration* is (colour, view, task). ``--colors x --views`` run the first of ``--tasks``; the other
tasks run on ``--task-colors`` (default: the first colour) with ``--task-seeds`` (default: ``--seeds``). Each
configuration is trained with ``--kinds`` (relative, absolute) and each seed, for every ``--algos`` entry;
DDQN cells are limited to ``--ddqn-colors`` x ``--ddqn-kinds`` x ``--ddqn-seeds`` on the first task, with
their own ``--ddqn-total-timesteps`` (a DDQN step costs several PPO steps).

Seeds. ``--seeds`` are replicate numbers r = 1, 2, ...; configuration c (0-based, in the order colours x views,
then tasks x task colours x views) trains with seed ``c + 1 + C (r - 1)``, C = number of configurations. So no
two configurations share a seed (their encoders do not start from the same weights), while the relative and
absolute runs of a configuration, and the PPO and DDQN runs, share it (paired comparisons; ``stitch_eval.py
--exclude-same-seed`` drops the pairs of runs that started from the same weights). The table is printed.

Resumable and idempotent. Cell ``{algo}-{colour}-{view}-{task}-{kind}-s{seed}`` trains into
``{runs_dir}/{cell}/`` (``--runs-dir`` of the trainer, log in ``{cell}/log.txt``). A cell whose checkpoint has
reached ``--total-timesteps`` is skipped; one with a shorter checkpoint continues with ``--resume`` (the
trainer refuses flags that differ from the checkpoint's); a checkpoint of another configuration, seed or
algorithm in a cell folder, or flags of ``--train-args`` that differ from the checkpoint's, stop the grid before
any work with a one-line error. Ctrl-C / SIGTERM: every running cell writes its checkpoint and stops; rerun the
same command to continue. A rerun of a finished grid trains nothing and re-runs only the evaluations whose
command or checkpoints changed (``--re-evaluate``: all of them).

Backends. ``--backend local`` (default): ``--workers`` processes on this machine. ``--backend ray``: each cell
is a Ray task (``ray.init(address=--ray-address)``; a local instance when the address is absent) reserving
``--cpus-per-cell`` CPUs; on a cluster, ``--runs-dir`` must be a folder every node sees at the same path and
every node needs this repository at the same path (the task runs the trainer from it).

Evaluation (``--evaluate``, default on), over the finished cells:

* ``stitch_eval.py`` over the relative cells (every algorithm: cross-visual, cross-task and cross-algorithm
  pairs) and over the absolute cells with ``--translate`` (absolute, and absolute + latent space translation),
  both with ``--exclude-same-seed``, ``--num-tracks`` tracks and ``--stitch-args`` appended;
* ``latent_similarity.py`` over the cells of the first task (relative and absolute encoders);
* ``{out_dir}/grid_summary.json`` and ``grid_summary.md``: the cells (command, seed, steps, own return),
  the figures of merit beside the paper's, and the latent similarity by kind and pair type.

Outputs: ``{out_dir}/stitch_relative/``, ``stitch_absolute/``, ``latent/`` (each tool's own outputs and log)
and the summary. Unfinished or failed cells are listed there, not dropped silently.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envs.checkpoint import GracefulStop, fail, load_agent_checkpoint  # noqa: E402

TRAINERS = {"ppo": "ppo_relative.py", "ddqn": "ddqn_relative.py"}
# workshop Table 1 of R3L (PPO, colours): mean maximum return off and on the diagonal
PAPER = {"relative": (564.0, 693.0), "absolute": (13.8, 831.0)}


@dataclass
class Args:
    algos: tuple[str, ...] = ("ppo",)
    """trainers: ppo (ppo_relative.py) and/or ddqn (ddqn_relative.py)"""
    colors: tuple[str, ...] = ("green", "red", "blue")
    """background colours trained on the first task"""
    views: tuple[str, ...] = ("near",)
    """camera views (near, far) of every configuration"""
    tasks: tuple[str, ...] = ("standard",)
    """tasks; the first runs on every colour, the others on --task-colors"""
    task_colors: Optional[tuple[str, ...]] = None
    """colours of the tasks after the first (default: the first colour)"""
    kinds: tuple[str, ...] = ("relative", "absolute")
    """latent kinds: relative (R3L) and/or absolute (the baseline)"""
    seeds: tuple[int, ...] = (1, 2)
    """replicates r of every configuration of the first task (seed = c + 1 + C (r - 1), see the docstring)"""
    task_seeds: Optional[tuple[int, ...]] = None
    """replicates of the configurations of the other tasks (default: --seeds)"""
    total_timesteps: int = 100_000
    """environment steps of every PPO cell"""
    train_args: str = ""
    """flags appended verbatim to every training command (write --train-args="--flag value" with "=")"""
    ppo_args: str = ""
    """flags appended to the PPO commands only"""
    ddqn_args: str = ""
    """flags appended to the DDQN commands only"""
    ddqn_colors: Optional[tuple[str, ...]] = None
    """colours of the DDQN cells (default: the first colour)"""
    ddqn_kinds: tuple[str, ...] = ("relative",)
    """latent kinds of the DDQN cells"""
    ddqn_seeds: Optional[tuple[int, ...]] = None
    """replicates of the DDQN cells (default: the first of --seeds)"""
    ddqn_total_timesteps: Optional[int] = None
    """environment steps of every DDQN cell (default: --total-timesteps)"""
    backend: Literal["local", "ray"] = "local"
    """local: --workers processes on this machine; ray: one Ray task per cell"""
    workers: int = os.cpu_count() or 1
    """cells trained at once (local backend)"""
    ray_address: Optional[str] = None
    """Ray cluster to join (e.g. auto or ray://host:10001); a local Ray instance when absent"""
    cpus_per_cell: float = 1.0
    """CPUs a Ray task reserves (the trainers use --torch-threads 1 by default)"""
    runs_dir: str = "runs/r3l_grid"
    """one folder per cell below it"""
    out_dir: str = "runs/r3l_grid_results"
    """stitching tables, latent similarity, grid_summary.{json,md}"""
    dry_run: bool = False
    """list the cells, their seeds, states and commands, then stop"""
    evaluate: bool = True
    """after training, stitch and compare the finished cells"""
    re_evaluate: bool = False
    """run every evaluation again, also those whose command and checkpoints are unchanged since their last run"""
    num_tracks: int = 5
    """evaluation tracks per stitched pair (R3L: 10 for its final table, 5 in the workshop Table 1)"""
    eval_workers: Optional[int] = None
    """parallel episodes of stitch_eval.py (default: --workers)"""
    stitch_args: str = ""
    """flags appended to both stitch_eval.py commands"""
    latent_args: str = ""
    """flags appended to the latent_similarity.py command"""


@dataclass(frozen=True)
class Cell:
    algo: str
    color: str
    view: str
    task: str
    kind: str
    seed: int
    total_timesteps: int

    @property
    def name(self) -> str:
        return f"{self.algo}-{self.color.lstrip('#').lower()}-{self.view}-{self.task}-{self.kind}-s{self.seed}"

    def command(self, args: Args) -> list[str]:
        extra = args.ppo_args if self.algo == "ppo" else args.ddqn_args
        return [
            sys.executable, str(ROOT / TRAINERS[self.algo]), "--bg-color", self.color, "--view", self.view,
            "--task", self.task, "--relative" if self.kind == "relative" else "--no-relative", "--seed", str(self.seed),
            "--total-timesteps", str(self.total_timesteps), *shlex.split(args.train_args), *shlex.split(extra),
        ]  # fmt: skip


def configurations(args: Args) -> list[tuple[str, str, str]]:
    """(colour, view, task) in seed order: colours x views on the first task, then tasks x task colours x views."""
    first = [(color, view, args.tasks[0]) for color in args.colors for view in args.views]
    task_colors = args.task_colors or args.colors[:1]
    return first + [(color, view, task) for task in args.tasks[1:] for color in task_colors for view in args.views]


def grid_cells(args: Args) -> list[Cell]:
    configs = configurations(args)
    cells = []
    for algo in args.algos:
        for c, (color, view, task) in enumerate(configs):
            if algo == "ppo":
                kinds, steps = args.kinds, args.total_timesteps
                replicates = args.seeds if task == args.tasks[0] else (args.task_seeds or args.seeds)
            else:
                if task != args.tasks[0] or color not in (args.ddqn_colors or args.colors[:1]):
                    continue
                kinds, steps = args.ddqn_kinds, args.ddqn_total_timesteps or args.total_timesteps
                replicates = args.ddqn_seeds or args.seeds[:1]
            for r, kind in itertools.product(replicates, kinds):
                seed = c + 1 + len(configs) * (r - 1)  # distinct per configuration, shared by kinds and algorithms
                cells.append(Cell(algo, color, view, task, kind, seed, steps))
    return cells


def check_args(args: Args) -> None:
    for name, values, accepted in (
        ("--algos", args.algos, TRAINERS),
        ("--views", args.views, ("near", "far")),
        ("--kinds", args.kinds + args.ddqn_kinds, ("relative", "absolute")),
        ("--tasks", args.tasks, ("standard", "slow", "scrambled", "no_idle")),
    ):
        for value in values:
            if value not in accepted:
                raise ValueError(f"{name} {value!r} is unknown; accepted: {', '.join(accepted)}")
    for name, values in (("--seeds", args.seeds), ("--task-seeds", args.task_seeds), ("--ddqn-seeds", args.ddqn_seeds)):
        if values is not None and (not values or min(values) < 1):
            raise ValueError(f"bad {name} {' '.join(map(str, values))}; accepted: replicate numbers >= 1")
    for name, value in (
        ("--workers", args.workers),
        ("--total-timesteps", args.total_timesteps),
        ("--num-tracks", args.num_tracks),
    ):
        if value < 1:
            raise ValueError(f"bad {name} {value}; accepted: an integer >= 1")
    for name, text in (("--train-args", args.train_args), ("--ppo-args", args.ppo_args), ("--ddqn-args", args.ddqn_args)):
        if re.search(r"(^|\s)--(resume|runs-dir|seed|bg-color|view|task|relative|no-relative|total-timesteps)(\s|=|$)", text):
            raise ValueError(f"{name} {text!r} sets a flag the grid sets per cell; accepted: other training flags")


def given_flags(text: str) -> dict[str, str]:
    """`--num-envs 8 --no-anneal-lr` -> {"num_envs": "8", "anneal_lr": "False"} (what the checkpoint's args hold)."""
    tokens, flags, i = shlex.split(text), {}, 0
    while i < len(tokens):
        name = tokens[i].lstrip("-").replace("-", "_")
        if "=" in name:
            name, value = name.split("=", 1)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value, i = tokens[i + 1], i + 1
        else:
            value = "False" if name.startswith("no_") else "True"
            name = name[3:] if name.startswith("no_") else name
        flags[name], i = value, i + 1
    return flags


def cell_state(cell: Cell, args: Args, runs_dir: Path) -> tuple[str, Optional[Path], int]:
    """("todo" | "resume" | "done", checkpoint, global_step); a checkpoint that belongs elsewhere is an error."""
    found = sorted((runs_dir / cell.name).glob("*/agent.pt"))
    if not found:
        return "todo", None, 0
    if len(found) > 1:
        raise ValueError(f"cell folder {runs_dir / cell.name} holds {len(found)} runs; accepted: one run per cell folder")
    meta = load_agent_checkpoint(str(found[0]))["metadata"]
    expected = {"algorithm": cell.algo, "bg_color": cell.color, "view": cell.view, "task": cell.task,
                "relative": cell.kind == "relative", "seed": cell.seed}  # fmt: skip
    stored = meta["args"]
    flags = given_flags(f"{args.train_args} {args.ppo_args if cell.algo == 'ppo' else args.ddqn_args}")
    for key, value in list(expected.items()) + [(k, v) for k, v in flags.items() if k in stored]:
        if str(meta.get(key, stored.get(key))) != str(value):
            raise ValueError(
                f"{found[0]} has {key}={meta.get(key, stored.get(key))!r}, the grid's cell {cell.name} wants {value!r}; "
                "accepted: the grid's own runs (move that run elsewhere or pick another --runs-dir)"
            )
    step_unit = stored["num_envs"] * stored.get("num_steps", 1) if cell.algo == "ppo" else stored["num_envs"]
    step = int(meta["global_step"])
    return ("done" if step + step_unit > cell.total_timesteps else "resume"), found[0], step


def run_cell(command: list[str], log_path: str, cwd: str) -> tuple[int, float]:
    """Run one training command, its output in log_path; the Ray task body too. (exit status, seconds)"""
    start = time.time()
    with open(log_path, "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            return process.wait(), time.time() - start
        except BaseException:  # Ctrl-C or a cancelled Ray task: let the trainer checkpoint, then stop
            process.terminate()
            return process.wait(), time.time() - start


def progress_of(log_path: Path) -> str:
    """The trainer's last tqdm reading, e.g. '41%', from the end of its log."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 2000))
            found = re.findall(rb"(\d+)/(\d+) \[", f.read())
    except OSError:
        return "?"
    return f"{100 * int(found[-1][0]) // max(1, int(found[-1][1]))}%" if found else "starting"


def format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def train(cells: list[Cell], args: Args, runs_dir: Path) -> dict[str, dict]:
    """Train every cell not yet done; returns {cell name: record}. Stops cleanly on Ctrl-C / SIGTERM."""
    states = {cell.name: cell_state(cell, args, runs_dir) for cell in cells}
    records = {c.name: {"cell": asdict(c), "state": states[c.name][0], "step": states[c.name][2]} for c in cells}
    queue = [c for c in cells if states[c.name][0] != "done"]
    print(f"grid: {len(cells)} cells, {len(cells) - len(queue)} already done, {len(queue)} to train "
          f"({sum(states[c.name][0] == 'resume' for c in queue)} resumed), backend {args.backend}")  # fmt: skip
    if not queue:
        return records
    commands = {}
    for cell in queue:
        (runs_dir / cell.name).mkdir(parents=True, exist_ok=True)
        checkpoint = states[cell.name][1]
        commands[cell.name] = cell.command(args) + ["--runs-dir", str(runs_dir / cell.name)]
        commands[cell.name] += ["--resume", str(checkpoint)] if checkpoint else []
        records[cell.name]["command"] = shlex.join(commands[cell.name][1:])

    stop = GracefulStop().install()
    start, durations, running, failed = time.time(), [], {}, []
    if args.backend == "ray":
        import ray

        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=args.cpus_per_cell)(run_cell)
        pending = {remote.remote(commands[c.name], str(runs_dir / c.name / "log.txt"), str(ROOT)): c for c in queue}
        running = {c.name: c for c in queue}
    last_report = 0.0
    while queue or running:
        if stop.requested:
            break
        if args.backend == "local":
            while queue and len(running) < args.workers:
                cell = queue.pop(0)
                log = open(runs_dir / cell.name / "log.txt", "a")
                running[cell.name] = (cell, subprocess.Popen(commands[cell.name], stdout=log, stderr=subprocess.STDOUT,
                                                             cwd=ROOT), time.time(), log)  # fmt: skip
            finished = []
            for name, (cell, process, began, log) in list(running.items()):
                if process.poll() is not None:
                    log.close()
                    finished.append((cell, process.returncode, time.time() - began))
                    del running[name]
        else:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
            finished = []
            for ref in done:
                cell = pending.pop(ref)
                rc, seconds = ray.get(ref)
                finished.append((cell, rc, seconds))
                running.pop(cell.name)
            queue = []
        for cell, rc, seconds in finished:
            records[cell.name].update(state="done" if rc == 0 else "failed", exit_status=rc, seconds=round(seconds, 1))
            if rc == 0:
                durations.append(seconds)
            else:
                failed.append(cell.name)
            last_line = tail_line(runs_dir / cell.name / "log.txt")
            print(f"{'finished' if rc == 0 else f'FAILED (exit {rc})'} {cell.name} in {format_minutes(seconds)}: {last_line}")
        if finished or time.time() - last_report > 60:
            last_report = time.time()
            waiting = len(queue) + len(running)
            eta = (np.mean(durations) * waiting / min(args.workers, max(waiting, 1))) if durations else None
            shown = ", ".join(f"{n} {progress_of(runs_dir / n / 'log.txt')}" for n in running)
            print(f"[{len(cells) - waiting - len(failed)} done | {len(running)} running | {len(queue)} queued | "
                  f"{len(failed)} failed] {format_minutes(time.time() - start)} elapsed"
                  + (f", ETA {format_minutes(eta)}" if eta is not None else "") + (f"; running: {shown}" if shown else ""),
                  flush=True)  # fmt: skip
        time.sleep(1.0 if args.backend == "local" else 0.0)
    if stop.requested:
        if args.backend == "local":
            for cell, process, _, log in running.values():
                process.terminate()  # each trainer writes its checkpoint and exits 143
            for cell, process, _, log in running.values():
                process.wait()
                log.close()
        else:
            for ref in pending:
                ray.cancel(ref)
        stop.exit(f"grid stopped with {len(running)} cells checkpointed; rerun the same command to continue")
    return records


def tail_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in re.split(r"[\r\n]", path.read_text(errors="replace")) if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def run_tool(command: list[str], checkpoints: list[str], folder: Path, force: bool) -> None:
    """Run an evaluation tool into `folder`, unless its command and checkpoints are those of the last run there."""
    folder.mkdir(parents=True, exist_ok=True)
    arguments = [a for i, a in enumerate(command[1:]) if "--workers" not in command[i : i + 2]]  # results do not depend on it
    inputs = {"command": arguments, "checkpoints": {p: os.stat(p).st_mtime_ns for p in checkpoints}}
    record, log_path = folder / "grid_inputs.json", folder / "log.txt"
    if not force and record.exists() and json.loads(record.read_text()) == inputs:
        print(f"{folder.name}: same command and checkpoints as its last run, kept (--re-evaluate to run it again)")
        return
    record.unlink(missing_ok=True)
    print(f"$ {shlex.join(command[1:])}  (log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0:
        raise ValueError(f"{Path(command[1]).name} exited with status {rc}: {tail_line(log_path)}; see {log_path}")
    record.write_text(json.dumps(inputs, indent=1) + "\n")


def summarise(args: Args, cells: list[Cell], records: dict, runs_dir: Path, out_dir: Path) -> list[str]:
    """Figures of merit from the stitching and latent outputs, beside the paper's; writes grid_summary.{json,md}."""
    lines, summary = [], {"args": asdict(args), "cells": records, "figures_of_merit": {}, "own_returns": {}}
    for part in ("stitch_relative", "stitch_absolute"):
        results_path = out_dir / part / "stitch_results.json"
        if not results_path.exists():
            continue
        results = json.loads(results_path.read_text())
        for pair in results["pairs"]:  # the original agents: encoder and policy of the same run
            if pair["encoder_index"] == pair["policy_index"] and pair["episodes"]:
                cell_name = Path(pair["encoder_path"]).parent.parent.name  # {runs_dir}/{cell}/{run}/agent.pt
                summary["own_returns"][cell_name] = float(np.mean([e["max_return"] for e in pair["episodes"]]))
        for block, merit in results["figures_of_merit"].items():
            summary["figures_of_merit"][block] = merit
            diagonal = merit["diagonal_max_return"]
            for group in ("off-diagonal", "cross-visual", "cross-task", "cross-algorithm"):
                if group in merit and diagonal:
                    m = merit[group]
                    paper = PAPER.get(block) if group in ("off-diagonal", "cross-visual") else None
                    lines.append(
                        f"{block}: {group} / diagonal max return = {m['max_return']:.1f} / {diagonal:.1f} = "
                        f"{m['ratio_to_diagonal']:.3f} ({m['episodes']} episodes)"
                        + (f"; R3L Table 1 (colours): {paper[0]} / {paper[1]} = {paper[0] / paper[1]:.3f}" if paper else "")
                    )
    own = summary["own_returns"]
    if own:
        driving = sum(v >= 600 for v in own.values())
        lines.append(
            f"own agents with mean max return >= 600 on {args.num_tracks} tracks: {driving} of {len(own)} "
            f"(min {min(own.values()):.1f}, median {np.median(list(own.values())):.1f}, max {max(own.values()):.1f})"
        )
    latent_path = out_dir / "latent" / "similarity_summary.json"
    if latent_path.exists():
        groups: dict[str, list[tuple[float, float]]] = {}
        for pair in json.loads(latent_path.read_text())["pairs"]:  # labels: "[i] colour view task algo rel|abs seed s (run)"
            first, second = pair["encoder_1"].split(), pair["encoder_2"].split()
            colours = "same colour" if first[1] == second[1] else "different colours"
            latent = {"rel": "relative", "abs": "absolute"}[first[5]]
            if first[5] == second[5] and latent in pair:  # relative matrices of relative encoders, absolute of absolute
                key = f"{latent} encoders, {colours}"
                groups.setdefault(key, []).append((pair[latent]["diagonal"], pair[latent]["off_diagonal"]))
        summary["latent_similarity"] = {}
        for key, values in sorted(groups.items()):
            diag, off = np.mean(values, axis=0)
            summary["latent_similarity"][key] = {"diagonal": float(diag), "off_diagonal": float(off), "pairs": len(values)}
            lines.append(
                f"latent similarity, {key}: diagonal {diag:.3f}, off-diagonal {off:.3f} ({len(values)} encoder pairs)"
            )
    unfinished = [name for name, r in records.items() if r["state"] != "done"]
    if unfinished:
        lines.append(f"cells not finished (not evaluated): {', '.join(unfinished)}")
    summary["lines"] = lines
    (out_dir / "grid_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = ["| cell | seed | steps | state | own max return |", "|---|---|---|---|---|"]
    for cell in cells:
        r = records[cell.name]
        own_return = f"{own[cell.name]:.1f}" if cell.name in own else "n/a"
        table.append(f"| {cell.name} | {cell.seed} | {r['step']} | {r['state']} | {own_return} |")
    (out_dir / "grid_summary.md").write_text(
        "# R3L grid\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n" + "\n".join(table) + "\n"
    )
    return lines


def main(args: Args) -> None:
    try:
        check_args(args)
        cells = grid_cells(args)
        runs_dir, out_dir = Path(args.runs_dir).resolve(), Path(args.out_dir).resolve()
        runs_dir.mkdir(parents=True, exist_ok=True)
        print("cells (seed = c + 1 + C (r - 1)):")
        for cell in cells:
            state, checkpoint, step = cell_state(cell, args, runs_dir)
            print(f"  {cell.name}: {state} ({step} of {cell.total_timesteps} steps)")
            if args.dry_run and state != "done":
                print(f"    {shlex.join(cell.command(args)[1:])} --runs-dir {runs_dir / cell.name}"
                      + (f" --resume {checkpoint}" if checkpoint else ""))  # fmt: skip
        if args.dry_run:
            return
        records = train(cells, args, runs_dir)
        for cell in cells:  # the steps each finished cell reached
            state, checkpoint, step = cell_state(cell, args, runs_dir)
            records[cell.name].update(state=state, step=step, checkpoint=str(checkpoint) if checkpoint else None)
        if not args.evaluate:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        done = [c for c in cells if records[c.name]["state"] == "done"]
        workers = str(args.eval_workers or args.workers)
        common = ["--exclude-same-seed", "--num-tracks", str(args.num_tracks), "--workers", workers,
                  *shlex.split(args.stitch_args)]  # fmt: skip
        for part, kind, extra in (("stitch_relative", "relative", []), ("stitch_absolute", "absolute", ["--translate"])):
            chosen = [records[c.name]["checkpoint"] for c in done if c.kind == kind]
            if len(chosen) >= 2:
                command = [
                    sys.executable,
                    str(ROOT / "stitch_eval.py"),
                    *chosen,
                    *common,
                    *extra,
                    "--out-dir",
                    str(out_dir / part),
                ]
                run_tool(command, chosen, out_dir / part, args.re_evaluate)
        first_task = [records[c.name]["checkpoint"] for c in done if c.task == args.tasks[0]]
        if len(first_task) >= 2:
            command = [sys.executable, str(ROOT / "latent_similarity.py"), *first_task, "--out-dir", str(out_dir / "latent"),
                       *shlex.split(args.latent_args)]  # fmt: skip
            run_tool(command, first_task, out_dir / "latent", args.re_evaluate)
        lines = summarise(args, cells, records, runs_dir, out_dir)
    except ValueError as e:
        fail(str(e))
    print("\n".join(lines))
    print(f"wrote {out_dir}/grid_summary.json and grid_summary.md")


if __name__ == "__main__":
    main(tyro.cli(Args))
