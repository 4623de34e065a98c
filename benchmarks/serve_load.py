"""Load test of `tasktune serve`: 32 concurrent OpenAI clients against two LoRA adapters on one base model.

    python benchmarks/serve_load.py [JSON_RUN SEVERITY_RUN] [--requests 96] [--clients 32] [--json FILE]

Without run folders it first trains two quick LoRA runs on the real default model (SmolLM2-135M-Instruct) from the
bug-report example: one answers with the report's JSON record, the other with its severity alone (one word). It then
starts the real server (`tasktune serve`, a subprocess on a free loopback port), sends one warm-up request per
adapter, and lets --clients threads send --requests requests, alternating the two adapters, each through the
official `openai` client. It reports requests/s, p50/p95 latency, errors and wrong-adapter answers, detected by
format: the JSON run's answers start with `{`, the severity run's are one word. Both must be 0.

Two given runs are taken as (JSON-format run, one-word run), in that order.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SEVERITIES = {"critical", "high", "medium", "low"}


def train_runs(work: Path, steps: int) -> tuple[Path, Path]:
    """Two quick LoRA runs on the default model: bug report → JSON, and bug report → severity word."""
    from tasktune.config import TaskConfig, load_task, merge_overrides
    from tasktune.data import read_examples
    from tasktune.examples.bug_reports import write_bug_reports
    from tasktune.fsio import write_jsonl
    from tasktune.train import train

    data = write_bug_reports(work / "data", n=steps * 8, seed=0, n_eval=32, n_test=200)
    task = load_task(data / "task.yaml")
    settings = {"max_steps": steps, "eval_every": steps, "eval_max_rows": 16}
    cfg = merge_overrides(task.train, settings)
    train(task, cfg, work / "run-json")
    for split in ("train", "eval"):
        rows = [{"input": ex.input_text, "output": json.loads(ex.answer)["severity"]}
                for ex in read_examples(data / f"{split}.jsonl")]  # fmt: skip
        write_jsonl(work / f"severity-{split}.jsonl", rows)
    splits = {split: str(work / f"severity-{split}.jsonl") for split in ("train", "eval")}
    severity = TaskConfig(name="bug-severity", output={"kind": "text"}, data=splits)
    train(severity, cfg, work / "run-severity")
    return work / "run-json", work / "run-severity"


def start_server(runs: list[Path], batch_size: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "tasktune", "serve", *map(str, runs), "--port", "0", "--max-batch-size",
           str(batch_size)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    url: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if " on http://" in line and not url:
                url.append(line.split(" on ")[-1].strip())
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(600)
    if not url:
        proc.kill()
        raise SystemExit("server did not start:\n" + "".join(lines))
    return proc, url[0]


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="two run folders: a JSON-format run, then a one-word run")
    ap.add_argument("--requests", type=int, default=96, help="requests in the measured phase")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients")
    ap.add_argument("--batch-size", type=int, default=16, help="the server's --max-batch-size")
    ap.add_argument("--steps", type=int, default=20, help="training steps of each quick run (without RUN args)")
    ap.add_argument("--work", help="folder for the quick runs and data (default: a temporary folder)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    from openai import OpenAI

    from tasktune.data import read_examples
    from tasktune.rundir import load_run_task

    os.environ.setdefault("TASKTUNE_NO_PROGRESS", "1")
    t0 = time.perf_counter()
    if args.runs and len(args.runs) != 2:
        raise SystemExit("pass two run folders (a JSON-format run, then a one-word run), or none")
    work = Path(args.work or tempfile.mkdtemp(prefix="serve-load-"))
    runs = [Path(r) for r in args.runs] if args.runs else list(train_runs(work, args.steps))
    train_s = time.perf_counter() - t0
    task = load_run_task(runs[0])
    inputs = [ex.input_text for ex in read_examples(task.data_path("test") or task.data_path("eval"))]
    names = [r.resolve().name for r in runs]
    jobs = [(names[i % 2], inputs[i % len(inputs)]) for i in range(args.requests)]

    proc, url = start_server(runs, args.batch_size)
    try:
        client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)

        def ask(job):
            model, text = job
            t = time.perf_counter()
            try:
                r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
                return model, r.choices[0].message.content, time.perf_counter() - t, None, r.usage.completion_tokens
            except Exception as e:  # counted, reported, and the run goes on
                return model, None, time.perf_counter() - t, f"{type(e).__name__}: {e}", 0

        for name in names:  # warm-up: first-batch costs (oneDNN kernels, caches) are not load
            ask((name, inputs[0]))
        t_load = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(ask, jobs))
        wall = time.perf_counter() - t_load
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)

    def fits(model: str, answer: str) -> bool:
        json_like = answer.lstrip().startswith("{")
        return json_like if model == names[0] else (not json_like and len(answer.split()) == 1)

    ok = [r for r in results if r[3] is None]
    wrong = [r for r in ok if not fits(r[0], r[1])]
    latencies = sorted(r[2] for r in ok)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    figures = {
        "requests": len(results),
        "clients": args.clients,
        "adapters": names,
        "seconds": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 3),
        "completion_tokens_per_s": round(sum(r[4] for r in ok) / wall, 1),
        "latency_p50_s": round(q[49], 2),
        "latency_p95_s": round(q[94], 2),
        "errors": len(results) - len(ok),
        "wrong_adapter_answers": len(wrong),
        "server_peak_rss_mb": round(rss) if rss else None,
        "batch_size": args.batch_size,
        "train_seconds": round(train_s, 1) if not args.runs else None,
        "examples": {n: next((r[1] for r in ok if r[0] == n), None) for n in names},
        "first_errors": [r[3] for r in results if r[3]][:3],
        "first_wrong": [{"model": r[0], "answer": r[1]} for r in wrong[:3]],
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if figures["errors"] or figures["wrong_adapter_answers"]:
        raise SystemExit("serve_load: errors or wrong-adapter answers (see above)")
    return figures


if __name__ == "__main__":
    main()
