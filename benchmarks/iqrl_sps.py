"""Benchmark (not a test): cost per gradient update of iqrl_td3.py, interleaved in one run.

Every variant is a code revision of iqrl_td3.py (a commit, written to a temporary folder, or the working tree) and a
set of flags. In each round, every variant makes two subprocess runs through `benchmarks/interleave.run_once`: a
short one (`--learning-starts` uniformly random steps, then `--short` updates) and a long one (`--updates` more
updates). The difference of their CPU times (and of their wall times), divided by the extra updates, is the cost of
one update: start-up, the random steps, the first update's one-off costs and the final checkpoint cancel. CPU
seconds are the figure to read on a loaded machine (a process waiting for a core spends none); wall seconds are
what a user waits for, and the only fair figure for `--torch-threads 2` (CPU time counts both threads).

Rounds alternate direction (forward, reverse, forward, ...), so a drift of the machine's load favours neither end
of the variant list; every ratio is formed within a round and summarised over rounds as the geometric mean and the
min-max, for all rounds and per direction.

    nice -n 10 python benchmarks/iqrl_sps.py --rounds 4     # writes benchmarks/results/iqrl_sps.txt

"old" is iqrl_td3.py at commit f1a4080, the last version before `--precision`, the 5-critic ensemble and the batched
critics were added (ed7ce86). "before" is the commit before the speed change of the working tree.
"""

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from benchmarks.interleave import run_once  # noqa: E402

SAME_WORK = ["--num-critics", "2", "--num-sampled-critics", "2", "--no-critic-target-every-step", "--enc-weight-decay", "0"]
# name: (revision: "old", "before" or "new" = working tree; flags; x updates: cheap variants time more updates)
VARIANTS = {
    "old": ("old", [], 1),
    "before": ("before", [], 1),
    "new": ("new", [], 1),
    "new, old's work": ("new", SAME_WORK, 1),
    "new bf16": ("new", ["--precision", "bf16"], 1),
    "new 2 threads": ("new", ["--torch-threads", "2"], 1),
    "new --no-encoder": ("new", ["--no-encoder"], 4),
    "new --algo td3": ("new", ["--algo", "td3"], 30),
    "old --no-encoder": ("old", ["--no-encoder"], 4),
}
RATIOS = [  # (numerator, denominator, figure, what it measures)
    ("old", "new", "cpu", "speed-up over old, same flags (new defaults: 5 critics, target critics every step); target >= 2"),
    ("old", "new, old's work", "cpu", "speed-up over old, same work (2 critics, targets with the actor, no weight decay)"),
    ("old", "new bf16", "cpu", "speed-up over old, same flags, --precision bf16"),
    ("before", "new", "cpu", "the change of this revision alone (before = previous commit)"),
    ("new", "new --no-encoder", "cpu", "iQRL / its TD3 ablation (iQRL's networks, 5 critics, no encoder); target <= 2.5"),
    ("new", "new --algo td3", "cpu", "iQRL / standard TD3 (ReLU 256-256, 2 critics)"),
    ("new bf16", "new --no-encoder", "cpu", "iQRL in bf16 / the fp32 TD3 ablation"),
    ("old", "old --no-encoder", "cpu", "old iQRL / old TD3 ablation (2 critics)"),
    ("new", "new bf16", "cpu", "bf16 speed-up over fp32"),
    ("new", "new 2 threads", "wall", "2 torch threads speed-up over 1 (wall clock)"),
    ("old", "new", "wall", "speed-up over old, same flags, wall clock"),
    ("old", "new 2 threads", "wall", "speed-up over old, wall clock, each at its default threads (old 1, new min(2, cores))"),
    ("new", "new --no-encoder", "wall", "iQRL / its TD3 ablation, wall clock"),
]


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """MuJoCo task (only the observation/action sizes matter)"""
    learning_starts: int = 300
    """uniformly random steps before the first update (>= the horizon)"""
    short: int = 1
    """updates of the short run"""
    updates: int = 8
    """extra updates of the long run: the updates timed (x4 for the --no-encoder variants, x30 for --algo td3)"""
    rounds: int = 4
    """interleaved rounds, alternating forward and reverse order"""
    old_rev: str = "f1a4080"
    """the old code's commit"""
    before_rev: str = "HEAD"
    """the commit before the change being measured"""
    flags: str = ""
    """extra flags for every run, one string (e.g. --flags="--mlp-dims 64 64 --latent-dim 16"); default: the paper's
    sizes (512-wide networks, 512 FSQ groups x 2 channels, batch 256)"""
    variants: str = ""
    """comma-separated subset of the variant names (default: all)"""
    output: str = str(REPO_ROOT / "benchmarks" / "results" / "iqrl_sps.txt")
    """where the report is written"""


