"""Real tasks: the base model, few-shot prompting, tuning with default settings and a TF-IDF baseline, side by side.

For every task folder in SUITE_DIR (task.yaml + train.jsonl + test.jsonl, as written by
`python /work/shared/realdata/build.py SUITE_DIR`) and every generated example task, each method is scored on the
task's test rows:

    base      the base model given the task's instruction (max_new_tokens sized from the training answers)
    shots     the same plus 3 training rows as few-shot examples
    defaults  `tasktune.train.train` with the task's own settings (plus --train-flag), then the tuned run, bare input
    tfidf     label tasks only: word 1-2 + char 2-5 gram TF-IDF and logistic regression (C by 5-fold CV on train)

Each (task, method) result is saved to OUT/results.json as soon as it is done; a rerun skips those already there
(unless --redo), so a long benchmark can be stopped and resumed (an interrupted training run resumes from its newest
checkpoint). The table goes to the screen and to OUT/table.md, with the machine and the command that made it.
OUT also holds each evaluation with its predictions (reports/TASK/METHOD.json), the tuned runs (runs/TASK) and the
generated tasks' data (generated/NAME).

    pip install -e '.[bench]'      # scikit-learn for the tfidf baseline
    python benchmarks/real_tasks.py SUITE_DIR [--tasks a,b] [--generated bug-reports:2000,ticket-summaries:1000]
        [--methods base,shots,defaults,tfidf] [--test-rows N] [--seed S] [--out DIR] [--train-flag KEY=VALUE ...]
        [--redo]

--seed S: the seed of the generated tasks' data, of the few-shot draw and of the TF-IDF cross-validation folds
(training uses the task's own `seed` setting; change it with --train-flag seed=S).
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import os
import platform
import shlex
import shutil
import sys
import time
import traceback
import warnings
from collections import Counter
from functools import lru_cache
from pathlib import Path

METHODS = ("base", "shots", "defaults", "tfidf")
N_SHOTS = 3
# A label task for the TF-IDF baseline: short one-line answers from a small closed set.
MAX_LABELS = 100
MAX_LABEL_CHARS = 60
# Inverse regularisation strengths tried by cross-validation; L2-normalised TF-IDF rows usually want C >= 1.
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
CV_FOLDS = 5


# --- arguments ----------------------------------------------------------------------------------------------------
def parse_generated(spec: str | None) -> list[tuple[str, int | None]]:
    """'bug-reports:2000,ticket-summaries' -> [('bug-reports', 2000), ('ticket-summaries', None)]."""
    out = []
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        name, _, n = item.partition(":")
        if n and not n.isdigit():
            sys.exit(f"--generated: {item!r}: the row count after ':' must be a whole number (bug-reports:2000)")
        out.append((name, int(n) if n else None))
    return out


def train_keys() -> dict[str, bool]:
    """Every TrainConfig key as a CLI override names it (`max_steps`, `lora.r`), and whether it takes a list."""
    import typing

    from pydantic import BaseModel

    from tasktune.config import TrainConfig

    def takes_list(ann) -> bool:
        return typing.get_origin(ann) is list or any(typing.get_origin(a) is list for a in typing.get_args(ann))

    keys = {}
    for name, field in TrainConfig.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= {f"{name}.{sub}": takes_list(f.annotation) for sub, f in ann.model_fields.items()}
        else:
            keys[name] = takes_list(ann)
    return keys


def parse_train_flags(pairs: list[str]) -> dict:
    """KEY=VALUE pairs as `tasktune train` flags give them: keys like `max_steps` or `lora.r` (`max-steps` too);
    values stay strings for pydantic to convert and check in merge_overrides; a comma splits a list value."""
    known = train_keys()
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep:
            sys.exit(f"--train-flag {pair!r}: expected KEY=VALUE, e.g. --train-flag max_steps=10")
        if key not in known:
            near = difflib.get_close_matches(key, known, n=3)
            sys.exit(f"--train-flag {pair!r}: unknown key {key!r}" + (f"; did you mean {', '.join(near)}?" if near else
                     f"; choose among: {', '.join(known)}"))  # fmt: skip
        overrides[key] = value.split(",") if known[key] and "," in value else value
    return overrides


# --- tasks --------------------------------------------------------------------------------------------------------
def find_tasks(suite: Path, names: list[str] | None) -> dict[str, Path]:
    """The suite's task folders (those with a task.yaml), by folder name; `names` picks some of them."""
    found = {p.parent.name: p for p in sorted(suite.glob("*/task.yaml"))}
    if not found:
        sys.exit(f"{suite}: no task folders (DIR/task.yaml); build them with python /work/shared/realdata/build.py")
    if names is None:
        return found
    if missing := [n for n in names if n not in found]:
        sys.exit(f"--tasks: no task folder {', '.join(missing)} in {suite}; choose among: {', '.join(found)}")
    return {n: found[n] for n in names}


