"""Benchmark (not a test): seconds per 1k gradient updates of iqrl_td3.py, interleaved in one run.

Every variant is a subprocess of the same short run (`--learning-starts` random steps, then `--updates` updates,
no evaluation) and reports the update time it measured (`s_per_1k_updates=`, environment steps excluded).
Variants run round-robin (`--repeats` rounds), so machine load drifts over all of them alike; the ratios use the
median over rounds. The baseline is the script as it is on the `main` branch (`git show main:iqrl_td3.py`,
written to a temporary folder), run on the same flags.

    nice -n 10 python benchmarks/iqrl_sps.py      # writes benchmarks/results/iqrl_sps.txt

Ratios printed (targets: today / new >= 2, iQRL / its TD3 ablation <= 2.5):
  today (main, fp32, 2 critics) vs the new code doing the same work (2 critics, targets with the actor) in fp32 / bf16,
  and vs the new defaults (5 critics, target critics every step) in fp32 / bf16;
  iQRL vs its ablation without encoder (`--no-encoder`, same networks and precision) and vs standard TD3
  (`--algo td3`); 1 vs 2 torch threads.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAME_WORK = ["--num-critics", "2", "--num-sampled-critics", "2", "--no-critic-target-every-step", "--enc-weight-decay", "0"]
VARIANTS = {  # name: (script, flags)
    "today": ("main", []),
    "new fp32 same work": ("new", SAME_WORK),
    "new bf16 same work": ("new", ["--precision", "bf16", *SAME_WORK]),
    "new default (fp32)": ("new", []),
    "new bf16": ("new", ["--precision", "bf16"]),
    "new default, 2 threads": ("new", ["--torch-threads", "2"]),
    "new default --no-encoder": ("new", ["--no-encoder"]),
    "new bf16 --no-encoder": ("new", ["--precision", "bf16", "--no-encoder"]),
    "new --algo td3": ("new", ["--algo", "td3"]),
    "today --no-encoder": ("main", ["--no-encoder"]),
}
RATIOS = [  # (numerator, denominator, what it measures)
    ("today", "new fp32 same work", "speed-up over today, same work (2 critics, targets with the actor), fp32"),
    ("today", "new bf16 same work", "speed-up over today, same work, bf16 (target >= 2)"),
    ("today", "new default (fp32)", "speed-up over today, new defaults (5 critics, target critics every step)"),
    ("today", "new bf16", "speed-up over today, new defaults in bf16"),
    ("new default (fp32)", "new default --no-encoder", "iQRL cost / its TD3 ablation, fp32 (target <= 2.5)"),
    ("new bf16", "new bf16 --no-encoder", "iQRL cost / its TD3 ablation, bf16"),
    ("today", "today --no-encoder", "today's iQRL cost / today's TD3 ablation"),
    ("new default (fp32)", "new --algo td3", "iQRL cost / standard TD3 (256-256, 2 critics)"),
    ("new default (fp32)", "new default, 2 threads", "2 torch threads speed-up over 1"),
]


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """MuJoCo task (only the observation/action sizes matter)"""
    updates: int = 50
    """gradient updates timed per run"""
    learning_starts: int = 300
    """random steps before the updates (>= horizon)"""
    repeats: int = 2
    """round-robin rounds over all variants"""
    reverse: bool = False
    """run the variants in reverse order (a second invocation with --reverse makes an ABBA pair against load drift)"""
    two_threads: bool = True
    """include the 2-torch-thread variant (--no-two-threads leaves it out: on a loaded 2-core machine it is slow)"""
    flags: str = ""
    """extra flags for every run, one string (e.g. --flags="--mlp-dims 128 128 --latent-dim 32"); default: the
    paper's sizes (512-wide networks, 512 FSQ groups x 2 channels, batch 256)"""
    output: str = os.path.join(REPO_ROOT, "benchmarks", "results", "iqrl_sps.txt")
    """where the table is written"""


def measure(script: str, flags: list, args: Args, runs_dir: str) -> float:
    command = [sys.executable, script, "--env-id", args.env_id, "--learning-starts", str(args.learning_starts),
               "--total-timesteps", str(args.learning_starts + args.updates), "--eval-episodes", "0",
               "--runs-dir", runs_dir, *args.flags.split(), *flags]  # fmt: skip
    if "--torch-threads" not in flags:
        command += ["--torch-threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=runs_dir)
    match = re.search(r"s_per_1k_updates=([\d.]+)", result.stdout)
    if match is None:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return float(match.group(1))


if __name__ == "__main__":
    args = tyro.cli(Args)
    with tempfile.TemporaryDirectory(prefix="iqrl_sps_") as tmp:
        scripts = {"new": os.path.join(REPO_ROOT, "iqrl_td3.py"), "main": os.path.join(tmp, "iqrl_td3.py")}
        with open(scripts["main"], "w") as f:
            f.write(subprocess.run(["git", "-C", REPO_ROOT, "show", "main:iqrl_td3.py"], capture_output=True, text=True,
                                   check=True).stdout)  # fmt: skip
        commits = {b: subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", b], capture_output=True,
                                     text=True).stdout.strip() for b in ("main", "HEAD")}  # fmt: skip
        times = {name: [] for name in VARIANTS}
        start = time.time()
        if not args.two_threads:
            del VARIANTS["new default, 2 threads"], times["new default, 2 threads"]
        for round_index in range(args.repeats):
            for name, (script, flags) in (reversed if args.reverse else list)(list(VARIANTS.items())):
                times[name].append(measure(scripts[script], flags, args, tmp))
                print(f"round {round_index + 1} {name}: {times[name][-1]:.1f} s per 1k updates "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    median = {name: statistics.median(values) for name, values in times.items()}
    lines = [f"iqrl_td3.py seconds per 1k updates on {args.env_id}, {args.updates} updates per run, {args.repeats} "
             f"interleaved rounds{' (variants in reverse order)' if args.reverse else ''}, 1 torch thread unless stated, "
             f"main={commits['main']} new=HEAD {commits['HEAD']} "
             f"(+ working tree), flags: {args.flags or '(paper sizes)'}; {time.time() - start:.0f} s wall, "
             f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", "",
             "| variant | s per 1k updates, per round | median |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {' / '.join(f'{v:.1f}' for v in times[name])} | {median[name]:.1f} |" for name in VARIANTS]
    lines += ["", "| ratio | value | what it measures |", "|---|---|---|"]
    lines += [f"| {a} / {b} | {median[a] / median[b]:.2f}x | {what} |" for a, b, what in RATIOS if b in median]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    print(text)
