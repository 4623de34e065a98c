"""tasktune demo: the concept's scenario end to end, in one command.

    tasktune demo [--out DIR] [--n 10000] [--test-rows 100] [--json demo.json]

1. writes the bug-report data set (`tasktune example bug-reports`),
2. scores the base model given the long instruction on the held-out-style test split,
3. fine-tunes the default model with the recipe chosen from the data, in a 10-minute training budget,
4. scores the tuned model on the bare report,
5. prints both side by side with a few reports and both outputs, and writes the figures as JSON.

It calls the same library functions as `tasktune example`, `eval` and `train`: no demo-only code path.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from tasktune.baselines import baseline
from tasktune.config import load_task
from tasktune.data import read_examples
from tasktune.evaluate import EvalReport, evaluate, format_table, format_worst
from tasktune.examples.bug_reports import write_bug_reports
from tasktune.fsio import atomic_write_json, ensure_writable_dir
from tasktune.predict import Predictor
from tasktune.train import train

# The demo's promise is a whole run in about 15 minutes on 2 CPU cores; the base model's turn and the tuned model's
# turn take about 4 of them, so training gets the rest. Every training setting is the recipe's (tasktune.recipe).
DEMO_TRAIN_BUDGET = "10m"

SIDE_KEYS = ("field_accuracy", "valid_json_rate", "schema_valid_rate", "exact_match", "prompt_tokens_mean",
             "generated_tokens_mean", "latency_ms_mean", "examples_per_s", "stopped_rate", "n", "seconds")  # fmt: skip


def _side(report: EvalReport) -> dict:
    d = report.to_dict()
    return {k: d[k] for k in SIDE_KEYS} | {"per_field": report.metrics["per_field"], "model": report.model}


def run_demo(out: str | Path, *, n: int = 10000, test_rows: int = 100, seed: int = 0, batch_size: int = 16,
             json_path: str | Path | None = None, train_overrides: dict | None = None) -> dict:  # fmt: skip
    """Run the whole demo into `out` (must be new or empty) and return the summary written to JSON."""
    from tasktune.config import merge_overrides

    t_start = time.perf_counter()
    out = ensure_writable_dir(out, must_be_empty=True, what="demo folder")
    print(f"tasktune demo: [1/4] writing {n} training reports + eval/test splits to {out / 'data'}")
    write_bug_reports(out / "data", n=n, seed=seed)
    task = load_task(out / "data" / "task.yaml")
    overrides = dict(train_overrides or {})
    if not {"time_budget", "max_steps"} & overrides.keys():
        overrides["time_budget"] = DEMO_TRAIN_BUDGET
    cfg = merge_overrides(task.train, overrides)
    test = read_examples(task.data_path("test"))[:test_rows]

    print(f"tasktune demo: [2/4] base model {cfg.model} with the {task.name} instruction on {len(test)} test reports")
    # the base side is what a team runs today: the long prompt, free decoding (the tuned side decodes under the schema)
    base = baseline(task, cfg.model).predictor
    base_report = evaluate(base, test, task, name="base_with_instruction", mode="with_instruction",
                           batch_size=batch_size)  # fmt: skip
    del base
    gc.collect()

    print(f"tasktune demo: [3/4] fine-tuning {cfg.model} with {cfg.method} on the training split")
    result = train(task, cfg, out / "run")
    gc.collect()  # free the training model and optimizer before generation needs the memory bandwidth

    print("tasktune demo: [4/4] tuned model on the bare reports (no instruction)")
    tuned = Predictor.from_run(out / "run")
    tuned_report = evaluate(tuned, test, task, name="tuned_bare_input", mode="bare_input", batch_size=batch_size)

    base_side, tuned_side = _side(base_report), _side(tuned_report)
    summary = {
        "task": task.name,
        "base_with_instruction": base_side,
        "tuned_bare_input": tuned_side,
        "train": result.to_dict() | {"settings": cfg.model_dump(mode="json")},
        "prompt_token_reduction": 1 - tuned_side["prompt_tokens_mean"] / base_side["prompt_tokens_mean"],
        "latency_speedup": base_side["latency_ms_mean"] / max(tuned_side["latency_ms_mean"], 1e-9),
        "examples": [
            {
                "input": ex.input_text,
                "reference": ex.answer,
                "base_with_instruction": b["output"],
                "tuned_bare_input": t["output"],
            }
            for ex, b, t in zip(test[:3], base_report.predictions[:3], tuned_report.predictions[:3], strict=True)
        ],
        "seconds": time.perf_counter() - t_start,
    }
    _print_summary(summary, base_report, tuned_report)
    json_path = Path(json_path) if json_path else out / "demo.json"
    atomic_write_json(json_path, summary)
    print(f"tasktune demo: figures written to {json_path}; tuned run in {out / 'run'}")
    return summary


def _print_summary(summary: dict, base: EvalReport, tuned: EvalReport) -> None:
    print()
    print(format_table([base, tuned]))
    print(f"\nprompt tokens per request: -{summary['prompt_token_reduction']:.0%};"
          f" latency per request: {summary['latency_speedup']:.1f}x lower;"
          f" total demo time {summary['seconds'] / 60:.1f} min")  # fmt: skip
    for i, ex in enumerate(summary["examples"][:2], start=1):
        print(f"\n--- example {i}: the raw report ---\n{ex['input']}")
        print("--- base model, given the report plus the long instruction:")
        print(ex["base_with_instruction"][:400])
        print("--- tuned model, given only the report:")
        print(ex["tuned_bare_input"])
    print()
    print(format_worst(tuned))
