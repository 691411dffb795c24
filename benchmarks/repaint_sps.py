"""Speed of repaint_ppo.py on CarRacing: bf16 autocast against fp32, interleaved in one invocation.

Not a test. Each round runs `repaint_ppo.py --env carracing` once per precision (fp32, bf16) for `--transfer none`
and, with `--teacher`, `--transfer repaint`, through benchmarks/interleave.py (every other round in reverse order);
a run's SPS is the one the script's progress bar shows at its last iteration (student steps per second, interpreter
start-up and the final evaluation excluded). The ratio bf16 / fp32 is taken per round, so both precisions of a ratio
ran back to back under the same machine load.

    nice -n 10 python benchmarks/repaint_sps.py --teacher runs/<carracing run>/agent.pt

Writes benchmarks/results/repaint_sps.txt.
"""

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from benchmarks.interleave import round_ratios, run_interleaved  # noqa: E402


@dataclass
class Args:
    teacher: str = ""
    """a CarRacing agent.pt to time --transfer repaint with too (empty: --transfer none only)"""
    rounds: int = 3
    """interleaved rounds"""
    total_timesteps: int = 1024
    """student steps per run"""
    num_envs: int = 4
    """environments"""
    num_steps: int = 128
    """steps per environment per iteration"""
    out: str = os.path.join(REPO_ROOT, "benchmarks", "results", "repaint_sps.txt")
    """the result file"""


def main(args: Args):
    common = ["--env", "carracing", "--eval-episodes", "0", "--num-envs", str(args.num_envs), "--num-steps",
              str(args.num_steps), "--total-timesteps", str(args.total_timesteps), "--seed", "1"]  # fmt: skip
    modes = {"none": []} | ({"repaint": ["--transfer", "repaint", "--teacher", args.teacher]} if args.teacher else {})
    variants = {f"{mode} {p}": [*extra, "--precision", p] for mode, extra in modes.items() for p in ("fp32", "bf16")}
    runs = run_interleaved("repaint_ppo.py", common, variants, args.rounds, args.total_timesteps, alternate=True)
    lines = [
        "repaint_ppo.py SPS on CarRacing, bf16 autocast vs fp32, interleaved in one invocation",
        f"command: nice -n 10 python benchmarks/repaint_sps.py --teacher {args.teacher or '(none)'} --rounds {args.rounds} "
        f"--total-timesteps {args.total_timesteps} --num-envs {args.num_envs} --num-steps {args.num_steps}",
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"AMX {torch.cpu._is_amx_tile_supported()}, AVX512-BF16 {torch.cpu._is_avx512_bf16_supported()}, 1 torch thread",
        "",
        "| transfer | SPS fp32 per round | SPS bf16 per round | ratio bf16/fp32 per round | mean ratio |",
        "|---|---|---|---|---|",
    ]
    for mode in modes:
        fp32, bf16 = ([int(r["sps"]) for r in runs[f"{mode} {p}"]] for p in ("fp32", "bf16"))
        ratios = round_ratios(runs, f"{mode} fp32", "sps")[f"{mode} bf16"]
        lines.append(
            f"| {mode} | {' '.join(map(str, fp32))} | {' '.join(map(str, bf16))} | "
            f"{' '.join(f'{x:.2f}' for x in ratios)} | {np.mean(ratios):.2f} +- {np.std(ratios):.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
