"""CarRacing environment throughput: gymnasium's renderer vs the fast state renderer.

Measures, in one run, single-process steps/s of

* gymnasium's ``CarRacing-v3`` (discrete actions),
* ``ColorCarRacing-v0`` with ``render_backend="gymnasium"`` and with ``"fast"``,
* physics only: ``ColorCarRacing`` with the state frame replaced by a constant (the ceiling),

then the fast backend's vectorised throughput with ``--num-envs`` environments (sync and async),
and the fidelity of the fast frames (mean |fast - gymnasium| per channel of the 84x84 preprocessed
frames, on the same states). The single-process measurements interleave short rounds of every
environment (benchmarks/interleave.py), so that on a shared machine they all see the same load (steps
per CPU second are printed too: they depend less on the load). The last line is
``speedup_vs_gymnasium: <fast / CarRacing-v3>``.

    python benchmarks/env_throughput.py | tee benchmarks/results/env_throughput.txt
"""

import os
import sys
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import envs  # noqa: E402,F401  (registers ColorCarRacing-v0)
from benchmarks.interleave import interleave  # noqa: E402
from envs.car_racing import ColorCarRacing, preprocess_frame  # noqa: E402
from envs.fast_render import camera_zoom  # noqa: E402


@dataclass
class Args:
    rounds: int = 5
    """interleaved measurement rounds per environment"""
    round_seconds: float = 2.0
    """seconds each environment steps per round"""
    num_envs: int = os.cpu_count() or 2
    """environments of the vector-env measurements"""
    vector_seconds: float = 10.0
    """seconds of each vector-env measurement"""
    fidelity_states: int = 240
    """steady-zoom states of the fidelity measurement, after each episode's 50 zoom-in states
    (gymnasium's renderer draws each one)"""
    seed: int = 0


class PhysicsOnlyCarRacing(ColorCarRacing):
    """ColorCarRacing whose state frame is a constant: gymnasium's step without rendering."""

    BLANK = np.zeros((96, 96, 3), dtype=np.uint8)

    def _render(self, mode: str):
        return self.BLANK if mode == "state_pixels" else super()._render(mode)


GYMNASIUM, COLOR_GYMNASIUM, COLOR_FAST, PHYSICS = (
    "CarRacing-v3",
    "ColorCarRacing-v0 gymnasium",
    "ColorCarRacing-v0 fast",
    "physics only",
)
MAKERS = {
    GYMNASIUM: lambda: gym.make("CarRacing-v3", continuous=False),
    COLOR_GYMNASIUM: lambda: gym.make("ColorCarRacing-v0", render_backend="gymnasium"),
    COLOR_FAST: lambda: gym.make("ColorCarRacing-v0", render_backend="fast"),
    PHYSICS: lambda: gym.wrappers.OrderEnforcing(PhysicsOnlyCarRacing()),
}


def drive(env: gym.Env, seconds: float, rng: np.random.Generator) -> int:
    """Steps with random actions (mostly gas) for `seconds`; returns the number of steps. The actions
    are drawn in blocks beforehand, so that the timing is the environment's alone."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for action in rng.choice(5, size=256, p=(0.1, 0.15, 0.15, 0.5, 0.1)).tolist():
            _, _, terminated, truncated, _ = env.step(action)
            steps += 1
            if terminated or truncated:
                env.reset()
    return steps


def single_process(args: Args) -> dict[str, float]:
    envs_ = {name: make() for name, make in MAKERS.items()}
    for env in envs_.values():
        env.reset(seed=args.seed)
    rng = np.random.default_rng(args.seed)

    def measure(name: str, env: gym.Env) -> dict:
        start, cpu_start = time.perf_counter(), time.process_time()
        steps = drive(env, args.round_seconds, rng)
        return {"steps": steps, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}

    rounds = interleave(measure, envs_, args.rounds)
    total = {name: {key: sum(r[key] for r in rows) for key in rows[0]} for name, rows in rounds.items()}
    for name, t in total.items():
        print(f"  {name:32s} {t['steps'] / t['seconds']:9.1f} steps/s  ({t['steps'] / t['cpu_seconds']:.1f} per CPU second)")
    return {name: t["steps"] / t["seconds"] for name, t in total.items()}


def vectorised(args: Args, asynchronous: bool) -> float:
    fns = [lambda: gym.make("ColorCarRacing-v0") for _ in range(args.num_envs)]
    env = gym.vector.AsyncVectorEnv(fns) if asynchronous else gym.vector.SyncVectorEnv(fns)
    env.reset(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    env.step(rng.integers(0, 5, args.num_envs))  # start-up (async workers) outside the timing
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.vector_seconds:
        env.step(rng.integers(0, 5, args.num_envs))  # vector envs reset finished episodes themselves
        steps += args.num_envs
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


ZOOM_IN_STEPS = 50  # the first second: the camera zooms in (the fast backend's exact rasteriser)


def fidelity(args: Args) -> tuple[np.ndarray, np.ndarray]:
    """Mean per channel |fast - gymnasium| / 255 of the preprocessed frames, over colours and tasks:
    (after the zoom-in: the ground texture, or the exact rasteriser where the view reaches past the
    playfield; during the zoom-in)."""
    configs = [("green", "standard"), ("red", "far"), ("#3050a0", "slow"), ("pink", "scrambled")]
    rng = np.random.default_rng(args.seed)
    steady, zoom_in = [], []
    for k, (bg_color, task) in enumerate(configs):
        env = ColorCarRacing(bg_color=bg_color, task=task, render_backend="gymnasium")
        env.reset(seed=args.seed + k)
        for step in range(ZOOM_IN_STEPS + args.fidelity_states // len(configs)):
            action = 3 if step < ZOOM_IN_STEPS else int(rng.choice(5, p=(0.1, 0.2, 0.2, 0.4, 0.1)))
            obs, *_ = env.step_gym_action(action)
            fast = env.state_renderer.render(env.car, camera_zoom(env.t, env.zoom), env.reward)
            diff = np.abs(preprocess_frame(obs).astype(np.float64) - preprocess_frame(fast))
            (zoom_in if step < ZOOM_IN_STEPS else steady).append(diff.mean(axis=(1, 2)) / 255)
    return np.mean(steady, axis=0), np.mean(zoom_in, axis=0)


def main(args: Args) -> None:
    print(
        f"env_throughput: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}, "
        f"{args.rounds} interleaved rounds of {args.round_seconds:.1f} s"
    )
    rates = single_process(args)
    for asynchronous in (False, True):
        kind = "async" if asynchronous else "sync"
        name = f"vector {kind} x{args.num_envs} fast"
        print(f"  {name:32s} {vectorised(args, asynchronous):9.1f} steps/s (all envs together)")
    steady, zoom_in = fidelity(args)
    print(
        f"fidelity: mean |fast - gymnasium| per channel (RGB, x255), {args.fidelity_states} states after the "
        f"zoom-in {' '.join(f'{e * 255:.2f}' for e in steady)}, {4 * ZOOM_IN_STEPS} during it "
        f"{' '.join(f'{e * 255:.2f}' for e in zoom_in)}; bound 4"
    )
    print(f"fast / physics only: {rates[COLOR_FAST] / rates[PHYSICS]:.2f}")
    print(f"speedup_vs_gymnasium: {rates[COLOR_FAST] / rates[GYMNASIUM]:.1f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
