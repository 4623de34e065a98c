from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny import build_tiny_model, make_rows, write_jsonl

os.environ.setdefault("TASKTUNE_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture
def task_dir(tmp_path) -> Path:
    """A small JSON task: train/eval/test files and a task.yaml pointing at them."""
    write_jsonl(tmp_path / "train.jsonl", make_rows(48, seed=1))
    write_jsonl(tmp_path / "eval.jsonl", make_rows(8, seed=2))
    write_jsonl(tmp_path / "test.jsonl", make_rows(8, seed=3))
    (tmp_path / "task.yaml").write_text(
        "name: tiny\n"
        "instruction: Classify the message. Answer with JSON with keys kind and urgent.\n"
        "output: {kind: json}\n"
        "data: {train: train.jsonl, eval: eval.jsonl, test: test.jsonl}\n",
        encoding="utf-8",
    )
    return tmp_path


@pytest.fixture
def tasktune_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TASKTUNE_HOME", str(home))
    return home