def write_generated(out: Path, generated: list[tuple[str, int | None]], seed: int) -> dict[str, Path]:
    """Write each generated example task into OUT/generated/NAME (deterministic: the same seed and n, the same rows)."""
    from tasktune.examples import get_example

    tasks = {}
    for name, n in generated:
        sized = {"n": n} if n is not None else {}  # each example has its own default size
        folder = get_example(name)(out / "generated" / name, seed=seed, **sized)
        tasks[name] = Path(folder) / "task.yaml"
    return tasks


def label_task_problem(task, answers: list[str]) -> str | None:
    """Why the task is not a label task for the TF-IDF baseline, or None when it is one."""
    from tasktune.metrics import normalise

    if task.output.kind != "text":
        return f"output kind {task.output.kind}"
    if long := [a for a in answers if len(a) > MAX_LABEL_CHARS or "\n" in a]:
        return f"{len(long)} training answer(s) longer than {MAX_LABEL_CHARS} characters or multi-line"
    if (k := len({normalise(a) for a in answers})) > MAX_LABELS:
        return f"{k} distinct training answers (more than {MAX_LABELS})"
    return None


# --- methods ------------------------------------------------------------------------------------------------------
def headline(report) -> dict:
    """The figures kept for one (task, method): the task's main metric, exact match, valid JSON for JSON tasks."""
    metric, value = report.main_metric
    out = {"metric": metric, "main": value, "exact_match": report.metrics.get("exact_match"), "n": report.n}
    if "valid_json_rate" in report.metrics:
        out["valid_json_rate"] = report.metrics["valid_json_rate"]
    return out


@lru_cache(maxsize=1)  # base and shots of one task share the loaded model
def base_predictor(model: str, instruction: str, output_kind: str, max_new_tokens: int):
    from tasktune.predict import Predictor

    return Predictor.from_base(model, instruction=instruction, output_kind=output_kind, max_new_tokens=max_new_tokens)


def run_base(task, test: list, model: str, shots: int, seed: int, batch_size: int, report_path: Path) -> dict:
    from tasktune.batching import suggest_max_new_tokens_for_answers
    from tasktune.data import read_examples
    from tasktune.evaluate import evaluate, pick_shots

    path = task.data_path("train") or task.data_path("test")
    cap = suggest_max_new_tokens_for_answers(model, [ex.answer for ex in read_examples(path)])
    predictor = base_predictor(model, task.instruction, task.output.kind, cap)
    examples = pick_shots(task, shots, seed=seed)
    mode = f"few_shot_{len(examples)}" if examples else "with_instruction"
    report = evaluate(predictor, test, task, name=mode, mode=mode, shots=examples, batch_size=batch_size)
    save_report(report, report_path)
    return headline(report) | {"eval_seconds": report.seconds, "max_new_tokens": cap}


