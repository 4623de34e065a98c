"""Selection by the task's own metric during training: answer held-out rows, score them, keep the best weights.

Eval loss says how well the model predicts the reference tokens; users judge the answers. On small tasks the two
part ways (the loss rises while field accuracy still climbs, as the model grows confident on the rows it gets
right), so `fit` keeps the weights of the step whose generated answers scored best and stops when the score stops
improving, as hosted fine-tuning services and the HF Trainer's `metric_for_best_model` do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tasktune.config import TaskConfig
from tasktune.data import Example
from tasktune.generate import generate
from tasktune.metrics import json_metrics, text_metrics
from tasktune.render import ChatFormat
from tasktune.task_metrics import main_metric_name

BEST_FILE = "validation-best.safetensors"  # the best weights so far, kept in the run folder while it trains


@dataclass
class Validator:
    """Greedy answers for `rows` held-out examples, scored with the task's main metric (higher is better)."""

    task: TaskConfig
    examples: list[Example]
    fmt: ChatFormat
    instruction: str | None
    max_new_tokens: int
    metric: str
    batch_size: int = 16

    @classmethod
    def for_task(cls, task: TaskConfig, examples: list[Example], fmt: ChatFormat, instruction: str | None,
                 max_new_tokens: int, train_answers: list[str]) -> Validator:  # fmt: skip
        return cls(task, examples, fmt, instruction, max_new_tokens, main_metric_name(task, train_answers))

    def score(self, model) -> float:
        prompts = [self.fmt.encode_prompt(self.fmt.with_instruction(ex.prompt_messages, self.instruction))
                   for ex in self.examples]  # fmt: skip
        gens = generate(model, self.fmt, prompts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                        desc="validate")  # fmt: skip
        texts, refs = [g.text for g in gens], [ex.answer for ex in self.examples]
        if self.task.output.kind == "json":
            schema, free = self.task.json_schema(), set(self.task.output.free_text_fields)
            metrics = json_metrics(texts, refs, schema, free)
        else:
            metrics = text_metrics(texts, refs)
        if self.metric not in metrics:
            from tasktune.task_metrics import compute

            meta = [ex.extra.get("meta") if isinstance(ex.extra.get("meta"), dict) else {} for ex in self.examples]
            metrics |= compute([self.metric], texts, refs, meta)
        return float(metrics[self.metric])


class BestWeights:
    """The trainable weights of the best-scoring step: in memory, and (with `folder`) in a file a resumed run reads.

    Only trainable parameters are kept: for an adapter that is a few MB, for a full fine-tune the whole model."""

    def __init__(self, folder: Path | None = None):
        self.path = folder / BEST_FILE if folder is not None else None
        self.weights: dict[str, torch.Tensor] | None = None

    def save(self, model) -> None:
        self.weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        if self.path is not None:
            from safetensors.torch import save_file

            tmp = self.path.with_suffix(".tmp")
            save_file({n: t.contiguous() for n, t in self.weights.items()}, str(tmp))
            tmp.replace(self.path)  # atomic: a kill mid-write leaves the previous best intact

    def load(self) -> bool:
        """Read the best weights a stopped run left behind; False when there are none."""
        if self.path is None or not self.path.is_file():
            return False
        from safetensors.torch import load_file

        self.weights = load_file(str(self.path))
        return True

    @torch.no_grad()
    def restore(self, model) -> None:
        assert self.weights is not None, "restore() before any save()"
        params = dict(model.named_parameters())
        for name, value in self.weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
