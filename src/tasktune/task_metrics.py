"""Extra metrics a task can ask for by name, computed per row from (prediction, reference, meta).

A task lists them in task.yaml (`metrics: [key_fact_recall, summary_words]`); `tasktune eval` and `tasktune compare`
report each one's mean over the rows where it applies (a metric returns None for a row it does not apply to, e.g.
`invented_answer_rate` on a question whose answer is known), next to the built-in metrics.

Rows carry what a metric needs in an optional `meta` object, written by whoever made the data (the example
generators know each row's facts). Facts and rules are lists of *alternatives*: a fact is matched when any of its
regular expressions matches the prediction (case-insensitive), so "2 GB", "2GB" and "two gigabytes" can all count.

    {"input": "...", "output": "...", "meta": {"facts": [["refund"], ["14 days", "two weeks"]]}}

To add a metric: write `def my_metric(prediction, reference, meta) -> float | None` and decorate it with
`@metric("my_metric")`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from tasktune.metrics import tokens

MetricFn = Callable[[str, str, dict], "float | None"]


@dataclass(frozen=True)
class TaskMetric:
    name: str
    fn: MetricFn
    higher_is_better: bool
    fmt: str  # how reports show the mean: "{:.1%}" for rates, "{:.1f}" for counts
    doc: str

    def format(self, value: float | None) -> str:
        return "–" if value is None else self.fmt.format(value)


METRICS: dict[str, TaskMetric] = {}


def metric(name: str, *, higher_is_better: bool = True, fmt: str = "{:.1%}"):
    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[name] = TaskMetric(name, fn, higher_is_better, fmt, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return wrap


def unknown_metrics(names: list[str]) -> list[str]:
    return [n for n in names if n not in METRICS]


def compute(names: list[str], preds: list[str], refs: list[str], metas: list[dict | None]) -> dict[str, float | None]:
    """Mean of each named metric over the rows it applies to; None when it applies to no row."""
    out: dict[str, float | None] = {}
    for name in names:
        fn = METRICS[name].fn
        scores = [fn(p, r, m or {}) for p, r, m in zip(preds, refs, metas, strict=True)]
        scores = [s for s in scores if s is not None]
        out[name] = sum(scores) / len(scores) if scores else None
        out[f"{name}_n"] = len(scores)
    return out


# --- matching facts ---------------------------------------------------------------------------------------------
def matches(pattern_group: list[str] | str, text: str) -> bool:
    """Whether any alternative (a regular expression, case-insensitive) occurs in the text."""
    alternatives = [pattern_group] if isinstance(pattern_group, str) else pattern_group
    return any(re.search(p, text, re.IGNORECASE) for p in alternatives)


# What a "does not know" answer says. Deliberately narrow: pointing to support alone is not abstaining (a known
# answer may also say "contact support"), saying it has no information about the question is.
ABSTAIN = [
    r"\b(?:i|we) (?:do not|don't|dont) know\b",
    r"\b(?:i|we) (?:do not|don't|dont) have (?:\w+ ){0,2}(?:information|details|data|knowledge|an answer|access)\b",
    r"\bnot sure\b|\bnot aware of\b",
    r"\b(?:i|we) (?:can ?not|can't|am unable to|are unable to) "
    r"(?:find|answer|confirm|provide (?:\w+ )?(?:information|details|an answer))",
    r"\bno (?:information|details|data) (?:about|on)\b",
    r"\b(?:i|we) have no (?:information|details|record)",
    r"\bnot (?:in|part of|covered (?:in|by)) (?:my|the|our) (?:documentation|information|product sheet|faq)\b",
]


def abstains(text: str) -> bool:
    return matches(ABSTAIN, text)


# --- the metrics ------------------------------------------------------------------------------------------------
@metric("key_fact_recall")
def key_fact_recall(prediction: str, reference: str, meta: dict) -> float | None:
    """Share of the row's key facts (meta.facts) that the answer states."""
    facts = meta.get("facts")
    if not facts:
        return None
    return sum(matches(f, prediction) for f in facts) / len(facts)


