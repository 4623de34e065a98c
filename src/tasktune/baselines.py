"""The untrained side of every comparison: a base model given the task's instruction (and k example rows), as a
team runs the task today before any fine-tuning.

One home for `tasktune eval --model`, `tasktune compare` and `tasktune demo`, so their baselines are built alike:
the same answer cap (from the task's training answers), the same output kind, the same few-shot rows for a seed,
and the task's schema constraint only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasktune.batching import suggest_max_new_tokens_for_answers
from tasktune.config import TaskConfig
from tasktune.constrain import task_schema
from tasktune.data import Example, read_examples
from tasktune.evaluate import pick_shots
from tasktune.predict import Predictor


@dataclass
class Baseline:
    predictor: Predictor
    shots: list[Example]  # example rows put in front of each request (few-shot), [] otherwise
    mode: str  # how the report names the prompt: with_instruction, bare_input or few_shot_K


def answer_cap_for(task: TaskConfig, model: str) -> int:
    """The answer cap for an untuned model: from the task's training answers (its test answers if it has none), the
    same rule a tuned run's cap follows, so both sides of a comparison may write equally long answers."""
    path = task.data_path("train") or task.data_path("test")
    answers = [ex.answer for ex in read_examples(path)] if path else []
    return suggest_max_new_tokens_for_answers(model, answers)


def baseline(
    task: TaskConfig,
    model: str,
    *,
    instruction: bool = True,
    shots: int = 0,
    seed: int = 0,
    max_new_tokens: int | None = None,
    constrain: bool = False,
    schema: dict | None = None,
    precision: str = "auto",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Baseline:
    """The base model `model` on `task`, with the task's instruction (unless `instruction=False`) and `shots` training
    rows drawn with `seed`. `constrain`: JSON tasks decode under `schema`, by default the task's own (given or
    inferred); without it the baseline decodes freely, as a prompt-only deployment does."""
    json_task = task.output.kind == "json"
    if constrain and json_task and schema is None:
        schema = task_schema(task)[0]
    predictor = Predictor.from_base(
        model,
        instruction=task.instruction if instruction else None,
        output_kind=task.output.kind,
        max_new_tokens=max_new_tokens or answer_cap_for(task, model),
        precision=precision,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        schema=schema if constrain and json_task else None,
        copy_fields=task.output.copy_fields if constrain and json_task else [],
        constrain=constrain and json_task,
    )
    rows = pick_shots(task, shots, seed)
    mode = f"few_shot_{len(rows)}" if rows else ("with_instruction" if instruction else "bare_input")
    return Baseline(predictor, rows, mode)
