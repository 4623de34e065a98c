"""Checkpoints, resume and stopping: real training processes killed, stopped and resumed on the tiny model."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasktune import checkpoint
from tasktune.checkpoint import find_checkpoint, verify
from tasktune.cli import main
from tasktune.config import TrainConfig, load_task
from tasktune.errors import TaskTuneError
from tasktune.rundir import read_metrics
from tasktune.train import resume_run, train

SRC = Path(__file__).resolve().parent.parent / "src"


def _cmd(task_dir: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tasktune", "train", "--task", str(task_dir / "task.yaml"), "--model", str(model),
            "--out", str(out), "--precision", "fp32", "--batch-size", "4", "--learning-rate", "5e-3",
            "--lora-dropout", "0.1", "--seed", "7", *extra]  # fmt: skip


def _env() -> dict:
    # One thread in every run, so that float sums happen in the same order in each (the bit-identity claim is per
    # thread count on CPU).
    return os.environ | {
        "PYTHONPATH": str(SRC),
        "TASKTUNE_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"training ended before the test could interrupt it:\n{proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the training process"
        time.sleep(0.02)


@pytest.mark.timeout(300)
def test_sigkill_mid_run_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tiny_model, task_dir, tmp_path):
    """Dropout is on, so the RNG states must be restored too; the data position must continue mid-epoch (12 batches
    per epoch, checkpoints every 5 steps). LoRA+ is on, so the optimizer has several parameter groups to restore;
    NEFTune is on, so the resumed run must put its noise hook back and draw the same noise."""
    steps = ["--max-steps", "40", "--save-every", "5", "--keep-checkpoints", "2", "--lora-plus-lr-ratio", "4",
             "--neftune-noise-alpha", "5"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(_cmd(task_dir, tiny_model, whole, *steps), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(_cmd(task_dir, tiny_model, killed, *steps), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(lambda: (killed / "checkpoints" / "step-00000010").is_dir(), proc)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "adapter").exists()  # it really died mid-run
    killed_at = find_checkpoint(killed, tidy=False).state.step
    assert 10 <= killed_at < 40

    resumed = subprocess.run([sys.executable, "-m", "tasktune", "train", "--resume", str(killed)], env=_env(),
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {killed} from step {killed_at}" in resumed.stdout
    _assert_same_weights(_adapter(killed), _adapter(whole))  # bit-identical
    a, b = read_metrics(killed), read_metrics(whole)
    assert [r["step"] for r in a] == list(range(1, 41))  # every step once: none lost, none logged twice
    assert [r["train/loss"] for r in a] == [r["train/loss"] for r in b]
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-00000035", "step-00000040"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_step_saves_and_says_how_to_resume(tiny_model, task_dir, tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(task_dir, tiny_model, run, "--max-steps", "30", "--save-every", "0"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = run / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    step = read_metrics(run)[-1]["step"]
    assert 3 <= step < 30
    assert f"stopped by {signal.Signals(sig).name} after step {step} of 30" in err
    assert f"resume with: tasktune train --resume {run}" in err
    assert "Traceback" not in err
    assert verify(run / "checkpoints" / f"step-{step:08d}").step == step  # the save happened, and is complete
    assert main(["train", "--resume", str(run)]) == 0
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 31))


def _short_run(tiny_model, task_dir, out, **settings):
    settings = {"precision": "fp32"} | settings
    cfg = TrainConfig(model=str(tiny_model), max_steps=6, batch_size=4, learning_rate=5e-3, save_every=2,
                      keep_checkpoints=3, **settings)  # fmt: skip
    return train(load_task(task_dir / "task.yaml"), cfg, out)


def test_damaged_checkpoint_is_reported_and_skipped_for_the_one_before(tiny_model, task_dir, tmp_path, capsys):
    run = tmp_path / "run"
    _short_run(tiny_model, task_dir, run)
    final = _adapter(run)
    newest = run / "checkpoints" / "step-00000006" / "trainable.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a bad copy
    stale = run / "checkpoints" / ".step-00000008.x1y2.tmp"  # a save that was interrupted
    stale.mkdir()
    capsys.readouterr()

    resume_run(run)
    out = capsys.readouterr().out
    assert f"skipped checkpoint step-00000006: trainable.safetensors has {len(data) // 2} bytes, {len(data)}" in out
    assert "skipped checkpoint .step-00000008.x1y2.tmp: an interrupted save" in out
    assert "from step 4" in out
    assert (run / "checkpoints" / "step-00000006.damaged").is_dir() and not stale.exists()
    _assert_same_weights(_adapter(run), final)  # steps 5-6 retrained from step 4 give the same weights
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]


def test_resume_keeps_the_precision_auto_chose_when_the_run_started(tiny_model, task_dir, tmp_path, monkeypatch):
    """A run started where 'auto' means fp32, resumed where it would mean bf16 (another machine), ends with the
    weights of the uninterrupted fp32 run."""
    import shutil

    from tasktune import runtime

    monkeypatch.setattr(runtime, "bf16_supported", lambda: False)
    run = tmp_path / "run"
    _short_run(tiny_model, task_dir, run, precision="auto")
    final = _adapter(run)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    monkeypatch.setattr(runtime, "bf16_supported", lambda: True)
    assert runtime.resolve_precision("auto") == "bf16"
    resume_run(run)
    _assert_same_weights(_adapter(run), final)
    assert json.loads((run / "env.json").read_text())["precision"] == "fp32"


def test_checkpoint_with_a_changed_byte_or_no_state_is_not_used(tiny_model, task_dir, tmp_path):
    run = tmp_path / "run"
    _short_run(tiny_model, task_dir, run)
    opt = run / "checkpoints" / "step-00000006" / "optimizer.safetensors"
    data = bytearray(opt.read_bytes())
    data[-1] ^= 1  # same size, one bit flipped
    opt.write_bytes(bytes(data))
    (run / "checkpoints" / "step-00000004" / "state.json").unlink()
    found = find_checkpoint(run, tidy=False)
    assert found.path.name == "step-00000002"
    reasons = dict((p.name, why) for p, why in found.skipped)
    assert "optimizer.safetensors does not match its recorded sha256" in reasons["step-00000006"]
    assert "state.json is missing" in reasons["step-00000004"]


@pytest.mark.parametrize("fault", ["ENOSPC while writing", "EACCES creating the folder"])
def test_save_fault_keeps_the_previous_checkpoint_and_says_so(tiny_model, task_dir, tmp_path, monkeypatch, fault):
    calls = {"n": 0}
    if fault.startswith("ENOSPC"):
        real = checkpoint.save_file

        def failing(tensors, path, *a, **k):
            calls["n"] += 1
            if calls["n"] > 3:  # the second checkpoint (3 files per checkpoint)
                real(tensors, path, *a, **k)  # half the checkpoint is on disk when the disk fills up
                raise OSError(errno.ENOSPC)
            return real(tensors, path, *a, **k)

        monkeypatch.setattr(checkpoint, "save_file", failing)
    else:
        real = tempfile.mkdtemp

        def failing(*a, **k):
            calls["n"] += 1
            if calls["n"] > 1:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real(*a, **k)

        monkeypatch.setattr(tempfile, "mkdtemp", failing)
    run = tmp_path / "run"
    with pytest.raises(TaskTuneError) as info:
        _short_run(tiny_model, task_dir, run)
    message = str(info.value)
    reason = "No space left on device" if fault.startswith("ENOSPC") else "Permission denied"
    assert f"cannot write checkpoint {run / 'checkpoints' / 'step-00000004'}: {reason}" in message
    assert f"the previous checkpoint {run / 'checkpoints' / 'step-00000002'} is intact" in message
    assert f"tasktune train --resume {run}" in message
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]  # no half-written folder left
    assert verify(run / "checkpoints" / "step-00000002").step == 2


def test_resume_refuses_settings_that_change_the_trajectory(tiny_model, task_dir, tmp_path, capsys):
    run = tmp_path / "run"
    _short_run(tiny_model, task_dir, run)
    (run / "checkpoints" / "step-00000006").rename(run / "checkpoints" / "step-00000006.moved")
    assert main(["train", "--resume", str(run), "--learning-rate", "0.1", "--lora-r", "4"]) == 2
    err = capsys.readouterr().err
    assert "--learning-rate (run: 0.005), --lora-r (run: 16) would change the training trajectory" in err
    assert main(["train", "--resume", str(run), "--task", "x.yaml"]) == 2
    assert "--resume continues a run with its own task" in capsys.readouterr().err
    (task_dir / "train.jsonl").write_text((task_dir / "train.jsonl").read_text() + "\n")
    assert main(["train", "--resume", str(run), "--save-every", "1"]) == 2  # allowed flag, but the data changed
    assert "train.jsonl is missing or changed since the run started" in capsys.readouterr().err
