"""Measure the recipe's rules across many tasks at once: each variant of the training settings on each task.

    python benchmarks/recipe_sweep.py SUITE_DIR --variants benchmarks/recipe_variants.yaml --out DIR
        [--generated bug-reports:2000,ticket-summaries:1000] [--tasks a,b] [--seeds 0,1] [--workers 8]
        [--test-rows 300]

Every (task, variant, seed) is one `tasktune.train.train` run (validation by the task's metric on, as the defaults
have it) scored on the task's test rows, run in `--workers` processes side by side (on a GPU several small runs
share the card). A variant is a mapping of training settings; `cpu_minutes: M` with `cpu_tokens_per_s: T` instead
fixes the run's length to the steps a CPU at T training tokens/s would take in M minutes (the recipe's time budget),
so a GPU can measure what the CPU recipe gets. Results go to DIR/results.jsonl (one line per run, appended as runs
finish, so a rerun skips finished ones) and DIR/table.md (median over seeds per task and variant).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from real_tasks import find_tasks, write_generated


def steps_for_cpu_minutes(task_yaml: Path, variant: dict) -> int:
    """The optimizer steps a CPU at `cpu_tokens_per_s` makes in `cpu_minutes` on this task's rows."""
    from tasktune.config import DEFAULT_MODEL, load_task
    from tasktune.data import read_examples
    from tasktune.models import load_tokenizer
    from tasktune.recipe import planned_epochs
    from tasktune.render import ChatFormat

    task = load_task(task_yaml)
    rows = read_examples(task.data_path("train"))
    fmt = ChatFormat(load_tokenizer(variant.get("model", DEFAULT_MODEL)), variant.get("system_prompt"))
    mean = statistics.fmean(len(fmt.encode_example(ex.messages).input_ids) for ex in rows[:2000])
    batch = variant.get("batch_size", 4)
    in_time = int(variant["cpu_tokens_per_s"] * 60 * variant["cpu_minutes"] / (mean * batch))
    n = len(rows) - min(int(0.1 * len(rows)), 500)  # the recipe's epochs count the rows left after the hold-out
    by_epochs = int(planned_epochs(n)[0] * n / batch)
    return max(10, min(in_time, by_epochs))


def run_one(task_yaml: str, name: str, variant: dict, seed: int, out: str, test_rows: int) -> dict:
    import os

    os.environ.setdefault("TASKTUNE_NO_PROGRESS", "1")
    from tasktune.config import load_task, merge_overrides
    from tasktune.data import read_examples
    from tasktune.evaluate import evaluate
    from tasktune.predict import Predictor
    from tasktune.train import train

    settings = {k: v for k, v in variant.items() if k not in ("cpu_minutes", "cpu_tokens_per_s")}
    if "cpu_minutes" in variant:
        settings["max_steps"] = steps_for_cpu_minutes(Path(task_yaml), variant)
    task = load_task(task_yaml)
    run = Path(out) / "runs" / f"{Path(task_yaml).parent.name}--{name}--{seed}"
    t0 = time.perf_counter()
    result = train(task, merge_overrides(task.train, settings | {"seed": seed}), run, force=True)
    test = read_examples(task.data_path("test"))[:test_rows]
    report = evaluate(Predictor.from_run(run), test, task, name=name, mode="bare_input", batch_size=64)
    metric, value = report.main_metric
    return {"task": Path(task_yaml).parent.name, "variant": name, "seed": seed, "metric": metric, "score": value,
            "exact_match": report.metrics.get("exact_match"), "valid_json": report.metrics.get("valid_json_rate"),
            "val_best": result.best_metric, "best_step": result.best_step, "steps": result.steps,
            "stopped_early": result.stopped_early, "seconds": time.perf_counter() - t0,
            "settings": settings}  # fmt: skip


def table(results: list[dict], variants: list[str]) -> str:
    tasks = sorted({r["task"] for r in results})
    lines = ["| task | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for t in tasks:
        cells = []
        for v in variants:
            scores = [r["score"] for r in results if r["task"] == t and r["variant"] == v]
            cells.append(f"{statistics.median(scores):.1%} ({len(scores)})" if scores else "–")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    means = []
    for v in variants:
        per_task = [statistics.median([r["score"] for r in results if r["task"] == t and r["variant"] == v])
                    for t in tasks if any(r["task"] == t and r["variant"] == v for r in results)]  # fmt: skip
        means.append(f"**{statistics.fmean(per_task):.1%}**" if len(per_task) == len(tasks) else "–")
    lines.append("| mean over tasks | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main() -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", type=Path)
    ap.add_argument("--variants", type=Path, required=True, help="YAML mapping: variant name -> training settings")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tasks", help="comma-separated task folder names (default: all)")
    ap.add_argument("--generated", default="", help="generated example tasks, NAME:ROWS, comma-separated")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--test-rows", type=int, default=300)
    args = ap.parse_args()
    variants = yaml.safe_load(args.variants.read_text()) or {}
    tasks = find_tasks(args.suite, args.tasks.split(",") if args.tasks else None)
    from real_tasks import parse_generated

    tasks |= write_generated(args.out, parse_generated(args.generated), seed=0)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    finished = {(r["task"], r["variant"], r["seed"]) for r in done}
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(str(path), name, variant, seed) for name, variant in variants.items() for path in tasks.values()
            for seed in seeds if (Path(path).parent.name, name, seed) not in finished]  # fmt: skip
    print(f"{len(jobs)} runs to do ({len(finished)} done before), {args.workers} at a time", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {pool.submit(run_one, *job, str(args.out), args.test_rows): job for job in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            task, name, _, seed = futures[fut]
            try:
                r = fut.result()
            except Exception as e:  # one failed run must not cost the others
                print(f"[{i}/{len(jobs)}] {Path(task).parent.name} {name} seed {seed}: FAILED {e!r}", flush=True)
                continue
            done.append(r)
            with open(log, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(
                f"[{i}/{len(jobs)}] {r['task']} {name} seed {seed}: {r['metric']} {r['score']:.1%}"
                f" (val {r['val_best']}, best step {r['best_step']}/{r['steps']}, {r['seconds']:.0f}s)",
                flush=True,
            )
    text = table(done, list(variants))
    (args.out / "table.md").write_text(f"`{' '.join(sys.argv)}`\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