def run_defaults(task, test: list, overrides: dict, run_dir: Path, batch_size: int, report_path: Path) -> dict:
    """Train with the task's settings plus `overrides` into run_dir (or finish an interrupted run there), evaluate."""
    from tasktune.config import merge_overrides
    from tasktune.evaluate import evaluate
    from tasktune.fsio import atomic_write_json
    from tasktune.predict import Predictor
    from tasktune.train import resume_run, train

    record_path = run_dir.with_name(run_dir.name + ".train.json")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    trained = _read_json(record_path) if record_path.is_file() else {}
    if trained.get("train_flags") != overrides:  # none yet, or a run with other settings: start afresh
        shutil.rmtree(run_dir, ignore_errors=True)
        trained = {"train_flags": overrides, "finished": False}
        atomic_write_json(record_path, trained)
    if trained["finished"]:  # trained before; the evaluation was what got interrupted
        print(f"  reusing the finished run {run_dir}")
    else:
        if (run_dir / "run.json").is_file():  # finished, but stopped before its figures were saved: train again
            print(f"  training {run_dir} again: it finished, but its train seconds were not recorded")
            shutil.rmtree(run_dir)
        if (run_dir / "config.yaml").is_file():
            print(f"  resuming the interrupted run {run_dir} (its train seconds count from here)")
            result, resumed = resume_run(run_dir, overrides), True
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # stopped before it wrote anything worth keeping
            result, resumed = train(task, merge_overrides(task.train, overrides), run_dir), False
        r = result.to_dict()
        trained |= {"finished": True, "train_seconds": r["seconds"], "train_eval_seconds": r["eval_seconds"],
                    "steps": r["steps"], "train_loss": r["train_loss"], "eval_loss": r["eval_loss"],
                    "resumed": resumed}  # fmt: skip
        # Figures newer TrainResults may carry; "metric" renamed, as the main metric's name is kept under that key.
        trained |= {("train_metric" if k == "metric" else k): r[k]
                    for k in ("best_metric", "best_step", "metric", "stopped_early", "planned_steps", "recipe")
                    if k in r}  # fmt: skip
        atomic_write_json(record_path, trained)
    trained = {k: v for k, v in trained.items() if k not in ("train_flags", "finished")}
    report = evaluate(Predictor.from_run(run_dir), test, task, name="defaults", mode="bare_input",
                      batch_size=batch_size)  # fmt: skip
    save_report(report, report_path)
    return headline(report) | {"eval_seconds": report.seconds} | trained


def tfidf_baseline(train_texts: list[str], train_labels: list[str], test_texts: list[str],
                   seed: int = 0) -> tuple[list[str], float]:  # fmt: skip
    """Predict a label for each test text with TF-IDF features and logistic regression; also return the C picked.

    Labels are compared case- and space-insensitively (tasktune.metrics.normalise): one class per normalised label,
    answered in its most common spelling. C is picked by stratified k-fold accuracy on the training rows, with the
    vectorisers fitted on each fold's training part only (no vocabulary from the held-out fold)."""
    require_sklearn()
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    from tasktune.metrics import normalise

    spelling = {}
    for label, _ in Counter(train_labels).most_common():
        spelling.setdefault(normalise(label), label)
    y = [normalise(label) for label in train_labels]
    if len(set(y)) == 1:
        return [train_labels[0]] * len(test_texts), 0.0
    # One BLAS thread: L-BFGS calls BLAS on vectors of a few hundred thousand numbers, where threads only wait on
    # each other (measured on 2 busy cores: 0.7 s a fit with one thread, 6.3 s with two).
    with threadpool_limits(1):
        return _fit_predict(train_texts, y, test_texts, seed, spelling)


def _fit_predict(train_texts: list[str], y: list[str], test_texts: list[str], seed: int,
                 spelling: dict[str, str]) -> tuple[list[str], float]:  # fmt: skip
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    folds = min(CV_FOLDS, len(y))
    scores = dict.fromkeys(C_GRID, 0.0)
    with warnings.catch_warnings():
        # Classes rarer than the fold count (a few FAQ categories) are fine: their rows simply miss some folds.
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(train_texts, y))
    for fit_idx, held_idx in splits:
        features = _tfidf_features()
        x_fit = features.fit_transform([train_texts[i] for i in fit_idx])
        x_held = features.transform([train_texts[i] for i in held_idx])
        for c in C_GRID:
            clf = LogisticRegression(C=c, max_iter=2000).fit(x_fit, [y[i] for i in fit_idx])
            scores[c] += (clf.predict(x_held) == [y[i] for i in held_idx]).mean() / folds
    best = max(C_GRID, key=lambda c: scores[c])  # the first (smallest) C on ties
    features = _tfidf_features()
    clf = LogisticRegression(C=best, max_iter=2000).fit(features.fit_transform(train_texts), y)
    return [spelling[p] for p in clf.predict(features.transform(test_texts))], best