def geomean(values):
    """nan where a figure is not positive (a cost difference lost in noise)."""
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values and min(values) > 0 else float("nan")


if __name__ == "__main__":
    args = tyro.cli(Args)
    variants = {k: v for k, v in VARIANTS.items() if not args.variants or k in args.variants.split(",")}
    os.environ["PYTHONPATH"] = str(REPO_ROOT)  # revisions copied to a temporary folder import `envs` from here
    revs = {"old": args.old_rev, "before": args.before_rev}
    commits = {k: subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", r], capture_output=True, text=True,
                                 check=True).stdout.strip() for k, r in revs.items()}  # fmt: skip
    per_update = {name: {"cpu": [], "wall": []} for name in variants}
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="iqrl_sps_") as tmp:
        scripts = {"new": str(REPO_ROOT / "iqrl_td3.py")}
        for key, commit in commits.items():
            scripts[key] = os.path.join(tmp, f"iqrl_td3_{key}.py")
            with open(scripts[key], "w") as f:
                f.write(subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{commit}:iqrl_td3.py"], capture_output=True,
                                       text=True, check=True).stdout)  # fmt: skip
        for round_index in range(args.rounds):
            order = list(variants.items())[:: -1 if round_index % 2 else 1]
            for name, (rev, flags, times) in order:
                runs, extra = [], args.updates * times
                for updates in (args.short, args.short + extra):
                    run_flags = [
                        "--env-id",
                        args.env_id,
                        "--learning-starts",
                        str(args.learning_starts),
                        "--total-timesteps",
                        str(args.learning_starts + updates),
                        "--eval-episodes",
                        "0",
                        *args.flags.split(),
                        *flags,
                    ]
                    if "--torch-threads" not in flags:
                        run_flags += ["--torch-threads", "1"]
                    runs.append(run_once(scripts[rev], run_flags, args.learning_starts + updates))
                for key in ("cpu", "wall"):
                    per_update[name][key].append(1000 * (runs[1][f"{key}_s"] - runs[0][f"{key}_s"]) / extra)
                print(f"round {round_index + 1} ({'reverse' if round_index % 2 else 'forward'}) {name}: "
                      f"{per_update[name]['cpu'][-1]:.1f} CPU s / {per_update[name]['wall'][-1]:.1f} wall s per 1k updates "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip

    def row(values):
        return " / ".join(f"{v:.3g}" for v in values)

    lines = [f"iqrl_td3.py cost per 1k gradient updates on {args.env_id}: {args.rounds} interleaved rounds (odd rounds "
             f"forward, even rounds reverse), per variant and round a run with {args.short} and one with "
             f"{args.short} + N updates after {args.learning_starts} random steps, difference / N (N = {args.updates}, x4 for "
             f"--no-encoder, x30 for --algo td3); "
             f"1 torch thread unless stated; old={commits['old']} before={commits['before']} new=working tree; flags: "
             f"{args.flags or '(paper sizes)'}; {time.time() - start:.0f} s wall, load average at the end "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", "",
             "command: python benchmarks/iqrl_sps.py " + " ".join(sys.argv[1:]), "",
             "| variant | CPU s per 1k updates, per round | median | wall s per 1k updates, per round | median |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name in variants:
        cpu, wall = per_update[name]["cpu"], per_update[name]["wall"]
        lines.append(f"| {name} | {row(cpu)} | {statistics.median(cpu):.3g} | {row(wall)} | {statistics.median(wall):.3g} |")
    lines += ["", "| ratio | figure | per round | geometric mean (min-max) | forward rounds | reverse rounds | what |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for a, b, key, what in RATIOS:
        if a in variants and b in variants:
            r = [x / y for x, y in zip(per_update[a][key], per_update[b][key])]
            fwd, rev = r[0::2], r[1::2]
            lines.append(f"| {a} / {b} | {key} | {row(r)} | {geomean(r):.2f}x ({min(r):.2f}-{max(r):.2f}) | "
                         f"{geomean(fwd):.2f}x | {geomean(rev):.2f}x | {what} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    print(text)
