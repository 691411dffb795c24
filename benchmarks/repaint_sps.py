"""Speed of repaint_ppo.py on CarRacing: bf16 autocast against fp32, interleaved in one invocation.

Not a test. Each round runs `repaint_ppo.py --env carracing` once per precision (fp32, bf16, alternating which goes
first), for `--transfer none` and, with `--teacher`, `--transfer repaint`; a run's SPS is the one the script prints at
its last iteration (student steps per second, interpreter start-up and the final evaluation excluded). The ratio
bf16 / fp32 is taken per round, so both precisions of a ratio ran back to back under the same machine load.

    nice -n 10 python benchmarks/repaint_sps.py --teacher runs/<carracing run>/agent.pt

Writes benchmarks/results/repaint_sps.txt.
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch
import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPS = re.compile(r"^iteration \d+/\d+ step \d+.* SPS (\d+)$", re.M)


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
    runs_dir: str = "/tmp/repaint_sps"
    """where the (throw-away) runs go"""
    out: str = os.path.join(REPO_ROOT, "benchmarks", "results", "repaint_sps.txt")
    """the result file"""


def sps(argv: list[str]) -> int:
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "repaint_ppo.py"), *argv], capture_output=True,
                            text=True, cwd=REPO_ROOT, check=True)
    return int(SPS.findall(result.stdout)[-1])


def main(args: Args):
    common = ["--env", "carracing", "--runs-dir", args.runs_dir, "--eval-episodes", "0", "--num-envs", str(args.num_envs),
              "--num-steps", str(args.num_steps), "--total-timesteps", str(args.total_timesteps)]
    modes = {"none": []} | ({"repaint": ["--transfer", "repaint", "--teacher", args.teacher]} if args.teacher else {})
    results = {(mode, p): [] for mode in modes for p in ("fp32", "bf16")}
    for r in range(args.rounds):
        for mode, extra in modes.items():
            for precision in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                results[(mode, precision)].append(sps([*common, *extra, "--precision", precision, "--seed", str(r + 1)]))
                print(mode, precision, results[(mode, precision)][-1], flush=True)
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
        fp32, bf16 = results[(mode, "fp32")], results[(mode, "bf16")]
        ratios = [b / f for b, f in zip(bf16, fp32)]
        lines.append(f"| {mode} | {' '.join(map(str, fp32))} | {' '.join(map(str, bf16))} | "
                     f"{' '.join(f'{x:.2f}' for x in ratios)} | {np.mean(ratios):.2f} +- {np.std(ratios):.2f} |")
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