def require_sklearn() -> None:
    from tasktune.errors import TaskTuneError

    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise TaskTuneError(
            "the tfidf baseline needs scikit-learn", "pip install -e '.[bench]' (or drop tfidf from --methods)"
        ) from None


def _tfidf_features():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
    ])  # fmt: skip


def run_tfidf(task, test: list, seed: int, report_path: Path) -> dict:
    from tasktune.data import read_examples
    from tasktune.evaluate import EvalReport
    from tasktune.metrics import text_metrics
    from tasktune.task_metrics import METRICS, compute, main_metric_name

    rows = read_examples(task.data_path("train"))
    answers = [ex.answer for ex in rows]
    if problem := label_task_problem(task, answers):
        return {"skipped": f"not a label task: {problem}"}
    t0 = time.perf_counter()
    preds, c = tfidf_baseline([ex.input_text for ex in rows], answers, [ex.input_text for ex in test], seed=seed)
    seconds = time.perf_counter() - t0
    refs = [ex.answer for ex in test]
    metrics = text_metrics(preds, refs)
    metas = [m if isinstance(m := ex.extra.get("meta"), dict) else {} for ex in test]
    metrics |= compute(task.metrics, preds, refs, metas)
    # The main metric as evaluate() picks it (exact match for label answers, or the task's own `metric`).
    name = main_metric_name(task, refs)
    main = name if metrics.get(name) is not None and (name not in METRICS or METRICS[name].higher_is_better) else None
    report = EvalReport(name="tfidf", model="tfidf", mode="tfidf", n=len(test), metrics=metrics,
                        prompt_tokens_mean=0.0, generated_tokens_mean=0.0, latency_ms_mean=0.0, examples_per_s=0.0,
                        stopped_rate=0.0, seconds=seconds, main=main,
                        predictions=[{"where": ex.where, "reference": r, "input": ex.input_text, "output": p}
                                     for ex, r, p in zip(test, refs, preds, strict=True)])  # fmt: skip
    save_report(report, report_path)
    return headline(report) | {"eval_seconds": seconds, "C": c, "labels": len(set(answers))}


# --- results ------------------------------------------------------------------------------------------------------
def save_report(report, path: Path) -> None:
    """The whole evaluation, predictions included: what the table's figure for this (task, method) was made of."""
    from tasktune.fsio import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report.to_dict(with_predictions=True))


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def settings_for(method: str, task_path: Path, task, args, overrides: dict) -> dict:
    """What a saved result depends on; a saved result made with other settings is not reused silently."""
    from tasktune.config import merge_overrides
    from tasktune.rundir import file_fingerprint

    data = {k: (file_fingerprint(p) or "")[:16] for k in ("train", "test") if (p := task.data_path(k))}
    data["task"] = file_fingerprint(task_path)[:16]
    out = {"files_sha256": data, "test_rows": args.test_rows}
    if method in ("base", "shots"):
        out["model"] = merge_overrides(task.train, overrides).model
    if method == "shots":
        out |= {"shots": N_SHOTS, "seed": args.seed}
    if method == "defaults":
        out["train_flags"] = overrides
    if method == "tfidf":
        out["seed"] = args.seed
    return out


def run_method(method: str, task, test: list, args, overrides: dict, out: Path, name: str) -> dict:
    from tasktune.config import merge_overrides

    model = merge_overrides(task.train, overrides).model
    report = out / "reports" / name / f"{method}.json"
    if method == "base":
        return run_base(task, test, model, 0, args.seed, args.batch_size, report)
    if method == "shots":
        return run_base(task, test, model, N_SHOTS, args.seed, args.batch_size, report)
    if method == "defaults":
        return run_defaults(task, test, overrides, out / "runs" / name, args.batch_size, report)
    return run_tfidf(task, test, args.seed, report)


def describe(rec: dict) -> str:
    if "skipped" in rec:
        return f"skipped ({rec['skipped']})"
    parts = [f"{rec['metric']} {_fmt(rec['metric'], rec['main'])}"]
    if rec["metric"] != "exact_match" and rec.get("exact_match") is not None:
        parts.append(f"exact match {rec['exact_match']:.1%}")
    if "valid_json_rate" in rec:
        parts.append(f"valid JSON {rec['valid_json_rate']:.1%}")
    if "train_seconds" in rec:
        parts.append(f"trained {rec['train_seconds'] / 60:.1f} min, {rec['steps']} steps")
    return ", ".join(parts) + f" ({rec['wall_seconds']:.0f} s)"


