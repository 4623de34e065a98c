"""tasktune compare: every way to adapt the base model to the task, side by side, on the user's own data.

    tasktune compare TASK.yaml --methods instruction,few-shot,prompt,prefix,lora,full --out DIR
        [--budget-tokens N] [--shots k] [--priority quality|latency|cost] [--test-rows N]
        [--price-per-1k-prompt-tokens X] [--price-per-train-hour Y] [--requests N] [--redo]

`instruction` and `few-shot` train nothing: the base model gets the task's long instruction (and k training rows as
examples). The trained methods get the same rows, seed and batch order and the same budget of training tokens, so
they differ only in where the task's knowledge goes. Each method runs in its own process (peak memory is its own, no
cache carries over) and leaves DIR/methods/NAME/result.json, written atomically when it is done; a rerun reuses the
finished ones whose settings are unchanged. The report: DIR/results.json, DIR/report.md, DIR/report.html.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from tasktune.baselines import answer_cap_for, baseline
from tasktune.config import DEFAULT_LEARNING_RATES, StrictModel, TaskConfig, TrainConfig, load_task, merge_overrides
from tasktune.constrain import task_schema
from tasktune.data import read_examples
from tasktune.errors import ConfigError, TaskTuneError
from tasktune.evaluate import evaluate
from tasktune.fsio import atomic_write_json, atomic_write_text, ensure_writable_dir, write_jsonl
from tasktune.pages import figures, page
from tasktune.plots import png
from tasktune.predict import Predictor
from tasktune.rundir import file_fingerprint, read_metrics
from tasktune.train import train

# `instruction` and `few-shot` decode freely, as a prompt-only deployment does today; `instruction-constrained` is the
# base model with the instruction under the task's JSON Schema: what the constraint alone buys, without training.
BASELINES = ("instruction", "instruction-constrained", "few-shot")
TRAINED = ("prompt", "prefix", "lora", "full")
ALL_METHODS = BASELINES + TRAINED
JSON_ONLY = ("instruction-constrained",)
# Settings the comparison sets per method itself: a value from the task file or the command line would be unfair.
PER_METHOD_KEYS = ("method", "max_steps", "epochs", "learning_rate")


class CompareConfig(StrictModel):
    methods: list[str] = Field(
        default_factory=lambda: list(ALL_METHODS),
        description=f"methods to compare, in order, from: {', '.join(ALL_METHODS)} (instruction-constrained: JSON tasks"
        " only; the trained ones get the same token budget)",
    )
    budget_tokens: int = Field(
        100_000, ge=1, description="training tokens (rows' real tokens, no padding) every trained method gets"
    )
    shots: int = Field(3, ge=1, description="training rows shown as examples by the few-shot method")
    priority: Literal["quality", "latency", "cost"] = Field("quality", description="what the recommendation favours")
    quality_tolerance: float = Field(
        0.05, ge=0, le=1, description="latency/cost pick among methods at most this far below the best quality"
    )
    price_per_1k_prompt_tokens: float = Field(0.0005, ge=0, description="price of 1,000 prompt tokens (USD)")
    price_per_train_hour: float = Field(0.10, ge=0, description="price of one hour of the training machine (USD)")
    requests: int = Field(10_000, ge=1, description="requests expected in production, for the cost priority")
    test_rows: int = Field(100, ge=1, description="held-out test rows every method is scored on")
    eval_batch_size: int = Field(16, ge=1, description="requests per generation batch when scoring")
    learning_rates: dict[str, float] = Field(
        default_factory=dict,
        description="peak learning rate per trained method, e.g. prompt=3e-2,lora=2e-4 (none: each method's default)",
    )
    isolate: bool = Field(True, description="run each method in its own process (own peak memory, no shared caches)")
    constrain: bool = Field(True, description="JSON tasks: the trained methods decode under the task's schema")
    redo: bool = Field(False, description="measure again methods whose earlier result has other settings")

    def check(self) -> None:
        problems = [f"unknown method {m!r}" for m in self.methods if m not in ALL_METHODS]
        problems += [f"method {m!r} listed twice" for m in set(self.methods) if self.methods.count(m) > 1]
        problems += [f"learning_rates: {m!r} is not a trained method" for m in self.learning_rates if m not in TRAINED]
        problems += [f"learning_rates: {m} must be > 0" for m, v in self.learning_rates.items() if v <= 0]
        if not self.methods:
            problems.append("no methods given")
        if problems:
            raise ConfigError("; ".join(problems), f"choose among: {', '.join(ALL_METHODS)}")


# --- the plan: same data, same seed, same token budget ----------------------------------------------------------
@dataclass
class BudgetPlan:
    budget_tokens: int
    rows: int  # training rows after the eval hold-out and the max_length filter
    mean_row_tokens: float  # real tokens of an encoded training row (what `fit` counts, padding excluded)
    rows_per_step: int
    tokens_per_step: float
    steps: int

    @property
    def planned_tokens(self) -> float:
        return self.steps * self.tokens_per_step


def plan_budget(budget_tokens: int, row_lengths: list[int], cfg: TrainConfig) -> BudgetPlan:
    """Optimizer steps that spend `budget_tokens` training tokens: the nearest whole step, so that steps × tokens per
    step lies within half a step of the budget. Soft-prompt positions are not data and do not count."""
    if not row_lengths:
        raise TaskTuneError("no training rows fit max_length", "raise --max-length")
    mean = sum(row_lengths) / len(row_lengths)
    rows_per_step = cfg.batch_size * cfg.grad_accum
    per_step = mean * rows_per_step
    steps = max(1, round(budget_tokens / per_step))
    return BudgetPlan(budget_tokens, len(row_lengths), mean, rows_per_step, per_step, steps)


def _training_row_lengths(task: TaskConfig, cfg: TrainConfig) -> list[int]:
    """The rows `train` will see, encoded as it encodes them (same hold-out, same filter)."""
    from tasktune.batching import encode_rows, split_eval
    from tasktune.models import load_tokenizer
    from tasktune.render import ChatFormat

    path = task.data_path("train")
    if path is None:
        raise ConfigError("the task has no training data (data.train)", "set data.train in the task file")
    rows = read_examples(path)
    if task.data_path("eval") is None:
        rows, _ = split_eval(rows, cfg.eval_split, cfg.seed)
    fmt = ChatFormat(load_tokenizer(cfg.model), cfg.system_prompt)
    instruction = task.instruction if task.train_with_instruction else None
    kept, _ = encode_rows(fmt, rows, instruction, cfg.max_length)
    return [len(r.input_ids) for r in kept]


def method_config(base: TrainConfig, method: str, plan: BudgetPlan, lrs: dict[str, float]) -> TrainConfig:
    data = base.model_dump() | {"method": method, "max_steps": plan.steps, "epochs": 1.0}
    data["learning_rate"] = lrs.get(method, DEFAULT_LEARNING_RATES[method])
    return TrainConfig.model_validate(data)


def _fingerprint(spec: dict) -> str:
    keep = {k: v for k, v in spec.items() if k not in ("fingerprint", "method_dir")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_methods(task_file: Path, task: TaskConfig, ccfg: CompareConfig, base: TrainConfig, max_new_tokens: int):
    """One spec per method: all its process needs, and the fingerprint that decides whether a result is reused."""
    test_path = task.data_path("test")
    # without task metrics, the spec (and so the fingerprint) is what it was before tasks could name them: earlier
    # compare folders stay resumable
    no_metrics = {"metrics"} if not task.metrics else set()
    common = {
        "task_file": str(task_file.resolve()),
        "task": task.model_dump(mode="json", by_alias=True, exclude={"base_dir", "train", *no_metrics}),
        "data_sha256": {k: file_fingerprint(p) for k in ("train", "eval", "test") if (p := task.data_path(k))},
        "model": base.model,
        "test_rows": ccfg.test_rows,
        "test_file": str(test_path),
        "eval_batch_size": ccfg.eval_batch_size,
        "max_new_tokens": max_new_tokens,
        "precision": base.precision,
        "seed": base.seed,
    }
    trained = [m for m in ccfg.methods if m in TRAINED]
    plan = plan_budget(ccfg.budget_tokens, _training_row_lengths(task, base), base) if trained else None
    specs = {}
    schema = task_schema(task)[0] if task.output.kind == "json" else None
    for m in ccfg.methods:
        spec = common | {"method": m}
        if m == "few-shot":
            spec["shots"] = ccfg.shots
        if schema is not None and (m == "instruction-constrained" or (m in TRAINED and ccfg.constrain)):
            spec["constrain"] = {"schema": schema, "copy_fields": task.output.copy_fields}
        if m in TRAINED:
            spec["train"] = method_config(base, m, plan, ccfg.learning_rates).model_dump(mode="json")
            spec["budget"] = asdict(plan) | {"planned_tokens": plan.planned_tokens}
        spec["fingerprint"] = _fingerprint(spec)
        specs[m] = spec
    return specs, plan


# --- one method, in its own process ----------------------------------------------------------------------------------
def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt"))


def run_method(spec: dict, method_dir: Path, isolated: bool = False) -> dict:
    """Train (if the method trains), then score on the held-out rows; writes method_dir/result.json when done."""
    t0 = time.perf_counter()
    rss_start = _max_rss_mb()
    task = load_task(spec["task_file"])
    test = read_examples(Path(spec["test_file"]))[: spec["test_rows"]]
    method = spec["method"]
    result: dict = {"name": method, "fingerprint": spec["fingerprint"], "spec": spec, "isolated": isolated}
    if method in TRAINED:
        from tasktune.strategies import get_strategy

        cfg = TrainConfig.model_validate(spec["train"])
        run_dir = method_dir / "run"
        if run_dir.exists():  # left by an interrupted attempt: its result was never written
            shutil.rmtree(run_dir)
        tr = train(task, cfg, run_dir)
        gc.collect()  # free the optimizer and gradients before generation
        strategy = get_strategy(method)
        train_seconds = tr.seconds - tr.eval_seconds
        result["train"] = tr.to_dict() | {
            "train_seconds": train_seconds,
            "trained_tokens": round(tr.tokens_per_s * train_seconds),
            "learning_rate": cfg.resolved_learning_rate(),
        }
        result["peak_rss_train_mb"] = _max_rss_mb()
        result["trainable_params"], result["total_params"] = tr.trainable_params, tr.total_params
        result["artefact_bytes"] = _weights_bytes(run_dir / strategy.weights_dir)
        result["virtual_tokens"] = strategy.prepended_tokens(cfg)
        result["loss_curve"] = [[r["step"], r["train/loss"]] for r in read_metrics(run_dir) if "train/loss" in r]
        predictor = Predictor.from_run(run_dir, constrain="constrain" in spec)
        shots, mode = [], "bare_input"
    else:
        constraint = spec.get("constrain")
        b = baseline(task, spec["model"], shots=spec.get("shots", 0) if method == "few-shot" else 0, seed=spec["seed"],
                     max_new_tokens=spec["max_new_tokens"], constrain=bool(constraint),
                     schema=(constraint or {}).get("schema"), precision=spec["precision"])  # fmt: skip
        predictor, shots, mode = b.predictor, b.shots, b.mode
        result |= {"train": None, "trainable_params": 0, "artefact_bytes": 0, "virtual_tokens": 0, "loss_curve": []}
    predictor.max_new_tokens = spec["max_new_tokens"]  # the same answer cap for every method
    report = evaluate(predictor, test, task, name=method, mode=mode, shots=shots, batch_size=spec["eval_batch_size"])
    # every answer with its reference, to read why a method scores what it scores (before result.json marks it done)
    write_jsonl(method_dir / "predictions.jsonl", report.predictions)
    metric, quality = report.main_metric
    m = report.metrics
    result |= {
        "mode": mode,
        "metric": metric,
        "quality": quality,
        "format_valid_rate": m.get("schema_valid_rate" if task.json_schema() else "valid_json_rate"),
        "metrics": {k: v for k, v in m.items() if k != "per_field"},
        "prompt_tokens_mean": report.prompt_tokens_mean,
        "generated_tokens_mean": report.generated_tokens_mean,
        "latency_ms_mean": report.latency_ms_mean,
        "examples_per_s": report.examples_per_s,
        "stopped_rate": report.stopped_rate,
        "constrained": report.constrained,
        "n": report.n,
        "eval_seconds": report.seconds,
        "rss_start_mb": rss_start,
        "peak_rss_mb": _max_rss_mb(),
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_json(method_dir / "result.json", result)
    return result


def _run_isolated(spec: dict, method_dir: Path) -> dict:
    spec_path = method_dir / "spec.json"
    atomic_write_json(spec_path, spec)
    proc = subprocess.run([sys.executable, "-m", "tasktune.compare", "--worker", str(spec_path)], check=False)
    result_path = method_dir / "result.json"
    if proc.returncode != 0 or not result_path.is_file():
        raise TaskTuneError(
            f"method {spec['method']} failed (exit code {proc.returncode}); its messages are above",
            "fix the cause and run the same command again: finished methods are reused",
        )
    return json.loads(result_path.read_text(encoding="utf-8"))


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b and k != "fingerprint":
            keys.append(f"{prefix}{k}")
    return keys


# --- the comparison -------------------------------------------------------------------------------------------------
@dataclass
class CompareResult:
    out: str
    task: str
    model: str
    priority: str
    budget: dict | None
    prices: dict
    instruction_prompt_tokens_mean: float
    methods: list[dict]
    recommended: str
    reason: str
    seconds: float
    reused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def compare(task_file: str | Path, ccfg: CompareConfig, out: str | Path, train_overrides: dict | None = None):
    """Run (or resume) the comparison into `out` and write results.json, report.md and report.html there."""

    t0 = time.perf_counter()
    ccfg.check()
    overrides = train_overrides or {}
    fixed = [k for k in PER_METHOD_KEYS if k in overrides]
    if fixed:
        raise ConfigError(
            f"compare sets {', '.join(fixed)} per method (the token budget decides the steps)",
            "drop those flags; use --budget-tokens, or learning_rates per method",
        )
    task_file = Path(task_file)
    task = load_task(task_file)
    if task.output.kind != "json" and any(m in JSON_ONLY for m in ccfg.methods):
        skipped = [m for m in ccfg.methods if m in JSON_ONLY]
        print(f"tasktune compare: skipping {', '.join(skipped)}: the task's answers are text, not JSON")
        ccfg = ccfg.model_copy(update={"methods": [m for m in ccfg.methods if m not in JSON_ONLY]})
    if task.data_path("test") is None:
        raise ConfigError(f"{task_file}: compare scores every method on held-out rows, but data.test is not set",
                          "add a test file to the task (rows never used in training)")  # fmt: skip
    if task.data_path("train") is None:
        raise ConfigError(f"{task_file}: the task has no training data (data.train)", "set data.train")
    base = merge_overrides(task.train.model_copy(update={"learning_rate": None}), overrides)
    out = ensure_writable_dir(out, what="compare folder")
    cap = answer_cap_for(task, base.model)
    specs, plan = plan_methods(task_file, task, ccfg, base, cap)
    if plan is not None:
        print(
            f"tasktune compare: budget {ccfg.budget_tokens:,} training tokens = {plan.steps} steps of"
            f" {plan.rows_per_step} rows (mean {plan.mean_row_tokens:.0f} tokens/row) for every trained method"
        )

    results, reused = [], []
    for i, name in enumerate(ccfg.methods, start=1):
        spec, method_dir = specs[name], out / "methods" / name
        done = method_dir / "result.json"
        if done.is_file():
            old = json.loads(done.read_text(encoding="utf-8"))
            if old.get("fingerprint") == spec["fingerprint"]:
                print(f"tasktune compare: [{i}/{len(specs)}] {name}: reusing the finished result in {method_dir}")
                results.append(old)
                reused.append(name)
                continue
            if not ccfg.redo:
                changed = _changed_keys(old.get("spec", {}), spec) or ["(unknown)"]
                raise ConfigError(
                    f"{done} was measured with other settings (changed: {', '.join(changed[:6])})",
                    "pass --redo to measure it again with the new settings, or choose a new --out folder",
                )
        print(f"tasktune compare: [{i}/{len(specs)}] {name}")
        method_dir.mkdir(parents=True, exist_ok=True)
        results.append(_run_isolated(spec, method_dir) if ccfg.isolate else run_method(spec, method_dir))
        gc.collect()

    baseline_tokens = _instruction_prompt_tokens(task, base.model, ccfg.test_rows)
    rows = [_derive(r, baseline_tokens, ccfg) for r in results]
    name, reason = recommend(rows, ccfg)
    result = CompareResult(
        out=str(out),
        task=task.name,
        model=base.model,
        priority=ccfg.priority,
        budget=(asdict(plan) | {"planned_tokens": plan.planned_tokens}) if plan else None,
        prices={
            "price_per_1k_prompt_tokens": ccfg.price_per_1k_prompt_tokens,
            "price_per_train_hour": ccfg.price_per_train_hour,
            "requests": ccfg.requests,
        },
        instruction_prompt_tokens_mean=baseline_tokens,
        methods=rows,
        recommended=name,
        reason=reason,
        seconds=time.perf_counter() - t0,
        reused=reused,
    )
    write_report(result, out)
    return result


def _instruction_prompt_tokens(task: TaskConfig, model: str, n: int) -> float:
    """Prompt tokens per request of the base model given the long instruction (tokenizer only): the price baseline."""
    from tasktune.models import load_tokenizer
    from tasktune.render import ChatFormat

    fmt = ChatFormat(load_tokenizer(model))
    test = read_examples(task.data_path("test"))[:n]
    lengths = [len(fmt.encode_prompt(fmt.with_instruction(ex.prompt_messages, task.instruction))) for ex in test]
    return sum(lengths) / max(len(lengths), 1)


def _derive(r: dict, baseline_tokens: float, ccfg: CompareConfig) -> dict:
    """Costs and break-even. A soft prompt occupies positions like prompt tokens, so it is priced as such; a prefix
    is attended to but never run through the layers, so it is not."""
    price = ccfg.price_per_1k_prompt_tokens / 1000
    effective = r["prompt_tokens_mean"] + (r["virtual_tokens"] if r["name"] == "prompt" else 0)
    train_seconds = r["train"]["train_seconds"] if r["train"] else 0.0
    train_cost = train_seconds / 3600 * ccfg.price_per_train_hour
    per_request = effective * price
    saving = (baseline_tokens - effective) * price
    if r["train"] is None:
        break_even = None  # nothing to repay
    elif saving > 0:
        break_even = math.ceil(train_cost / saving)
    else:
        break_even = math.inf  # a longer prompt than the instruction: never repaid
    return r | {
        "effective_prompt_tokens": effective,
        "train_cost": train_cost,
        "cost_per_request": per_request,
        "saving_per_request": saving,
        "break_even_requests": break_even,
        "total_cost": train_cost + ccfg.requests * per_request,
    }


def recommend(rows: list[dict], ccfg: CompareConfig) -> tuple[str, str]:
    """The method for the stated priority, and why, in numbers; "none" when no method scored at all."""
    best = max(rows, key=lambda r: (r["quality"], -r["latency_ms_mean"]))
    metric = best["metric"]
    if best["quality"] <= 0:
        return "none", (
            f"no method scored above 0 on {metric}, so none does the task yet; give the trained methods more"
            " --budget-tokens (or train one with `tasktune train` and more epochs), and check the data with"
            " `tasktune check`"
        )
    if ccfg.priority == "quality":
        others = sorted((r for r in rows if r is not best), key=lambda r: -r["quality"])
        runner = f"; next: {others[0]['name']} {others[0]['quality']:.3f}" if others else ""
        return best["name"], f"highest {metric} ({best['quality']:.3f}{runner})"
    ok = [r for r in rows if r["quality"] >= best["quality"] - ccfg.quality_tolerance]
    within = (
        f"among methods within {ccfg.quality_tolerance:.2f} of the best {metric} ({best['name']} {best['quality']:.3f})"
    )
    if ccfg.priority == "latency":
        pick = min(ok, key=lambda r: r["latency_ms_mean"])
        lat = pick["latency_ms_mean"]
        return pick["name"], f"lowest latency ({lat:.0f} ms/request, {metric} {pick['quality']:.3f}) {within}"
    pick = min(ok, key=lambda r: r["total_cost"])
    return pick["name"], (
        f"lowest cost for {ccfg.requests:,} requests (${pick['total_cost']:.4f}: training ${pick['train_cost']:.4f}"
        f" + requests ${ccfg.requests * pick['cost_per_request']:.4f}; {metric} {pick['quality']:.3f}) {within}"
    )  # fmt: skip


# --- the report -----------------------------------------------------------------------------------------------------
COLUMNS = [  # (header, key, format)
    ("quality", "quality", "{:.3f}"),
    ("format-valid", "format_valid_rate", "{:.1%}"),
    ("prompt tok/req", "effective_prompt_tokens", "{:.0f}"),
    ("gen tok/req", "generated_tokens_mean", "{:.1f}"),
    ("latency ms/req", "latency_ms_mean", "{:.0f}"),
    ("examples/s", "examples_per_s", "{:.2f}"),
    ("train s", "train_seconds", "{:.1f}"),
    ("train tok/s", "train_tokens_per_s", "{:.0f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("trainable params", "trainable_params", "{:,}"),
    ("weights on disk", "artefact_bytes", "bytes"),
    ("break-even req", "break_even_requests", "breakeven"),
]


def _cell(r: dict, key: str, fmt: str) -> str:
    value = {"train_seconds": (r["train"] or {}).get("train_seconds"),
             "train_tokens_per_s": (r["train"] or {}).get("tokens_per_s")}.get(key, r.get(key))  # fmt: skip
    if fmt == "breakeven":
        return "–" if value is None else "never" if value == math.inf else f"{value:,}"
    if value is None or (key.startswith("train") and r["train"] is None):
        return "–"
    if fmt == "bytes":
        return "–" if not value else _human_bytes(value)
    return fmt.format(value)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def table_rows(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    from tasktune.task_metrics import METRICS

    # the task's own metrics (task.yaml `metrics`) come right after quality
    extra = [k for k in result.methods[0]["spec"]["task"].get("metrics", []) if k in METRICS]
    header = ["method", COLUMNS[0][0], *extra, *(h for h, _, _ in COLUMNS[1:])]
    body = [[r["name"], _cell(r, *COLUMNS[0][1:]), *(METRICS[k].format(r["metrics"].get(k)) for k in extra),
             *(_cell(r, k, f) for _, k, f in COLUMNS[1:])] for r in result.methods]  # fmt: skip
    return header, body


def format_table(result: CompareResult) -> str:
    header, body = table_rows(result)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([line(header), *(line(r) for r in body)])


def _settings_rows(result: CompareResult) -> list[tuple[str, str]]:
    rows = []
    for r in result.methods:
        spec = r["spec"]
        if r["train"] is None:
            what = "base model + instruction" + (f" + {spec['shots']} examples" if "shots" in spec else "")
            what += "; decoded under the task's JSON Schema" if "constrain" in spec else ""
        else:
            t = spec["train"]
            size = {"lora": f"r={t['lora']['r']} alpha={t['lora']['alpha']}", "full": "all weights",
                    "prefix": f"{t['prefix']['num_virtual_tokens']} virtual tokens",
                    "prompt": f"{t['prompt']['num_virtual_tokens']} virtual tokens"}[r["name"]]  # fmt: skip
            what = (f"{size}; lr {t['learning_rate']:g}; {t['max_steps']} steps × {t['batch_size'] * t['grad_accum']}"
                    f" rows; {r['train']['trained_tokens']:,} tokens trained; seed {t['seed']}; final loss"
                    f" {r['train']['train_loss']:.3f}")  # fmt: skip
        rows.append((r["name"], what))
    return rows


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


BREAK_EVEN = ("break-even requests = training hours × price per training hour ÷ ((instruction prompt tokens − method"
              " prompt tokens) / 1000 × price per 1k prompt tokens)")  # fmt: skip


def _notes(result: CompareResult) -> list[str]:
    p, b = result.prices, result.budget
    notes = [
        f"Task {result.task}, base model {result.model}; every method scored on the same {result.methods[0]['n']}"
        f" held-out rows; quality = {result.methods[0]['metric']}.",
        f"Recommended for priority **{result.priority}**: **{result.recommended}** — {result.reason}.",
        f"Prices: ${p['price_per_1k_prompt_tokens']:g} per 1k prompt tokens, ${p['price_per_train_hour']:g} per"
        f" training hour, {p['requests']:,} requests expected (flags --price-per-1k-prompt-tokens,"
        " --price-per-train-hour, --requests).",
        f"{BREAK_EVEN}; baseline: {result.instruction_prompt_tokens_mean:.0f} prompt tokens with the instruction.",
        "Prompt tokens of prompt tuning include its soft-prompt positions; a prefix is attended to, not run through"
        " the layers, and is not counted. Peak RSS is each method's own process (model, data, generation).",
    ]
    if b:
        notes.insert(1, f"Training budget: {b['budget_tokens']:,} tokens = {b['steps']} steps × {b['rows_per_step']}"
                        f" rows × {b['mean_row_tokens']:.1f} mean tokens/row ({b['rows']:,} training rows), the same"
                        " rows, order and seed for every trained method.")  # fmt: skip
    return notes


def render_markdown(result: CompareResult) -> str:
    header, body = table_rows(result)
    parts = [f"# tasktune compare: {result.task}", "", _md_table(header, body), ""]
    parts += [f"- {n}" for n in _notes(result)]
    parts += ["", "## Settings", "", _md_table(["method", "settings"], [list(r) for r in _settings_rows(result)]), ""]
    return "\n".join(parts)


def make_plots(result: CompareResult) -> dict[str, str]:
    """Three charts as base64 PNG: quality vs prompt tokens, quality vs training time, the loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result.methods[0]["metric"]
    plots = {}
    for key, xkey, xlabel in (("quality_vs_prompt_tokens", "effective_prompt_tokens", "prompt tokens per request"),
                              ("quality_vs_training_time", "train_seconds", "training time (s)")):  # fmt: skip
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in result.methods:
            x = (r["train"] or {}).get("train_seconds", 0.0) if xkey == "train_seconds" else r[xkey]
            ax.scatter([x], [r["quality"]], s=40)
            ax.annotate(r["name"], (x, r["quality"]), textcoords="offset points", xytext=(5, 4), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {xlabel}")
        ax.grid(alpha=0.3)
        plots[key] = png(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in result.methods:
        if r["loss_curve"]:
            steps, losses = zip(*r["loss_curve"], strict=True)
            ax.plot(steps, losses, label=r["name"])
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss")
    ax.set_title("training loss (same rows, same order)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    plots["loss_curves"] = png(fig)
    return plots


def render_html(result: CompareResult) -> str:
    from html import escape

    header, body = table_rows(result)
    th = "".join(f"<th>{escape(h)}</th>" for h in header)
    trs = "".join(
        f"<tr{' class=highlight' if row[0] == result.recommended else ''}>"
        + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in body
    )  # fmt: skip
    settings = "".join(f"<tr><td>{escape(a)}</td><td>{escape(b)}</td></tr>" for a, b in _settings_rows(result))
    notes = "".join(f"<li>{escape(n).replace('**', '')}</li>" for n in _notes(result))
    body_html = f"""<p class="recommendation">Recommended for <b>{escape(result.priority)}</b>:
 <b>{escape(result.recommended)}</b> &mdash; {escape(result.reason)}</p>
<table id="results"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>
<ul>{notes}</ul>
<h2>Plots</h2>{figures(make_plots(result))}
<h2>Settings</h2><table id="settings"><tbody>{settings}</tbody></table>"""
    css = "#results td { text-align: right; }\n#results td:first-child, #results th:first-child { text-align: left; }"
    return page(f"tasktune compare: {result.task}", body_html, css)


def write_report(result: CompareResult, out: Path) -> None:
    atomic_write_json(out / "results.json", _jsonable(result.to_dict()))
    atomic_write_text(out / "report.md", render_markdown(result))
    atomic_write_text(out / "report.html", render_html(result))


def _jsonable(obj):
    """JSON has no infinity: a never-repaid break-even is written as the string "never"."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return "never" if obj == math.inf else obj


def _worker(spec_path: str) -> int:
    from tasktune.runtime import quiet_libraries

    quiet_libraries()
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    try:
        run_method(spec, Path(spec_path).parent, isolated=True)
    except TaskTuneError as e:
        print(f"tasktune: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2]))
    sys.exit("usage: python -m tasktune.compare --worker SPEC.json (internal; use `tasktune compare`)")