@metric("summary_words", higher_is_better=False, fmt="{:.1f}")
def summary_words(prediction: str, reference: str, meta: dict) -> float | None:
    """Words in the answer (a concise summary is short)."""
    return float(len(tokens(prediction)))


@metric("length_ratio", higher_is_better=False, fmt="{:.2f}")
def length_ratio(prediction: str, reference: str, meta: dict) -> float | None:
    """Answer words / reference words (1.0 = as long as the reference)."""
    ref = len(tokens(reference))
    return len(tokens(prediction)) / ref if ref else None


@metric("fact_accuracy")
def fact_accuracy(prediction: str, reference: str, meta: dict) -> float | None:
    """On questions with a known answer (meta.answerable true): 1 if the answer states every fact and does not
    abstain."""
    if meta.get("answerable") is not True or not meta.get("facts"):
        return None
    return float(all(matches(f, prediction) for f in meta["facts"]) and not abstains(prediction))


@metric("invented_answer_rate", higher_is_better=False)
def invented_answer_rate(prediction: str, reference: str, meta: dict) -> float | None:
    """On questions whose answer was never given (meta.answerable false): 1 if the answer does not say it does not
    know, i.e. it made something up."""
    if meta.get("answerable") is not False:
        return None
    return float(not abstains(prediction))


@metric("abstention_rate")
def abstention_rate(prediction: str, reference: str, meta: dict) -> float | None:
    """On questions whose answer was never given: 1 if the answer says it does not know and points to support
    (meta.support: patterns for where to go)."""
    if meta.get("answerable") is not False:
        return None
    support = meta.get("support", [r"support"])
    return float(abstains(prediction) and matches(support, prediction))


@metric("false_abstention_rate", higher_is_better=False)
def false_abstention_rate(prediction: str, reference: str, meta: dict) -> float | None:
    """On questions with a known answer: 1 if the answer wrongly says it does not know."""
    if meta.get("answerable") is not True:
        return None
    return float(abstains(prediction))


@metric("policy_compliance")
def policy_compliance(prediction: str, reference: str, meta: dict) -> float | None:
    """1 if the answer passes every rule check of its row: each group in meta.must matches, nothing in
    meta.must_not does."""
    must, must_not = meta.get("must"), meta.get("must_not")
    if must is None and must_not is None:
        return None
    return float(not policy_violations(prediction, meta))


def policy_violations(prediction: str, meta: dict) -> list[str]:
    """The rules an answer breaks, by their names (meta.rules names each must/must_not entry, in order)."""
    names = meta.get("rules", {})
    broken = [names.get(f"must[{i}]", f"must[{i}]") for i, g in enumerate(meta.get("must") or [])
              if not matches(g, prediction)]  # fmt: skip
    broken += [names.get(f"must_not[{i}]", f"must_not[{i}]") for i, g in enumerate(meta.get("must_not") or [])
               if matches(g, prediction)]  # fmt: skip
    return broken


# --- which metric judges a task ------------------------------------------------------------------------------
def is_label_task(answers: list[str]) -> bool:
    """Answers drawn from a small set of short strings (one label per row), as opposed to free text or records."""
    if not answers:
        return False
    distinct = set(answers)
    return len(distinct) <= max(2, min(200, len(answers) // 2)) and max(len(a) for a in distinct) <= 64


BUILT_IN = ("field_accuracy", "exact_match", "rouge_l", "chrf", "valid_json_rate", "schema_valid_rate")


def main_metric_name(task, answers: list[str]) -> str:
    """The metric a task is judged by: its own `metric` when set; else field accuracy for JSON answers, exact match
    for labels, ROUGE-L for free text. `answers`: the training answers, which tell labels from free text."""
    if task.metric and (task.metric in BUILT_IN or (task.metric in METRICS and METRICS[task.metric].higher_is_better)):
        return task.metric
    if task.output.kind == "json":
        return "field_accuracy"
    return "exact_match" if is_label_task(answers) else "rouge_l"