# --- the table ----------------------------------------------------------------------------------------------------
def machine_line() -> str:
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())  # fmt: skip
    amx = "amx_tile" if "amx_tile" in cpuinfo.split() else "no amx_tile"
    return (f"{model}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {amx}, "
            f"torch {torch.__version__}, {datetime.date.today().isoformat()}")  # fmt: skip


def _fmt(metric: str, value) -> str:
    from tasktune.task_metrics import METRICS

    if value is None:
        return "–"
    return METRICS[metric].format(value) if metric in METRICS else f"{value:.1%}"


def format_table(results: dict, tasks: list[str], command: str) -> str:
    """Markdown: one row per task, the main metric of each method (and the training minutes of `defaults`);
    then exact match, and valid JSON where a task answers in JSON."""
    methods = [m for m in METHODS if any(m in results.get(t, {}) for t in tasks)]
    json_tasks = [t for t in tasks if any("valid_json_rate" in r for r in results.get(t, {}).values())]
    lines = ["# Real tasks", "", f"machine: {machine_line()}", "", f"command: `{command}`", ""]

    def cell(task: str, method: str, key: str) -> str:
        rec = results.get(task, {}).get(method)
        if rec is None:
            return ""
        if "skipped" in rec:
            return "n/a"
        return _fmt(rec["metric"] if key == "main" else key, rec.get(key))

    head = ["task", "n test", "main metric"]
    for m in methods:
        head += [m] + (["train min"] if m == "defaults" else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in tasks:
        recs = [r for r in results.get(t, {}).values() if "skipped" not in r]
        row = [t, str(recs[0]["n"]) if recs else "", recs[0]["metric"] if recs else ""]
        for m in methods:
            row.append(cell(t, m, "main"))
            if m == "defaults":
                rec = results.get(t, {}).get(m)
                row.append(f"{rec['train_seconds'] / 60:.1f}" + ("*" if rec.get("resumed") else "") if rec else "")
        lines.append("| " + " | ".join(row) + " |")
    for key, title, rows in (("exact_match", "exact match", tasks), ("valid_json_rate", "valid JSON", json_tasks)):
        if rows:
            lines += ["", f"{title}:", "", "| task | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
            lines += ["| " + " | ".join([t] + [cell(t, m, key) for m in methods]) + " |" for t in rows]
    if any(r.get("resumed") for t in tasks for r in results.get(t, {}).values()):
        lines += ["", "\\* resumed after an interruption: the minutes count from the resume only."]
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", type=Path, metavar="SUITE_DIR", help="folder of task folders (DIR/task.yaml)")
    ap.add_argument("--tasks", help="comma-separated task folder names (default: all in SUITE_DIR)")
    ap.add_argument("--generated", help="generated example tasks too, NAME[:ROWS],... e.g. bug-reports:2000")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    ap.add_argument("--test-rows", type=int, help="score only the first N test rows (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="generated data, few-shot draw and CV folds (see above)")
    ap.add_argument("--out", type=Path, default=Path("real-tasks-out"), help="results, runs and generated data")
    ap.add_argument("--train-flag", action="append", default=[], metavar="KEY=VALUE",
                    help="a training setting for `defaults`, e.g. max_steps=10; repeatable")  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=16, help="generation batch size")
    ap.add_argument("--redo", action="store_true", help="run again (and retrain) what OUT/results.json already has")
    args = ap.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := [m for m in args.methods if m not in METHODS]:
        ap.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.test_rows is not None and args.test_rows < 1:
        ap.error("--test-rows must be at least 1")
    return args


def plan(args, overrides: dict, out: Path, results: dict) -> list[tuple[str, Path, str, dict]]:
    """(task name, task file, method, settings) to run, in order; stops before any work if a saved result was made
    with other settings (it would be reused silently otherwise)."""
    from tasktune.config import load_task, merge_overrides

    if "tfidf" in args.methods:
        require_sklearn()  # before hours of other methods, not after
    task_paths = find_tasks(args.suite, args.tasks.split(",") if args.tasks else None)
    generated = parse_generated(args.generated)
    if clash := [name for name, _ in generated if name in task_paths]:
        sys.exit(f"--generated: {', '.join(clash)} is also a task folder in {args.suite}; results would mix")
    task_paths |= write_generated(out, generated, args.seed)
    jobs, stale = [], []
    for name, path in task_paths.items():
        task = load_task(path)
        merge_overrides(task.train, overrides)  # bad --train-flag values fail here, before any work
        for method in args.methods:
            settings = settings_for(method, path, task, args, overrides)
            saved = results.get(name, {}).get(method, {}).get("settings")
            if saved is not None and saved != settings and not args.redo:
                changed = sorted(k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k))
                stale.append(f"{name} / {method} ({', '.join(changed)})")
            jobs.append((name, path, method, settings))
    if stale:
        sys.exit(f"{out / 'results.json'} holds results made with other settings: {'; '.join(stale)}\n"
                 "pass --redo to run them again, or choose another --out")  # fmt: skip
    return jobs


def run_job(name: str, path: Path, method: str, args, overrides: dict, out: Path) -> dict:
    """One (task, method): its figures plus wall seconds; raises on failure."""
    from tasktune.config import load_task
    from tasktune.data import read_examples
    from tasktune.errors import TaskTuneError

    if method == "defaults" and args.redo:
        shutil.rmtree(out / "runs" / name, ignore_errors=True)
        (out / "runs" / f"{name}.train.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    task = load_task(path)
    test_path = task.data_path("test")
    if test_path is None:
        raise TaskTuneError(f"{path} has no data.test", "add test rows to the task")
    test = read_examples(test_path)[: args.test_rows]
    rec = run_method(method, task, test, args, overrides, out, name)
    return rec | {"wall_seconds": time.perf_counter() - t0,
                  "date": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip


def main() -> int:
    args = parse_args()
    command = shlex.join(["python", *sys.argv])
    overrides = parse_train_flags(args.train_flag)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from tasktune.errors import TaskTuneError, TrainingStopped
    from tasktune.fsio import atomic_write_json, atomic_write_text, ensure_writable_dir

    print(f"reproduce with: {command}\nmachine: {machine_line()}", flush=True)
    try:
        out = ensure_writable_dir(args.out, what="--out folder")
        results_path = out / "results.json"
        results = _read_json(results_path) if results_path.is_file() else {}
        jobs = plan(args, overrides, out, results)
    except TaskTuneError as e:
        sys.exit(f"error: {e}")
    failed = []
    for i, (name, path, method, settings) in enumerate(jobs, start=1):
        where = f"[{i}/{len(jobs)}] {name} / {method}"
        if method in results.get(name, {}) and not args.redo:
            print(f"{where}: done before: {describe(results[name][method])}", flush=True)
            continue
        print(f"{where} ...", flush=True)
        try:
            rec = run_job(name, path, method, args, overrides, out)
        except (KeyboardInterrupt, TrainingStopped) as e:  # training saved a checkpoint on the signal
            stopped = f"{e.message}; " if isinstance(e, TrainingStopped) else ""
            print(f"\n{where}: {stopped}run the same command again to resume", file=sys.stderr)
            return e.exit_code if isinstance(e, TrainingStopped) else 130
        except Exception as e:  # one broken task or method should not cost the rest of a long benchmark
            msg = str(e) if isinstance(e, TaskTuneError) else traceback.format_exc()
            print(f"{where}: FAILED: {msg}", file=sys.stderr, flush=True)
            failed.append(where)
            continue
        results.setdefault(name, {})[method] = rec | {"settings": settings}
        atomic_write_json(results_path, results)  # saved after each one: a stopped benchmark resumes from here
        print(f"{where}: {describe(rec)}", flush=True)

    table = format_table(results, list(dict.fromkeys(name for name, *_ in jobs)), command)
    atomic_write_text(out / "table.md", table)
    print("\n" + table)
    print(f"results: {results_path}; table: {out / 'table.md'}\nreproduce with: {command}")
    if failed:
        print(f"failed (rerun to retry): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
