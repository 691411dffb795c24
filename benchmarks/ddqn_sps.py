"""Speed of ddqn_relative.py: the default precision against fp32, measured interleaved in one run.

Runs the training script as a subprocess with benchmarks/interleave.py, the variants in turn (relative fp32,
relative at the default precision, then again), so that both see the same load on a shared machine, and prints each
run's SPS (the script's own end-of-run figure: environment steps per second of wall-clock; acting, replay sampling,
gradient steps, target syncs and anchor EMA steps included) and CPU seconds per 1000 steps, then the ratio
default / fp32. Learning starts after `--learning-starts` steps, so most of a run trains. It also prints the replay
memory's size per 100k transitions.

    python benchmarks/ddqn_sps.py                        # 2 rounds of 2 runs of 600 steps, 3136 anchors
    python benchmarks/ddqn_sps.py --components           # in-process CPU time of each part of a training step

`--components` times, in CPU seconds of this process, one gradient step (three batch forwards, backward, Adam), one
acting forward (batch 1), one anchor EMA step and one environment step, with the script's own networks, in fp32 and bf16 and
with the CNN in channels_last memory format or not, and gives the training steps per CPU-second of each.
"""

import argparse
import contextlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from benchmarks.interleave import cpu_seconds, medians, ratio_table, run_interleaved  # noqa: E402


def components(args) -> None:
    import gymnasium as gym
    import torch
    import torch.nn.functional as F

    from ddqn_relative import Args, Encoder, QNetwork, double_dqn_target, make_env

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    env = make_env(Args(bg_color=args.bg_color), patience=0)
    env.reset(seed=0)
    for _ in range(15):  # past the first second's zoom-in, whose frames are drawn the slow, exact way
        env.step(3)
    env_step = cpu_seconds(lambda: env.step(3), 50)
    print(f"environment step ({Args.action_repeat} frames): {1000 * env_step:.1f} ms CPU")
    gym.logger.min_level = 40
    obs = torch.randint(0, 256, (args.batch_size, 3, 84, 84), dtype=torch.uint8)
    anchors = torch.randint(0, 256, (args.num_anchors, 3, 84, 84), dtype=torch.uint8)
    rows = []
    for precision in ("fp32", "bf16"):
        for channels_last in (False, True):
            encoder, q_network = Encoder(1, True, args.num_anchors), QNetwork(args.num_anchors, 5)
            target_encoder, target_network = Encoder(1, True, args.num_anchors), QNetwork(args.num_anchors, 5)
            if channels_last:
                for module in (encoder, target_encoder):
                    module.cnn.to(memory_format=torch.channels_last)
            encoder.update_anchors(anchors)
            target_encoder.load_state_dict(encoder.state_dict())
            optimizer = torch.optim.Adam([*encoder.parameters(), *q_network.parameters()], lr=1e-4)
            batch = obs  # as in the script: only the weights are NHWC, the convolutions convert the input

            def amp():
                return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

            def gradient_step():
                with torch.no_grad(), amp():
                    online, target = q_network(encoder(batch)), target_network(target_encoder(batch))
                y = double_dqn_target(torch.zeros(len(batch)), torch.zeros(len(batch)), online.float(), target.float(), 0.99)
                with amp():
                    q_all = q_network(encoder(batch))
                loss = F.smooth_l1_loss(q_all.float()[:, 0], y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            def act():
                with torch.no_grad(), amp():
                    q_network.greedy_action(encoder(batch[:1]))

            def anchor_step():
                with amp():
                    encoder.update_anchors(anchors)

            grad, acting, ema = cpu_seconds(gradient_step, 10), cpu_seconds(act, 30), cpu_seconds(anchor_step, 2)
            updates_per_step = 1 / args.train_frequency
            per_step = env_step + acting + updates_per_step * (grad + ema / args.anchor_update_frequency)
            rows.append((precision, channels_last, grad, acting, ema, 1 / per_step))
            print(
                f"{precision} channels_last={channels_last!s:<5}  gradient step {1000 * grad:6.1f} ms  "
                f"act {1000 * acting:5.1f} ms  anchor EMA {1000 * ema:7.1f} ms  -> {1 / per_step:5.1f} training steps "
                "per CPU-second",
                flush=True,
            )
    base = rows[0][-1]
    for precision, channels_last, *_, speed in rows:
        print(f"{precision} channels_last={channels_last!s:<5}  {speed / base:.2f}x fp32 (contiguous)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="environment steps per run")
    parser.add_argument("--learning-starts", type=int, default=100, help="steps before the first gradient step")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of runs")
    parser.add_argument("--num-anchors", type=int, default=3136, help="anchors of the relative runs")
    parser.add_argument("--bg-color", default="green", help="background colour")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--components", action="store_true", help="time the parts of a training step in-process")
    parser.add_argument("--batch-size", type=int, default=32, help="(--components) replay batch size")
    parser.add_argument("--train-frequency", type=int, default=4, help="(--components) env steps per gradient step")
    parser.add_argument("--anchor-update-frequency", type=int, default=50, help="(--components) gradient steps per EMA")
    args = parser.parse_args()
    if args.components:
        components(args)
        return

    import torch

    from ddqn_relative import FrameReplayBuffer
    from envs.checkpoint import native_bf16

    buffer = FrameReplayBuffer(100_000, 1, 1)
    print(f"replay memory: {buffer.nbytes / 1e9:.3f} GB per 100k transitions ({buffer.nbytes / 2**30:.3f} GiB)")
    default = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    common = ["--total-timesteps", str(args.steps), "--learning-starts", str(args.learning_starts),
              "--num-anchors", str(args.num_anchors), "--bg-color", args.bg_color, "--torch-threads", str(args.torch_threads),
              "--eval-episodes", "0", "--save-every", "0", "--seed", "1"]  # fmt: skip
    variants = {"relative fp32": ["--precision", "fp32"], f"relative default ({default})": ["--precision", "auto"]}
    runs = run_interleaved("ddqn_relative.py", common, variants, args.repeats, args.steps)
    print(ratio_table(runs, "relative fp32"))
    med = medians(runs)
    ratio = med[f"relative default ({default})"]["sps"] / med["relative fp32"]["sps"]
    print(
        f"SPS ratio default ({default}) / fp32 = {ratio:.2f} ({args.steps} steps, learning from step "
        f"{args.learning_starts}, {args.num_anchors} anchors, {args.repeats} rounds)"
    )


if __name__ == "__main__":
    main()
