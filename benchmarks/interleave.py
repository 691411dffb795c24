"""Run one script with several sets of flags, interleaved, and report speed ratios against a baseline.

Shared machines are noisy: absolute speeds drift with the other users' load. Running the variants in turn
(A, B, C, A, B, C, ...) gives each the same conditions, so the *ratios* of their medians are the figures to
trust. Each run is a subprocess; the runner records its wall-clock time, its CPU time (user + system of the
subprocess, start-up included) and the SPS the script prints last (`SPS=<number>`; every trainer's progress
bar and final line carry it), and prints per-run rows, per-variant medians and the ratios to the baseline.

    python benchmarks/interleave.py ppo_relative.py --steps 4096 \\
        --common "--total-timesteps 4096 --num-envs 8 --eval-episodes 0 --save-every 0" \\
        --variant fp32 "--precision fp32" --variant bf16 "--precision bf16" --repeats 2

`run_interleaved` is the same as a function, for benchmark scripts that print their own ratios
(benchmarks/ppo_sps.py); its `collect` reads figures a script writes into its run folder (benchmarks/rl3_precision.py)
and `alternate` reverses the order every other round (A, B, B, A, ...). `interleave` is the rounds alone, for
measurements made in-process (benchmarks/env_throughput.py); `round_ratios` gives each round's ratio to a baseline.
"""

from __future__ import annotations

import argparse
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
SPS_PATTERN = re.compile(r"SPS=(\d+(?:\.\d+)?)")


def interleave(measure: Callable[[str, object], dict], variants: dict[str, object], repeats: int,
               alternate: bool = False) -> dict[str, list[dict]]:  # fmt: skip
    """{variant: [measure(name, variant) of round 1, round 2, ...]}, the variants measured in turn, `repeats` rounds;
    with `alternate`, every other round runs them in reverse order."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for round_index in range(repeats):
        order = list(variants.items())
        for name, variant in reversed(order) if alternate and round_index % 2 else order:
            runs[name].append(measure(name, variant))
    return runs


def run_once(script: str, flags: list[str], steps: int, collect: Callable[[str], dict] | None = None) -> dict:
    """One subprocess run of `script` with `flags` (plus a fresh --runs-dir); its wall, CPU and SPS figures, and
    `collect(runs_dir)`'s figures read from what the run wrote."""
    with tempfile.TemporaryDirectory(prefix="interleave-") as runs_dir:
        command = [sys.executable, str(REPO_ROOT / script), *flags, "--runs-dir", runs_dir]
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
            raise RuntimeError(f"{shlex.join(command)} exited with {result.returncode}: {last}")
        collected = collect(runs_dir) if collect else {}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    printed = SPS_PATTERN.findall(result.stdout + result.stderr)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "sps": float(printed[-1]) if printed else steps / wall,
        "cpu_s_per_1k_steps": 1000 * cpu / steps,
        **collected,
    }


def run_interleaved(
    script: str,
    common: list[str],
    variants: dict[str, list[str]],
    repeats: int,
    steps: int,
    log=print,
    collect: Callable[[str], dict] | None = None,
    alternate: bool = False,
) -> dict[str, list[dict]]:
    """{variant: [run figures, ...]} of subprocess runs of `script`, the variants run in turn, `repeats` rounds."""
    done = dict.fromkeys(variants, 0)

    def measure(name: str, flags: list[str]) -> dict:
        figures = run_once(script, [*common, *flags], steps, collect)
        done[name] += 1
        log(f"round {done[name]}/{repeats}  {name:<24} SPS {figures['sps']:8.1f}   "
            f"CPU {figures['cpu_s_per_1k_steps']:7.2f} s/1k steps   wall {figures['wall_s']:6.1f} s")  # fmt: skip
        return figures

    return interleave(measure, variants, repeats, alternate)


def round_ratios(runs: dict[str, list[dict]], baseline: str, key: str) -> dict[str, list[float]]:
    """{variant: [figure / baseline's figure, per round]}: each ratio compares runs made back to back."""
    return {name: [r[key] / b[key] for r, b in zip(rows, runs[baseline])] for name, rows in runs.items()}


def medians(runs: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    return {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}


def ratio_table(runs: dict[str, list[dict]], baseline: str) -> str:
    """Medians per variant and their ratios to `baseline` (SPS ratio > 1 and CPU ratio < 1 mean faster)."""
    med = medians(runs)
    base = med[baseline]
    lines = [f"{'variant':<24} {'median SPS':>11} {'x baseline':>11} {'CPU s/1k':>9} {'x baseline':>11}"]
    for name, m in med.items():
        lines.append(f"{name:<24} {m['sps']:11.1f} {m['sps'] / base['sps']:11.2f} {m['cpu_s_per_1k_steps']:9.2f} "
                     f"{m['cpu_s_per_1k_steps'] / base['cpu_s_per_1k_steps']:11.2f}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", help="a script of the repository, e.g. ppo_relative.py")
    parser.add_argument("--steps", type=int, required=True, help="environment steps each run makes (for CPU s / 1k steps)")
    parser.add_argument("--common", default="", help="flags every run gets (one quoted string)")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "FLAGS"), required=True,
                        help="a named set of extra flags; repeat for each variant; the first is the baseline")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2, help="rounds of interleaved runs")
    parser.add_argument("--alternate", action="store_true", help="reverse the order every other round (A, B, B, A, ...)")
    args = parser.parse_args()
    if not (REPO_ROOT / args.script).is_file():
        parser.exit(2, f"error: unknown script {args.script!r}; accepted: a .py file at the repository root\n")
    variants = {name: shlex.split(flags) for name, flags in args.variant}
    try:
        runs = run_interleaved(
            args.script, shlex.split(args.common), variants, args.repeats, args.steps, alternate=args.alternate
        )
    except RuntimeError as e:
        parser.exit(2, f"error: {e}\n")
    print(ratio_table(runs, baseline=args.variant[0][0]))


def cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """CPU seconds of this process per call of fn, after one warm-up call (in-process component timing)."""
    fn()
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats
