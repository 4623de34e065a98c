"""benchmarks/real_tasks.py: the TF-IDF baseline learns a keyword rule, and --train-flag parses like the CLI's flags."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_tasks.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("real_tasks_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(n: int, seed: int) -> tuple[list[str], list[str]]:
    """The label is decided by one keyword among filler words; labels come in mixed case, as people type them."""
    rng = random.Random(seed)
    keywords = {"refund": "Billing", "crash": "bug", "password": "account"}
    filler = ["the", "app", "my", "today", "please", "help", "with", "it", "is", "again", "since", "update"]
    texts, labels = [], []
    for _ in range(n):
        word = rng.choice(list(keywords))
        words = [*rng.sample(filler, 5), word]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(keywords[word].upper() if rng.random() < 0.2 else keywords[word])
    return texts, labels


def test_tfidf_baseline_learns_a_keyword_rule(bench):
    from tasktune.metrics import normalise

    train_texts, train_labels = _rows(60, seed=1)
    test_texts, test_labels = _rows(40, seed=2)
    preds, c = bench.tfidf_baseline(train_texts, train_labels, test_texts, seed=0)
    accuracy = sum(normalise(p) == normalise(r) for p, r in zip(preds, test_labels, strict=True)) / len(preds)
    assert accuracy > 0.9
    assert c in bench.C_GRID
    assert set(preds) <= {"Billing", "bug", "account"}  # each class answered in its most common spelling


def test_train_flags_parse_like_cli_overrides(bench):
    from tasktune.config import TrainConfig, merge_overrides

    overrides = bench.parse_train_flags(["max_steps=10", "lora.r=4", "report-to=tensorboard,mlflow"])
    cfg = merge_overrides(TrainConfig(), overrides)
    assert (cfg.max_steps, cfg.lora.r, cfg.report_to) == (10, 4, ["tensorboard", "mlflow"])
    with pytest.raises(SystemExit, match="did you mean max_steps"):
        bench.parse_train_flags(["max_step=10"])


def test_label_task_detection(bench):
    from tasktune.config import TaskConfig

    assert bench.label_task_problem(TaskConfig(), ["yes", "no"]) is None
    assert "output kind json" in bench.label_task_problem(TaskConfig(output={"kind": "json"}), ["yes"])
    assert "distinct" in bench.label_task_problem(TaskConfig(), [f"label {i}" for i in range(101)])
    assert "longer" in bench.label_task_problem(TaskConfig(), ["a reply\nover two lines"])
