"""tasktune predict: run a tuned model (or a base model with the task's instruction) on raw inputs.

tasktune predict RUN --input "raw text"
tasktune predict RUN --file inputs.jsonl --out preds.jsonl
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from tasktune.constrain import Constraint, vocab_size
from tasktune.data import Example, examples_from_inputs
from tasktune.errors import TaskTuneError
from tasktune.generate import generate
from tasktune.models import load_base, resolve_model
from tasktune.render import ChatFormat
from tasktune.rundir import RunInfo
from tasktune.runtime import cast_for_inference
from tasktune.strategies import get_strategy, load_trained, merge_weights


@dataclass
class Prediction:
    input: str
    output: str
    json: object | None  # the parsed answer for json tasks when it parses
    valid_json: bool | None
    prompt_tokens: int
    generated_tokens: int
    stopped: bool
    latency_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def parse_json_answer(text: str) -> tuple[object | None, bool]:
    """Strict: the whole answer must be one JSON value (a tuned model must not wrap it in prose or fences)."""
    try:
        return json.loads(text), True
    except json.JSONDecodeError:
        return None, False


class Predictor:
    """A model ready to answer: a tuned run (bare input), or a base model plus an instruction."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        instruction: str | None,
        output_kind: str,
        max_new_tokens: int,
        name: str,
        precision: str = "auto",
        schema: dict | None = None,
        copy_fields: list[str] = (),
        constrain: bool = True,
        labels: list[str] | None = None,
    ):
        """`constrain`: decode JSON answers under `schema` (any JSON when it is None), with `copy_fields` filled from
        the input, and a label task's answers as one of its `labels` (constrain.py); free text is never
        constrained."""
        cast_for_inference(model, precision)
        self.model = model
        self.fmt = ChatFormat(tokenizer)
        self.instruction = instruction or None
        self.output_kind = output_kind
        self.max_new_tokens = max_new_tokens
        self.name = name
        self.schema = schema
        self.copy_fields = list(copy_fields)
        self.labels = list(labels) if labels and output_kind == "text" else None
        self.constrain = constrain and (output_kind == "json" or self.labels is not None)

    @cached_property
    def constraint(self) -> Constraint | None:
        if not self.constrain:
            return None
        vocab = vocab_size(self.model)
        return Constraint(
            self.fmt.tok,
            self.fmt.stop_ids,
            vocab,
            self.schema,
            copy_fields=self.copy_fields,
            labels=self.labels,
        )

    @classmethod
    def from_run(
        cls,
        run: str | Path,
        precision: str = "auto",
        merge: bool | None = None,
        *,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        constrain: bool = True,
    ) -> Predictor:
        """Load a run. `merge`: None folds the adapter into the weights where the method allows it (LoRA);
        True demands it (an error for prefix and prompt tuning, which cannot be merged); False never merges.
        `allow_pickle`, `trust_remote_code`: see models.load_base (off: safetensors only, no model code runs)."""
        trust = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
        run = Path(run)
        info = RunInfo.load(run)
        strategy = get_strategy(info.method)
        weights = run / info.weights_dir
        if not weights.is_dir():
            raise TaskTuneError(f"{weights} is missing: the run did not finish", "train again, or resume the run")
        if strategy.weights_dir == "model":
            model, tok = load_base(weights, **trust)
        else:
            base_path = Path(info.base_model_path)
            if not (base_path / "config.json").is_file():
                base_path = resolve_model(info.base_model).path
            base, _ = load_base(base_path, **trust)
            model = load_trained(strategy, base, weights, allow_pickle=allow_pickle)
            if merge or (merge is None and strategy.mergeable):
                # Fold the adapter into the weights (in fp32, before any bf16 cast): the same function, and
                # decoding no longer runs two extra small matmuls per adapted layer.
                model = merge_weights(strategy, model)
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(weights, trust_remote_code=trust_remote_code)
        return cls(
            model,
            tok,
            instruction=info.instruction if info.instruction_in_prompt else None,
            output_kind=info.output_kind,
            max_new_tokens=info.max_new_tokens,
            name=run.name,
            precision=precision,
            schema=info.schema,
            copy_fields=info.copy_fields,
            constrain=constrain,
            labels=info.labels,
        )

    @classmethod
    def from_base(
        cls,
        spec: str,
        *,
        instruction: str | None,
        output_kind: str = "text",
        max_new_tokens: int = 256,
        precision: str = "auto",
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        schema: dict | None = None,
        copy_fields: list[str] = (),
        constrain: bool = True,
    ) -> Predictor:
        path = resolve_model(spec).path
        model, tok = load_base(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        return cls(
            model,
            tok,
            instruction=instruction,
            output_kind=output_kind,
            max_new_tokens=max_new_tokens,
            name=spec,
            precision=precision,
            schema=schema,
            copy_fields=copy_fields,
            constrain=constrain,
        )

    def prompt_ids(self, example: Example, shots: list[Example] = ()) -> list[int]:
        messages = []
        for s in shots:  # few-shot examples go in as earlier turns of the conversation
            messages += s.messages
        messages += example.prompt_messages
        return self.fmt.encode_prompt(self.fmt.with_instruction(messages, self.instruction))

    def predict(
        self,
        examples: list[Example] | list[str],
        *,
        batch_size: int = 16,
        shots: list[Example] = (),
        max_new_tokens: int | None = None,
    ) -> list[Prediction]:
        if examples and isinstance(examples[0], str):
            examples = examples_from_inputs(examples)  # type: ignore[arg-type]
        prompts = [self.prompt_ids(ex, shots) for ex in examples]
        gens = generate(
            self.model,
            self.fmt,
            prompts,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            batch_size=batch_size,
            desc=f"predict {self.name}",
            constraint=self.constraint,
            inputs=[ex.input_text for ex in examples],
        )
        preds = []
        for ex, g in zip(examples, gens, strict=True):
            parsed, valid = parse_json_answer(g.text) if self.output_kind == "json" else (None, None)
            preds.append(
                Prediction(
                    ex.input_text, g.text, parsed, valid, g.prompt_tokens, g.generated_tokens, g.stopped, g.latency_s
                )
            )
        return preds
