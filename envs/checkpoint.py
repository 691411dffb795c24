"""Run plumbing shared by every trainer and evaluation tool: checkpoints, clean stops, one error style.

* `save_atomic(payload, path)` writes a torch file atomically (temporary file in the same folder, fsync,
  `os.replace`): a crash or a signal mid-write leaves the previous checkpoint intact.
* `load_torch_file(path, accepted)` loads a file with `weights_only=True` on the CPU; anything that is not a
  torch file of plain tensors and containers raises a one-line `ValueError` saying so (torch's own advice to
  retry with `weights_only=False`, i.e. to run arbitrary code from the file, is never relayed).
* The CarRacing agent contract (docs/checkpoints.md): `AGENT_FORMAT`, `agent_payload` and
  `load_agent_checkpoint`, which also upgrades older metadata (`task="far"` -> `view="far"`, `task="standard"`).
* `GracefulStop` turns SIGINT (Ctrl-C) and SIGTERM into a flag the training loop polls between steps, so a run
  finishes its step, writes its checkpoint and exits with 128 + the signal number (130 / 143).
* `ensure_writable_dir(path, flag)` checks an output folder before any work is done; `fail(message)` prints
  `error: message` on one line and exits with status 2.
* `resolve_precision(precision, device)`: the trainers' `--precision auto` rule (`native_bf16(device)`).
* `resume_args(args, stored, run_flags)`: nanoGPT-style resume, the same rule in every trainer.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import tempfile
import zipfile
from typing import NoReturn

import torch

AGENT_FORMAT = "r3l-agent-v1"
AGENT_FILE = "agent.pt"
VIEWS = ("near", "far")
AGENT_METADATA = (
    "algorithm", "bg_color", "view", "task", "reward", "frame_stack", "num_actions", "relative", "anchor_set_id",
    "num_anchors", "anchor_standardize", "latent_dim", "seed", "global_step", "args",
)  # fmt: skip


def fail(message: str) -> NoReturn:
    """The collection's one error style: `error: <what is wrong and what is accepted>` on stderr, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def ensure_writable_dir(path: str, flag: str) -> str:
    """Create `path` if needed and check that a file can be written in it; raise a one-line ValueError otherwise.
    Call it before the work whose results go there."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(
            f"{flag} {path!r} is not a writable folder ({e.strerror or type(e).__name__}); "
            "accepted: a folder this process can create and write to"
        ) from None
    return path


def native_bf16(device: torch.device) -> bool:
    """The rule behind --precision auto: bf16 where the device multiplies bf16 matrices natively (CUDA GPUs with
    bf16; CPUs with AMX or AVX512-BF16, where bf16 matrix products run 3-4x faster than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    """`--precision` as a trainer runs it: "auto" becomes "bf16" where the device multiplies bf16 natively and "fp32"
    elsewhere (on a CPU without bf16 units autocast emulates bf16: 9-23x slower than fp32 in the benchmarks)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def resume_args(args, stored: dict, run_flags, keep=("resume",)):
    """nanoGPT-style resume: a copy of the dataclass `args` with the flags of the resumed run (`stored`), except the
    run flags (budget, threads, precision, ...) given on the command line and the fields in `keep` (the checkpoint
    path itself). Raises a one-line ValueError for a flag that would describe another run.

    A flag left at its default keeps the stored value (a flag newer than the checkpoint: its default), so
    `--resume PATH` alone continues the run as it was. A run flag given with another value replaces the stored one.
    Any other flag given with a value different from the stored one is refused, not silently ignored."""
    defaults, merged = vars(type(args)()), {}
    for name, value in vars(args).items():
        saved = stored.get(name, defaults[name])
        if name not in keep and name not in run_flags and value not in (defaults[name], saved):
            free = ", ".join("--" + flag.replace("_", "-") for flag in run_flags)
            raise ValueError(
                f"--{name.replace('_', '-')} {value!r} differs from the resumed run's {saved!r}; "
                f"accepted: leave it out or pass the stored value (only {free} may change)"
            )
        merged[name] = saved if value == defaults[name] and name not in keep else value
    return type(args)(**merged)


def save_atomic(payload: dict, path: str) -> None:
    """torch.save `payload` to `path` atomically: a temporary file next to it, fsync, then os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def load_torch_file(path: str, accepted: str):
    """`torch.load(path, map_location="cpu", weights_only=True)` with one-line ValueErrors that end in `accepted`."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist; {accepted}")
    not_torch = ValueError(f"{path!r} is not a checkpoint of this collection (not a readable torch file); {accepted}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not ours
        raise not_torch
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a torch file whose objects weights_only refuses: written by something else
        raise ValueError(f"{path!r} holds objects other than tensors and containers; {accepted}") from None
    except Exception:  # a damaged archive: torch raises RuntimeError, EOFError, KeyError, ... depending on the damage
        raise not_torch from None


def agent_payload(encoder: torch.nn.Module, policy: torch.nn.Module, metadata: dict, training_state: dict) -> dict:
    """The `r3l-agent-v1` dictionary: fp32 CPU tensors, whatever precision or device the run trained in."""

    def fp32_cpu(module: torch.nn.Module) -> dict:
        return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu() for k, v in module.state_dict().items()}

    return {"format": AGENT_FORMAT, "encoder": fp32_cpu(encoder), "policy": fp32_cpu(policy), "metadata": metadata,
            "training_state": training_state}  # fmt: skip


def load_agent_checkpoint(path: str) -> dict:
    """Load a CarRacing agent checkpoint (`runs/{run_name}/agent.pt` or its folder) and validate its layout.

    Metadata written before the camera was separated from the task is upgraded in place: `task="far"` becomes
    `view="far"`, `task="standard"`; any other old checkpoint gets `view="near"`."""
    accepted = f"accepted: a runs/{{run_name}}/{AGENT_FILE} written by ppo_relative.py, ddqn_relative.py or repaint_ppo.py"
    if os.path.isdir(path):
        path = os.path.join(path, AGENT_FILE)
    checkpoint = load_torch_file(path, accepted)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != AGENT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
        what = f"has format {found!r}" if isinstance(found, str) else "is not a checkpoint of this collection"
        raise ValueError(f"{path!r} {what} (expected {AGENT_FORMAT!r}); {accepted}")
    missing = [k for k in ("encoder", "policy", "metadata", "training_state") if not isinstance(checkpoint.get(k), dict)]
    if not missing:
        metadata = checkpoint["metadata"]
        if "view" not in metadata and "task" in metadata:
            far = metadata["task"] == "far"
            metadata["view"], metadata["task"] = ("far", "standard") if far else ("near", metadata["task"])
            if isinstance(metadata.get("args"), dict):
                metadata["args"]["view"], metadata["args"]["task"] = metadata["view"], metadata["task"]
        missing = [f"metadata.{k}" for k in AGENT_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"{path!r} lacks {', '.join(missing)}; {accepted}")
    return checkpoint


class GracefulStop:
    """SIGINT / SIGTERM -> a request that the training loop polls at a step boundary.

        stop = GracefulStop().install()      # or, around a block: with GracefulStop() as stop:
            for step in ...:
                ...
                if stop.requested:
                    save(); stop.exit(f"checkpoint at {path}; resume with ...")

    A second signal while the first is being handled stops at once (the default behaviour of that signal)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: do not wait for the step to finish
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def install(self) -> "GracefulStop":
        """Take over SIGINT and SIGTERM for the rest of the process (a script's main: `stop = GracefulStop().install()`)."""
        return self.__enter__()

    def __enter__(self) -> "GracefulStop":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner's worker): leave the signals alone
                break
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or 0)

    def exit(self, message: str) -> NoReturn:
        """Print one line naming the signal and `message` (where the checkpoint is, how to resume); exit 128 + signum."""
        print(f"stopped by {signal.Signals(self.signum).name}: {message}", file=sys.stderr)
        sys.exit(self.exit_code)
