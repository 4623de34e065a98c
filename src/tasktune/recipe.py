"""The training recipe chosen from the data: what `tasktune train` uses for every setting the user left unset.

A user who brings rows and an instruction should not have to know that a 76-row task needs many epochs and a
3,000-row one a few, or that on a CPU time, not data, bounds how many rows a run can see. `choose_recipe` decides
those settings from the number of rows, the answers and the device, and says why for each; any setting given in the
task file or on the command line is kept as given. The rules and the measurements behind them are in docs/training.md
and docs/benchmarks.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tasktune.config import TrainConfig
from tasktune.durations import parse_duration  # noqa: F401  (re-exported: the recipe's budgets are durations)

# Examples seen in training (rows x epochs), as hosted fine-tuning services size epochs: about 3 epochs, but at least
# MIN_EXAMPLES and at most MAX_EXAMPLES seen, and never more than MAX_EPOCHS passes. Small tasks need many passes
# before a small model stops answering like a chat model; selection by the validation metric keeps the best step.
TARGET_EPOCHS = 3
MIN_EXAMPLES = 2000
MAX_EXAMPLES = 25000
MAX_EPOCHS = 20
# On a CPU the examples a run can see are bounded by time, not data: the run plans its steps from the measured
# throughput so that training and validation end within this budget.
CPU_TIME_BUDGET = "15m"
# LoRA+ rate for A (B at LORA_PLUS_RATIO times it): the best of the rates measured across tasks (docs/benchmarks.md)
LORA_LEARNING_RATE = 5e-4
LORA_PLUS_RATIO = 16.0
# Validation: generate answers for this many held-out rows (the task's own metric).
VALIDATE_ROWS_SHORT = 64  # answers of a few tokens (labels) cost little to generate
VALIDATE_ROWS_LONG = 32  # longer answers (JSON records, summaries) cost a decoding pass each


@dataclass
class Recipe:
    """What the recipe set, with a reason per setting (settings the user gave are listed as `kept`)."""

    chosen: dict[str, object] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)

    def set(self, key: str, value: object, reason: str) -> None:
        self.chosen[key] = value
        self.reasons[key] = reason

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "reasons": self.reasons, "kept": self.kept}

    def format(self) -> str:
        if not self.chosen:
            return "tasktune: recipe: every setting was given; nothing chosen"
        width = max(len(k) for k in self.chosen)
        lines = ["tasktune: recipe chosen from the data (any of these can be set in the task file or as a flag):"]
        lines += [f"  {k.ljust(width)}  {_show(v):>10}  {self.reasons[k]}" for k, v in self.chosen.items()]
        if self.kept:
            lines.append(f"  kept as given: {', '.join(self.kept)}")
        return "\n".join(lines)


def _show(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "all" if value is None else str(value)


@dataclass
class DataFacts:
    """What the recipe looks at: the training rows left after the validation hold-out, and their answers."""

    train_rows: int
    answer_tokens_mean: float  # supervised tokens per row (the answer and its end-of-turn token)
    device: str  # "cpu" or "cuda"


def planned_epochs(n_rows: int) -> tuple[float, str]:
    """Epochs from the data size: TARGET_EPOCHS, raised so that at least MIN_EXAMPLES rows are seen, lowered so that
    at most MAX_EXAMPLES are, within [1, MAX_EPOCHS]."""
    epochs = float(TARGET_EPOCHS)
    if n_rows * epochs < MIN_EXAMPLES:
        epochs = min(float(MAX_EPOCHS), math.ceil(MIN_EXAMPLES / n_rows))
        why = f"{n_rows:,} rows: at least {MIN_EXAMPLES:,} examples seen (at most {MAX_EPOCHS} epochs)"
    elif n_rows * epochs > MAX_EXAMPLES:
        epochs = max(1.0, round(MAX_EXAMPLES / n_rows, 2))
        why = f"{n_rows:,} rows: at most {MAX_EXAMPLES:,} examples seen"
    else:
        why = f"{n_rows:,} rows: {TARGET_EPOCHS} passes ({MIN_EXAMPLES:,}-{MAX_EXAMPLES:,} examples seen)"
    return epochs, why


def choose_recipe(cfg: TrainConfig, facts: DataFacts) -> tuple[TrainConfig, Recipe]:
    """Fill every setting the user left unset (not in `cfg.model_fields_set`) from the data; return the new config
    and what was chosen and why. `cfg.recipe == "off"` returns the config unchanged (the plain field defaults)."""
    recipe = Recipe()
    if cfg.recipe == "off":
        return cfg, recipe
    given = set(cfg.model_fields_set)
    lora_given = set(cfg.lora.model_fields_set) if "lora" in given else set()
    recipe.kept = sorted((given - {"lora", "prefix", "prompt", "recipe"}) | {f"lora.{k}" for k in lora_given})
    update: dict[str, object] = {}
    lora_update: dict[str, object] = {}

    def choose(key: str, value: object, reason: str) -> None:
        if key not in given:
            update[key] = value
            recipe.set(key, value, reason)

    on_cpu = facts.device == "cpu"
    choose("method", "lora", "adapters train fast, keep the base model shared for serving, and cannot forget it")
    if update.get("method", cfg.method) == "lora":
        # LoRA+ (Hayou et al. 2024): B learns 16x faster than A; this rate won the recipe sweep (docs/benchmarks.md).
        choose("learning_rate", LORA_LEARNING_RATE, "LoRA+ rate for A (B at 16x): the best of the rates measured"
               " across tasks")  # fmt: skip
        if "plus_lr_ratio" not in lora_given:
            lora_update["plus_lr_ratio"] = LORA_PLUS_RATIO
            recipe.set("lora.plus_lr_ratio", LORA_PLUS_RATIO, "LoRA+: B matrices at 16x the rate of A")
    epochs, why = planned_epochs(facts.train_rows)
    if "max_steps" not in given:
        choose("epochs", epochs, why)
    batch = 4 if on_cpu else 16
    choose("batch_size", batch, "small batches, more steps: at equal rows seen, batch 4 beat 8 and 16" if on_cpu
           else "a GPU runs 16 rows per step at little more cost than 4")  # fmt: skip
    budget = recipe_time_budget(cfg, facts.device)
    if budget is not None:
        choose("time_budget", budget, "on a CPU the run plans its steps from the measured throughput and"
               " stops with its best checkpoint when the budget is spent")  # fmt: skip
    if budget is not None or cfg.time_budget is not None:
        # Early stopping saves time a budget has already bounded, and costs the last steps of the cosine decay, at the
        # lowest rates; on label tasks a 64-row validation ties and wobbles by a few rows, which patience reads as
        # "no better".
        choose("patience", 0, "a time budget bounds the run and the best validated weights are kept anyway:"
               " no early stop, so the schedule reaches its low-rate end")  # fmt: skip
    long = facts.answer_tokens_mean > 16
    rows = VALIDATE_ROWS_LONG if long else VALIDATE_ROWS_SHORT
    choose("validate_rows", rows, f"answers of {facts.answer_tokens_mean:.0f} tokens on average: {rows} rows per"
           " validation keep it a small share of the run")  # fmt: skip
    choose("eval_every", 0, "eval loss only at the validations: a diagnostic, once the task's metric selects")
    n_eval = update.get("validate_rows", cfg.validate_rows)
    choose("eval_max_rows", n_eval, f"as many rows as a validation ({n_eval}): enough for that diagnostic")
    # model_copy(update=...) skips validation; rebuilding validates and keeps the user's own fields marked as set.
    data = cfg.model_dump(exclude_unset=True) | update
    if lora_update:
        data["lora"] = cfg.lora.model_dump(exclude_unset=True) | lora_update
    return TrainConfig.model_validate(data), recipe


def recipe_time_budget(cfg: TrainConfig, device: str) -> str | None:
    """The time budget the recipe gives a run that sets none: CPU_TIME_BUDGET on a CPU, unless the run sets its
    length in steps (max_steps) or the recipe is off; None: no limit."""
    given = cfg.model_fields_set
    if cfg.recipe == "off" or "time_budget" in given or "max_steps" in given or device != "cpu":
        return None
    return CPU_TIME_BUDGET
