"""The typed config tree: a task (what to learn) and training settings (how).

One source for YAML keys, CLI flags and docs: every field's description is its help text, `learning_rate` in YAML is
`--learning-rate` on the command line. Unknown keys and wrong types are errors that name the key and the fix.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasktune.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OutputSpec(StrictModel):
    kind: Literal["text", "json"] = Field("text", description="what the answer is: free text, or one JSON value")
    schema_: dict | str | None = Field(
        None,
        alias="schema",
        description="JSON Schema for json answers: a file path (relative to the task file) or inline",
    )
    free_text_fields: list[str] = Field(
        default_factory=list, description="json fields scored by token F1 instead of exact match (e.g. a title)"
    )
    copy_fields: list[str] = Field(
        default_factory=list,
        description="json string fields copied from the input, as JSON paths ($.name, $[].surface): decoding then"
        " writes only spans of the request's input there (`tasktune check` suggests them)",
    )


class DataFiles(StrictModel):
    train: str | None = Field(None, description="training rows (JSONL or CSV)")
    eval: str | None = Field(None, description="rows for eval loss during training; if absent, held out from train")
    test: str | None = Field(None, description="held-out rows for `tasktune eval`")


class LoraSettings(StrictModel):
    r: int = Field(16, ge=1, description="adapter rank; higher adapts more and costs more memory")
    alpha: float = Field(32.0, gt=0, description="scale of the adapter update (effective scale alpha / r)")
    # 0 by default: peft materialises a dropout mask per adapted module, about a fifth of a CPU training step
    # (docs/benchmarks.md, "Figures behind the code's choices").
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input (costs speed on CPU)")
    target_modules: str | list[str] = Field(
        "all-linear", description="modules that get adapters: 'all-linear' or a list of module names"
    )
    plus_lr_ratio: float = Field(
        1.0,
        ge=1,
        description="LoRA+ (Hayou et al. 2024): the B matrices learn this many times faster than A; 1 = plain LoRA",
    )
    # Autograd stops at the lowest layer with a trainable weight, so adapting only the upper layers cuts the backward
    # pass short (step times in docs/benchmarks.md, "Figures behind the code's choices").
    top_layers: int | None = Field(
        None,
        ge=1,
        description="adapt only the last N layers (all if the model has fewer): faster steps, less capacity",
    )


class PrefixSettings(StrictModel):
    num_virtual_tokens: int = Field(
        20, ge=1, description="prefix length: trained key/value pairs per layer; longer adapts more, attends more"
    )
    projection: bool = Field(
        False, description="reparametrise the prefix through an MLP (Li & Liang 2021, sec. 4.3): steadier, more memory"
    )


class PromptSettings(StrictModel):
    num_virtual_tokens: int = Field(
        20, ge=1, description="soft-prompt length: trained embeddings put before every input (they cost positions)"
    )
    init_text: str | None = Field(
        None, description="start the soft prompt from this text's token embeddings (default: random)"
    )


# Peak learning rates by method. Soft prompts and prefixes need far higher rates than weights: peft's own examples
# train prompt tuning at 3e-2 and prefix tuning at 1e-2 (Lester et al. 2021 used 0.3 with Adafactor).
DEFAULT_LEARNING_RATES = {"lora": 2e-4, "full": 5e-5, "prefix": 1e-2, "prompt": 3e-2}


class TrainConfig(StrictModel):
    model: str = Field(DEFAULT_MODEL, description="base model: built-in name, local HF folder or .gguf file")
    method: Literal["lora", "full", "prefix", "prompt"] = Field("lora", description="adaptation strategy")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    prefix: PrefixSettings = Field(default_factory=PrefixSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    learning_rate: float | None = Field(
        None, gt=0, description="peak learning rate (default: lora 2e-4, full 5e-5, prefix 1e-2, prompt 3e-2)"
    )
    epochs: float = Field(1.0, gt=0, description="passes over the training rows (ignored when max_steps is set)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps to run; overrides epochs")
    batch_size: int = Field(8, ge=1, description="rows per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    group_by_length: bool = Field(
        False,
        description="batch rows of similar length together: less padding, but less mixed batches (a slightly higher"
        " eval loss); worth it when row lengths vary widely",
    )
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="share of steps with linear warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    neftune_noise_alpha: float | None = Field(
        None,
        gt=0,
        description="NEFTune (Jain et al. 2023): uniform noise of scale alpha/sqrt(length*width) on the input"
        " embeddings while training, a regulariser against memorising phrasings (5 in the paper); off by default",
    )
    system_prompt: str | None = Field(
        None,
        description="system turn for rows and requests that bring none, trained on and saved in the run's chat"
        " template (so predict, serve, export and outside clients send it too); unset: the template's own default"
        " (SmolLM2's costs 16 tokens a row: 'You are a helpful AI assistant named SmolLM...'); '' for an empty one",
    )
    recipe: Literal["auto", "off"] = Field(
        "auto",
        description="auto: settings left unset are chosen from the data and printed with their reasons at the start"
        " (see docs/training.md); off: the plain defaults below",
    )
    time_budget: str | None = Field(
        None,
        description="wall-clock limit of the training loop, like 20m, 1h or 90s: steps are planned from the"
        " throughput of the first steps, and the run ends with its best checkpoint when the time is spent",
    )
    validate_every: int | None = Field(
        None,
        ge=0,
        description="steps between validations by the task's own metric on held-out rows (default: 8 per run;"
        " 0: never, and the last step's weights are kept)",
    )
    validate_rows: int = Field(64, ge=1, description="held-out rows answered and scored at each validation")
    patience: int = Field(
        3, ge=0, description="validations without a better score before the run stops early (0: never stop early)"
    )
    report_to: list[Literal["tensorboard", "trackio", "mlflow", "wandb", "comet_ml", "aim", "clearml"]] = Field(
        default_factory=list,
        description="experiment trackers that get the metrics (through accelerate; the tracker's package must be"
        " installed), e.g. tensorboard",
    )
    seed: int = Field(0, description="seed for init, shuffling and dropout")
    max_length: int = Field(1024, ge=8, description="longest row in tokens; longer rows are skipped, never truncated")
    eval_every: int = Field(
        50, ge=0, description="steps between eval-loss measurements (0: at each validation by the task's metric)"
    )
    eval_split: float = Field(0.1, ge=0, lt=1, description="share of train held out for eval loss when no eval file")
    eval_max_rows: int = Field(256, ge=1, description="eval rows used for eval loss during training")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on GPUs and AMX CPUs, else fp32")
    log_every: int = Field(1, ge=1, description="steps between metric lines")
    supervised_logits_only: bool = Field(
        True, description="project to the vocabulary only at supervised positions (same loss, less compute)"
    )
    save_every: int = Field(
        200, ge=0, description="steps between checkpoints (0: only at the end and on SIGINT/SIGTERM)"
    )
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept; older ones are deleted")

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        from tasktune.durations import validate_budget

        return validate_budget(value)

    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATES[self.method]


class TaskConfig(StrictModel):
    name: str = Field("task", description="short name of the task")
    instruction: str = Field("", description="the long instruction people sent with every request before tuning")
    output: OutputSpec = Field(default_factory=OutputSpec)
    metric: str | None = Field(None, description="main metric (default: field_accuracy for json, rouge_l for text)")
    metrics: list[str] = Field(
        default_factory=list,
        description="extra metrics by name (tasktune.task_metrics), computed per row from the answer, the reference"
        " and the row's optional `meta` object, reported next to the built-in ones",
    )
    data: DataFiles = Field(default_factory=DataFiles)
    train_with_instruction: bool = Field(False, description="render the instruction in training rows too")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training settings (CLI flags override)")

    # Where the task file lives; relative paths in it resolve against this folder.
    base_dir: Path = Field(Path("."), exclude=True)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        from tasktune.task_metrics import METRICS, unknown_metrics

        unknown = unknown_metrics(names)
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; choose among: {', '.join(METRICS)}")
        return names

    def data_path(self, split: str) -> Path | None:
        value = getattr(self.data, split)
        return None if value is None else (self.base_dir / value)

    def json_schema(self) -> dict | None:
        schema = self.output.schema_
        if schema is None or isinstance(schema, dict):
            return schema
        path = self.base_dir / schema
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(
                f"output.schema: cannot read {path}: {e.strerror}", "fix the path in the task file"
            ) from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})", "fix the schema file") from None

    def to_yaml_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude={"base_dir"})


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    """Every problem, one per line, with the key as the user wrote it and a suggestion for unknown keys."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(sorted(allowed))})"
            lines.append(f"{source}: unknown key '{key}'{hint}")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
            lines.append(f"{source}: key '{key}': {msg}{got_s}")
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def build(model: type[BaseModel], data: dict, source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, model), "correct the keys above") from None


def load_task(path: str | Path) -> TaskConfig:
    """Read a task.yaml; every problem in it is reported at once."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"cannot read task file {path}: {e.strerror}", "check the --task path") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})", "fix the YAML syntax"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}", "see examples/*/task.yaml")
    task = build(TaskConfig, data, str(path))
    task.base_dir = path.parent
    return task


def merge_overrides(cfg: TrainConfig, overrides: dict[str, Any], source: str = "command line") -> TrainConfig:
    """Apply CLI overrides (dotted keys like `lora.r`) and validate the result once."""
    # Only the settings that were given travel, so the recipe (tasktune.recipe) can tell them from the defaults.
    data = cfg.model_dump(exclude_unset=True)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return build(TrainConfig, data, source)
