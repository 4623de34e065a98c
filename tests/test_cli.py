"""The command line: the real entry point on the tiny model, and one clear message (exit 2) for each bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasktune.cli import main


def _train_args(task_dir: Path, tiny_model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--task",
        str(task_dir / "task.yaml"),
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--precision",
        "fp32",
        "--no-diagnose",  # the run doctor has its own tests (test_diagnose.py)
        *extra,
    ]


def test_train_then_predict_through_the_cli(tiny_model, task_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(task_dir, tiny_model, run, "--lora-r", "4")) == 0
    assert "run saved to" in capsys.readouterr().out
    cfg = (run / "config.yaml").read_text()
    assert "r: 4" in cfg and "max_steps: 2" in cfg
    preds = tmp_path / "preds.jsonl"
    assert (
        main(
            ["predict", str(run), "--file", str(task_dir / "test.jsonl"), "--out", str(preds), "--max-new-tokens", "6"]
        )
        == 0
    )
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 8
    assert {"input", "output", "valid_json", "prompt_tokens", "generated_tokens", "stopped"} <= set(rows[0])
    assert all(r["generated_tokens"] <= 6 for r in rows)
    assert main(["predict", str(run), "--input", "urgent refund please", "--max-new-tokens", "4"]) == 0


def test_full_method_through_the_cli(tiny_model, task_dir, tmp_path):
    run = tmp_path / "run"
    assert main(_train_args(task_dir, tiny_model, run, "--method", "full")) == 0
    assert (run / "model" / "model.safetensors").is_file()
    assert main(["predict", str(run), "--input", "hello", "--max-new-tokens", "3"]) == 0


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_malformed_jsonl_line(tiny_model, task_dir, tmp_path, capsys):
    with open(task_dir / "train.jsonl", "a") as f:
        f.write('{"input": "cut off\n')
    err = _error(capsys, _train_args(task_dir, tiny_model, tmp_path / "run"))
    assert f"{task_dir / 'train.jsonl'}:49: not valid JSON" in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_missing_field(tiny_model, task_dir, tmp_path, capsys):
    with open(task_dir / "train.jsonl", "a") as f:
        f.write(json.dumps({"input": "no output here"}) + "\n")
    err = _error(capsys, _train_args(task_dir, tiny_model, tmp_path / "run"))
    assert "train.jsonl:49: no answer: add 'output'" in err


def test_unknown_config_key(tiny_model, task_dir, tmp_path, capsys):
    (task_dir / "task.yaml").write_text((task_dir / "task.yaml").read_text() + "train: {epoch: 3}\n")
    err = _error(capsys, _train_args(task_dir, tiny_model, tmp_path / "run"))
    assert "unknown key 'train.epoch' (did you mean 'epochs'?)" in err


def test_unwritable_output_folder(tiny_model, task_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = _error(capsys, _train_args(task_dir, tiny_model, blocker / "run"))
    assert "run folder" in err and "not writable" in err
    assert blocker.read_text() == "not a folder"


def test_existing_run_is_never_overwritten(tiny_model, task_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    err = _error(capsys, _train_args(task_dir, tiny_model, run))
    assert "already exists and is not empty" in err
    assert (run / "precious.txt").read_text() == "keep me"


def test_missing_model_and_hub_id(task_dir, tmp_path, capsys):
    err = _error(capsys, _train_args(task_dir, tmp_path / "no-such-model.gguf", tmp_path / "run"))
    assert "does not exist" in err
    err = _error(capsys, _train_args(task_dir, Path("someorg/some-model"), tmp_path / "run2"))
    assert "never downloads weights" in err and "--model DIR" in err


def test_predict_failure_keeps_the_previous_output(tiny_model, task_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(task_dir, tiny_model, run)) == 0
    preds = tmp_path / "preds.jsonl"
    preds.write_text("earlier results\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": 1}\n')
    err = _error(capsys, ["predict", str(run), "--file", str(bad), "--out", str(preds)])
    assert "bad.jsonl:1: field 'input' must be a string" in err
    assert preds.read_text() == "earlier results\n"


def test_predict_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    err = _error(capsys, ["predict", str(tmp_path), "--input", "x"])
    assert "is not a tasktune run" in err


@pytest.mark.timeout(120)
def test_installed_entry_point_exits_2_without_traceback(task_dir, tmp_path):
    exe = Path(sys.executable).with_name("tasktune")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tasktune"]
    proc = subprocess.run(
        [*cmd, "train", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env={**os.environ, "TASKTUNE_HOME": str(tmp_path)},
    )
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr and "missing.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr
