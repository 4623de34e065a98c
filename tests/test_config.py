from __future__ import annotations

import pytest

from tasktune.config import TrainConfig, load_task, merge_overrides
from tasktune.errors import ConfigError


def test_unknown_and_mistyped_keys_are_all_reported(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("name: t\ninstructions: typo\ntrain:\n  learning_rat: 0.1\n  batch_size: many\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_task(path)
    msg = str(e.value)
    assert "unknown key 'instructions' (did you mean 'instruction'?)" in msg
    assert "unknown key 'train.learning_rat' (did you mean 'learning_rate'?)" in msg
    assert "key 'train.batch_size'" in msg and "'many'" in msg


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("name: t\ndata: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"task.yaml:\d+: not valid YAML"):
        load_task(path)


def test_overrides_are_validated():
    cfg = merge_overrides(TrainConfig(), {"lora.r": 4, "learning_rate": 1e-3})
    assert cfg.lora.r == 4 and cfg.resolved_learning_rate() == 1e-3
    with pytest.raises(ConfigError, match="batch_size"):
        merge_overrides(TrainConfig(), {"batch_size": 0})


def test_method_default_learning_rates():
    assert TrainConfig(method="lora").resolved_learning_rate() == 2e-4
    assert TrainConfig(method="full").resolved_learning_rate() == 5e-5


def test_shipped_example_task_files_validate():
    from pathlib import Path

    tasks = list(Path(__file__).parent.parent.joinpath("examples").glob("*/task.yaml"))
    assert tasks
    for path in tasks:
        task = load_task(path)
        assert task.data_path("train").is_file()
        if task.output.kind == "json":
            task.json_schema()


def test_model_names_users_write_find_the_builtin_copy(monkeypatch, tmp_path, capsys):
    from tasktune import models
    from tasktune.errors import ModelError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setattr(models, "_builtin_folder", lambda name: tmp_path / name)
    for spec in ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"):
        ref = models.resolve_model(spec)
        assert ref.path == tmp_path / "smollm2-135m-instruct", spec
    assert "using the built-in 'smollm2-135m-instruct'" in capsys.readouterr().err
    with pytest.raises(ModelError, match="is not a built-in name"):
        models.resolve_model("SmolLM2-360M-Instruct")
