"""Untrusted files: pickle weights and a model's own code never run unless the user says so on the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from tasktune.cli import main


class _Payload:
    """Unpickling this creates a file: what a malicious weight file would do with a less harmless command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_model(tiny_model: Path, folder: Path, payload: object | None = None) -> Path:
    folder.mkdir()
    for f in tiny_model.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    state = load_file(tiny_model / "model.safetensors")
    torch.save(state if payload is None else {"weights": state, "x": payload}, folder / "pytorch_model.bin")
    return folder


def _train(task_dir: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--task", str(task_dir / "task.yaml"), "--model", str(model), "--out", str(out),
            "--max-steps", "1", "--precision", "fp32", *extra]  # fmt: skip


def test_pickle_model_weights_are_refused_before_anything_is_unpickled(tiny_model, task_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _pickle_model(tiny_model, tmp_path / "evil", _Payload(marker))
    assert main(_train(task_dir, evil, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "only pickle-based files (pytorch_model.bin)" in err and "--allow-pickle" in err
    assert "Traceback" not in err and not marker.exists()


def test_allow_pickle_loads_a_trusted_pickle_model(tiny_model, task_dir, tmp_path):
    plain = _pickle_model(tiny_model, tmp_path / "plain")
    assert main(_train(task_dir, plain, tmp_path / "run", "--allow-pickle")) == 0
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()  # what tasktune writes is safe


def test_pickle_adapter_is_refused_by_predict_unless_allowed(tiny_model, task_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(task_dir, tiny_model, run)) == 0
    adapter = run / "adapter"
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    capsys.readouterr()
    assert main(["predict", str(run), "--input", "hello", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert f"adapter folder {adapter} has no safetensors weights" in err and "adapter_model.bin" in err
    assert main(["predict", str(run), "--input", "hello", "--max-new-tokens", "2", "--allow-pickle"]) == 0


def test_model_code_runs_only_with_trust_remote_code(tiny_model, task_dir, tmp_path):
    """A model folder that ships Python (config.json `auto_map`): without the flag, transformers' own Llama classes
    load it and the folder's code never runs; with --trust-remote-code it does."""
    marker = tmp_path / "code-ran"
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model, folder)
    (folder / "configuration_custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import LlamaConfig\n\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'llama'\n"
    )
    (folder / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_custom import CustomConfig\n\n\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    assert main(_train(task_dir, folder, tmp_path / "safe")) == 0
    assert not marker.exists()
    assert main(_train(task_dir, folder, tmp_path / "trusted", "--trust-remote-code")) == 0
    assert marker.exists()
