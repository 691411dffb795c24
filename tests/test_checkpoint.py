"""envs/checkpoint.py: atomic writes, weights_only loads with one-line errors, the agent contract's upgrade of
older metadata, the resume rule, writable-folder checks, and SIGINT / SIGTERM turned into a clean stop (exit 130 / 143)."""

import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from conftest import REPO_ROOT, save_agent_checkpoint

from envs.checkpoint import (
    ensure_writable_dir,
    load_agent_checkpoint,
    load_torch_file,
    native_bf16,
    resolve_precision,
    resume_args,
    save_atomic,
)

ACCEPTED = "accepted: a test file"


def test_save_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "agent.pt"
    save_atomic({"step": 1}, str(path))
    save_atomic({"step": 2}, str(path))
    assert os.listdir(tmp_path) == ["agent.pt"] and load_torch_file(str(path), ACCEPTED) == {"step": 2}


def test_random_bytes_and_foreign_pickles_get_one_line_without_torchs_advice(tmp_path):
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.pt"
    torch.save({"weights": torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    foreign = tmp_path / "foreign.pt"
    torch.save({"config": zipfile.ZipInfo("x")}, foreign)  # an arbitrary Python object: weights_only refuses it
    for path, expected in ((random_bytes, "is not a checkpoint of this collection"), (truncated, "is not a checkpoint"),
                           (foreign, "holds objects other than tensors and containers"),
                           (tmp_path / "missing.pt", "does not exist")):  # fmt: skip
        with pytest.raises(ValueError) as error:
            load_torch_file(str(path), ACCEPTED)
        message = str(error.value)
        assert expected in message and message.endswith(ACCEPTED) and "\n" not in message
        assert "weights_only" not in message and "arbitrary code" not in message


def test_agent_checkpoints_written_before_the_view_flag_are_upgraded(tmp_path):
    for old_task, expected in (("far", ("far", "standard")), ("slow", ("near", "slow"))):
        path = save_agent_checkpoint(tmp_path / old_task / "agent.pt", "red", task=old_task)
        raw = torch.load(path, weights_only=True)
        del raw["metadata"]["view"]
        raw["metadata"]["args"] = {"task": old_task}
        torch.save(raw, path)
        metadata = load_agent_checkpoint(str(path.parent))["metadata"]
        assert (metadata["view"], metadata["task"]) == expected
        assert (metadata["args"]["view"], metadata["args"]["task"]) == expected


def test_agent_checkpoint_tensors_are_fp32_whatever_the_module_dtype(tmp_path):
    from envs.checkpoint import agent_payload

    encoder, policy = torch.nn.Linear(3, 4).to(torch.bfloat16), torch.nn.Linear(4, 2).double()
    payload = agent_payload(encoder, policy, {}, {})
    assert all(t.dtype == torch.float32 for part in ("encoder", "policy") for t in payload[part].values())


def test_an_uncreatable_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file, not a folder")  # tests run as root: chmod would not stop writes
    with pytest.raises(ValueError) as error:
        ensure_writable_dir(str(blocker / "runs"), "--runs-dir")
    assert str(error.value).startswith(f"--runs-dir {str(blocker / 'runs')!r} is not a writable folder (Not a directory)")
    assert ensure_writable_dir(str(tmp_path / "new" / "runs"), "--runs-dir") == str(tmp_path / "new" / "runs")


LOOP = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from envs.checkpoint import GracefulStop
    with GracefulStop() as stop:
        print("ready", flush=True)
        steps = 0
        while not stop.requested:  # a training loop: finish the step, then look
            time.sleep(0.01)
            steps += 1
        stop.exit(f"checkpoint at runs/x/agent.pt after {{steps}} steps")
""")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_graceful_stop_finishes_the_step_and_exits_128_plus_the_signal(signum, code):
    process = subprocess.Popen([sys.executable, "-c", LOOP.format(root=str(REPO_ROOT))], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert stderr.startswith(f"stopped by {signal.Signals(signum).name}: checkpoint at runs/x/agent.pt after ")
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


@dataclass
class ToyArgs:
    total_timesteps: int = 100
    precision: str = "auto"
    latent_dim: int = 64
    lr: float = 1e-3
    new_flag: int = 7  # newer than the checkpoint below
    resume: Optional[str] = None


def test_resume_keeps_the_stored_flags_lets_run_flags_change_and_refuses_other_changes():
    stored = {"total_timesteps": 500, "precision": "bf16", "latent_dim": 32, "lr": 3e-4, "resume": None}
    run_flags = ("total_timesteps", "precision")
    # only the checkpoint given: the run as it was (a flag newer than the checkpoint takes its default)
    resumed = resume_args(ToyArgs(resume="runs/x/agent.pt"), stored, run_flags)
    assert resumed == ToyArgs(500, "bf16", 32, 3e-4, 7, resume="runs/x/agent.pt")
    # a run flag given: it replaces the stored value; an architecture flag given with its stored value is accepted
    resumed = resume_args(ToyArgs(total_timesteps=900, latent_dim=32, resume="p"), stored, run_flags)
    assert resumed == ToyArgs(900, "bf16", 32, 3e-4, 7, resume="p")
    # any other flag that disagrees with the checkpoint is refused, in one line that names it and what may change
    with pytest.raises(ValueError) as refused:
        resume_args(ToyArgs(lr=1e-2, resume="p"), stored, run_flags)
    assert str(refused.value) == (
        "--lr 0.01 differs from the resumed run's 0.0003; accepted: leave it out or pass the stored value "
        "(only --total-timesteps, --precision may change)"
    )
    with pytest.raises(ValueError, match="--new-flag 8 differs from the resumed run's 7"):
        resume_args(ToyArgs(new_flag=8, resume="p"), stored, run_flags)


def test_auto_precision_is_bf16_only_where_the_device_has_bf16_units():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
