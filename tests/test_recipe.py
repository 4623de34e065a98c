"""The recipe chosen from the data: rules on hand-made data sizes, and explicit settings always win."""

from __future__ import annotations

import pytest

from tasktune.config import TrainConfig, build, merge_overrides
from tasktune.durations import budget_seconds, parse_duration
from tasktune.errors import ConfigError
from tasktune.recipe import CPU_TIME_BUDGET, MAX_EPOCHS, MAX_EXAMPLES, MIN_EXAMPLES, DataFacts, choose_recipe
from tasktune.task_metrics import is_label_task, main_metric_name


def facts(n: int, device: str = "cpu", answer_tokens: float = 4.0) -> DataFacts:
    return DataFacts(train_rows=n, answer_tokens_mean=answer_tokens, device=device)


@pytest.mark.parametrize(
    ("rows", "epochs"),
    [
        (30, MAX_EPOCHS),  # 30 rows would need 67 passes to reach MIN_EXAMPLES: capped
        (76, MAX_EPOCHS),  # ceil(2000 / 76) = 27 > 20
        (398, 6),  # ceil(2000 / 398): at least 2,000 examples seen
        (700, 3),  # 2,100 examples at the target of 3 passes: within bounds
        (3396, 3),
        (10000, 2.5),  # 25,000 / 10,000: at most MAX_EXAMPLES seen
        (100000, 1.0),  # never less than one pass
    ],
)
def test_epochs_follow_the_data_size(rows, epochs):
    cfg, recipe = choose_recipe(TrainConfig(), facts(rows))
    assert cfg.epochs == epochs
    assert "epochs" in recipe.reasons
    seen = rows * cfg.epochs
    assert seen >= min(MIN_EXAMPLES, rows * MAX_EPOCHS)
    assert seen <= max(MAX_EXAMPLES, rows)


def test_cpu_and_gpu_recipes_differ_where_the_hardware_does():
    cpu, _ = choose_recipe(TrainConfig(), facts(1000, "cpu"))
    gpu, _ = choose_recipe(TrainConfig(), facts(1000, "cuda"))
    assert (cpu.batch_size, gpu.batch_size) == (4, 16)
    assert cpu.time_budget == CPU_TIME_BUDGET and gpu.time_budget is None
    assert cpu.lora.top_layers is None and gpu.lora.top_layers is None  # adapters in every layer: see recipe.py
    for cfg in (cpu, gpu):
        assert cfg.method == "lora" and cfg.learning_rate == 5e-4 and cfg.lora.plus_lr_ratio == 16
    assert (cpu.patience, gpu.patience) == (0, 3)  # a budget bounds the CPU run: no early stop inside it


def test_a_time_budget_given_turns_early_stopping_off_unless_patience_is_given_too():
    assert choose_recipe(TrainConfig(time_budget="5m"), facts(1000, "cuda"))[0].patience == 0
    assert choose_recipe(TrainConfig(time_budget="5m", patience=2), facts(1000, "cpu"))[0].patience == 2
    assert choose_recipe(TrainConfig(max_steps=50), facts(1000, "cpu"))[0].patience == 3  # no budget: stops early


def test_explicit_settings_win_from_yaml_and_from_flags():
    from_yaml = build(TrainConfig, {"learning_rate": 1e-3, "lora": {"r": 8, "top_layers": 4}}, "task.yaml")
    cfg = merge_overrides(from_yaml, {"batch_size": 2, "lora.plus_lr_ratio": 1.0})
    chosen, recipe = choose_recipe(cfg, facts(500))
    assert (chosen.learning_rate, chosen.batch_size) == (1e-3, 2)
    assert (chosen.lora.r, chosen.lora.top_layers, chosen.lora.plus_lr_ratio) == (8, 4, 1.0)
    assert {"learning_rate", "batch_size", "lora.r", "lora.top_layers", "lora.plus_lr_ratio"} <= set(recipe.kept)
    assert not {"learning_rate", "batch_size", "lora.top_layers", "lora.plus_lr_ratio"} & set(recipe.chosen)
    assert chosen.epochs == 4  # what was not given is still chosen: ceil(2000 / 500)


def test_max_steps_given_means_no_epochs_and_no_time_budget_from_the_recipe():
    chosen, recipe = choose_recipe(TrainConfig(max_steps=50), facts(500))
    assert chosen.max_steps == 50 and chosen.time_budget is None
    assert "epochs" not in recipe.chosen and "time_budget" not in recipe.chosen


def test_other_methods_get_no_lora_settings_and_their_own_rate():
    chosen, recipe = choose_recipe(TrainConfig(method="full"), facts(500))
    assert chosen.method == "full" and chosen.learning_rate is None and chosen.resolved_learning_rate() == 5e-5
    assert not any(k.startswith("lora.") for k in recipe.chosen)


def test_recipe_off_changes_nothing():
    cfg = TrainConfig(recipe="off")
    chosen, recipe = choose_recipe(cfg, facts(76))
    assert chosen == cfg and not recipe.chosen


def test_a_resumed_config_is_fully_given():
    """A run folder's config.yaml holds every setting, so a resumed run is never re-planned by the recipe."""
    first, _ = choose_recipe(TrainConfig(), facts(76))
    saved = build(TrainConfig, first.model_dump(mode="json"), "config.yaml")
    again, recipe = choose_recipe(saved, facts(5000, "cuda"))
    assert again == saved and not recipe.chosen


def test_recipe_format_lists_every_choice_with_its_reason():
    _, recipe = choose_recipe(merge_overrides(TrainConfig(), {"seed": 4}), facts(398))
    text = recipe.format()
    for key in recipe.chosen:
        assert key in text and recipe.reasons[key] in text
    assert "kept as given: seed" in text


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("1h30m", 5400), (45, 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "20 minutes please", "m", "0s", "-5m"])
def test_bad_durations_name_the_key(text):
    with pytest.raises(ConfigError, match="time_budget"):
        parse_duration(text)


def test_time_budget_is_checked_with_the_config_and_none_lifts_it():
    with pytest.raises(ConfigError, match="time_budget"):
        build(TrainConfig, {"time_budget": "soon"}, "task.yaml")
    assert budget_seconds("none") is None and budget_seconds(None) is None
    assert budget_seconds(build(TrainConfig, {"time_budget": "2m"}, "x").time_budget) == 120


def test_main_metric_by_kind_of_answer():
    from tasktune.config import TaskConfig

    labels = ["positive", "negative", "neutral"] * 20
    prose = [f"the ticket {i} asks for a refund of order {i}" for i in range(60)]
    assert is_label_task(labels) and not is_label_task(prose)
    assert main_metric_name(TaskConfig(), labels) == "exact_match"
    assert main_metric_name(TaskConfig(), prose) == "rouge_l"
    assert main_metric_name(TaskConfig(output={"kind": "json"}), prose) == "field_accuracy"
    assert main_metric_name(TaskConfig(metric="chrf"), labels) == "chrf"
