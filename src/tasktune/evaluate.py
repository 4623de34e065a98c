"""tasktune eval: score generations on a JSONL file, for a tuned run or for a base model given the instruction.

    tasktune eval RUN --data test.jsonl [--json report.json]
    tasktune eval --model M --task task.yaml --with-instruction [--shots k] --data test.jsonl

The figures that make the case for fine-tuning come side by side: the task metric, and the cost of each request
(prompt tokens, generated tokens, latency, throughput).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

from tasktune.config import TaskConfig
from tasktune.data import Example, read_examples
from tasktune.errors import TaskTuneError
from tasktune.metrics import diff, example_score, json_metrics, text_metrics
from tasktune.predict import Prediction, Predictor
from tasktune.task_metrics import METRICS, compute, main_metric_name


@dataclass
class EvalReport:
    name: str
    model: str
    mode: str  # "bare_input", "with_instruction", "few_shot"
    n: int
    metrics: dict
    prompt_tokens_mean: float
    generated_tokens_mean: float
    latency_ms_mean: float
    examples_per_s: float
    stopped_rate: float  # share of answers that ended on EOS rather than max_new_tokens
    seconds: float
    worst: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)
    main: str | None = None  # the task's `metric`, when it names one of the metrics computed
    constrained: str = ""  # how answers were constrained (constrain.py): "schema-constrained", "label-constrained"

    def to_dict(self, with_predictions: bool = False) -> dict:
        d = asdict(self)
        if not with_predictions:
            d.pop("predictions")
        d |= {k: v for k, v in self.metrics.items() if k != "per_field"}  # headline metrics at the top level
        return d

    @property
    def main_metric(self) -> tuple[str, float]:
        for key in (self.main, "field_accuracy", "rouge_l"):
            if key in self.metrics:
                return key, self.metrics[key]
        raise AssertionError("no main metric")


def pick_shots(task: TaskConfig, k: int, seed: int = 0) -> list[Example]:
    """k training rows as few-shot examples, the same ones for every request (and every run with this seed)."""
    if k <= 0:
        return []
    path = task.data_path("train")
    if path is None:
        raise TaskTuneError("--shots needs training rows to draw examples from", "set data.train in the task file")
    rows = read_examples(path)
    return random.Random(seed).sample(rows, min(k, len(rows)))


def _constrained(predictor: Predictor) -> str:
    if predictor.constraint is None:
        return ""
    return "label-constrained" if predictor.constraint.labels else "schema-constrained"


def evaluate(predictor: Predictor, examples: list[Example], task: TaskConfig, *, name: str, mode: str,
             shots: list[Example] = (), batch_size: int = 16, n_worst: int = 3) -> EvalReport:  # fmt: skip
    missing = [ex.where for ex in examples if not ex.has_answer]
    if missing:
        raise TaskTuneError(f"eval rows need reference answers; {missing[0]} has none", "add outputs to the eval file")
    t0 = time.perf_counter()
    preds = predictor.predict(examples, batch_size=batch_size, shots=shots)
    seconds = time.perf_counter() - t0
    refs = [ex.answer for ex in examples]
    texts = [p.output for p in preds]
    kind = task.output.kind
    free = set(task.output.free_text_fields)
    metrics = json_metrics(texts, refs, task.json_schema(), free) if kind == "json" else text_metrics(texts, refs)
    metrics |= compute(task.metrics, texts, refs, [_meta(ex) for ex in examples])
    n = len(preds)
    scored = sorted(range(n), key=lambda i: example_score(texts[i], refs[i], kind, free))
    worst = [{"where": examples[i].where, "input": examples[i].input_text, "output": texts[i], "reference": refs[i],
              "diff": diff(texts[i], refs[i], kind)} for i in scored[:n_worst]]  # fmt: skip
    return EvalReport(
        name=name,
        model=predictor.name,
        mode=mode,
        n=n,
        metrics=metrics,
        prompt_tokens_mean=_mean(p.prompt_tokens for p in preds),
        generated_tokens_mean=_mean(p.generated_tokens for p in preds),
        latency_ms_mean=1000 * _mean(p.latency_s for p in preds),
        examples_per_s=n / seconds if seconds else 0.0,
        stopped_rate=_mean(float(p.stopped) for p in preds),
        seconds=seconds,
        worst=worst,
        predictions=[_pred_row(ex, p) for ex, p in zip(examples, preds, strict=True)],
        main=_main_metric(task, metrics, refs),
        constrained=_constrained(predictor),
    )


def _meta(ex: Example) -> dict:
    meta = ex.extra.get("meta")
    return meta if isinstance(meta, dict) else {}


def _main_metric(task: TaskConfig, metrics: dict, refs: list[str]) -> str | None:
    """The metric the task is judged by (task_metrics.main_metric_name: exact match for labels, say) when it was
    computed and higher is better (compare ranks by it)."""
    name = main_metric_name(task, refs)
    if metrics.get(name) is None:
        return None
    return name if name not in METRICS or METRICS[name].higher_is_better else None


def _pred_row(ex: Example, p: Prediction) -> dict:
    return {"where": ex.where, "reference": ex.answer} | p.to_dict()


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def format_table(reports: list[EvalReport]) -> str:
    """Side-by-side table of headline figures."""
    keys = [("field_accuracy", "field accuracy", "{:.1%}"), ("valid_json_rate", "valid JSON", "{:.1%}"),
            ("schema_valid_rate", "schema-valid", "{:.1%}"), ("exact_match", "exact match", "{:.1%}"),
            ("rouge_l", "ROUGE-L", "{:.3f}"), ("chrf", "chrF", "{:.3f}")]  # fmt: skip
    rows = [(label, [fmt.format(r.metrics[k]) for r in reports]) for k, label, fmt in keys if k in reports[0].metrics]
    extra = [k for k in reports[0].metrics if k in METRICS]
    rows += [(k, [METRICS[k].format(r.metrics.get(k)) for r in reports]) for k in extra]
    rows += [
        ("prompt tokens / request", [f"{r.prompt_tokens_mean:.0f}" for r in reports]),
        ("generated tokens / request", [f"{r.generated_tokens_mean:.0f}" for r in reports]),
        ("latency / request (ms)", [f"{r.latency_ms_mean:.0f}" for r in reports]),
        ("examples / s", [f"{r.examples_per_s:.2f}" for r in reports]),
        ("stopped at EOS", [f"{r.stopped_rate:.1%}" for r in reports]),
        ("n", [str(r.n) for r in reports]),
    ]
    if any(r.constrained for r in reports) or "valid_json_rate" in reports[0].metrics:
        rows.append(("decoding", [r.constrained or "free" for r in reports]))
    width = max(len(r[0]) for r in rows) + 2
    cols = [max(len(r.name), *(len(v[i]) for _, v in rows)) + 2 for i, r in enumerate(reports)]
    lines = [" " * width + "".join(r.name.rjust(c) for r, c in zip(reports, cols, strict=True))]
    lines += [label.ljust(width) + "".join(v.rjust(c) for v, c in zip(vals, cols, strict=True)) for label, vals in rows]
    return "\n".join(lines)


def format_worst(report: EvalReport) -> str:
    out = [f"worst examples of {report.name}:"]
    for w in report.worst:
        out.append(f"  {w['where']}: {w['input'][:100]!r}")
        out += [f"    {d}" for d in w["diff"][:6]] or ["    (matches)"]
    return "\n".join(out)
