"""The training process of one fine-tuning job: `python -m tasktune.jobs.worker STATE JOB_ID --save-every N`.

Started by the server's scheduler, one job at a time, so that serving goes on while a job trains (a process of its
own: its memory is returned when it ends, and a crash in training cannot take the server down). It runs tasktune's
data check, then `train` (or `resume_run` when the job's run folder already holds a started run: the server was
killed and restarted), and reports progress into the database: a metrics event per step, a row per checkpoint.

SIGTERM (a cancel, or the server stopping) ends the loop after the current step, with a checkpoint (train.py's
StopOnSignal). The process holds STATE/worker.lock while it trains and ends itself when its server is gone, so an
orphan of a killed server never trains beside the job's resumed run.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import os
import re
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import yaml

from tasktune.errors import DataError, ModelError, TaskTuneError, TrainingStopped
from tasktune.jobs.convert import JobError, job_task, resolved_hyperparameters, train_settings
from tasktune.jobs.store import Store, new_id

POLL_S = 0.25  # how often progress is read and the parent checked


def job_paths(store: Store, job_id: str) -> dict[str, Path]:
    folder = store.job_dir(job_id)
    return {"folder": folder, "train": folder / "train.jsonl", "validation": folder / "validation.jsonl",
            "run": folder / "run", "log": folder / "worker.log"}  # fmt: skip


class Progress(threading.Thread):
    """Reads the run folder as training writes it: metrics lines become events, new checkpoints become rows, the
    settings the recipe chose become the job's hyper-parameters."""

    def __init__(self, store: Store, job_id: str, run: Path):
        super().__init__(name="tasktune-progress", daemon=True)
        self.store, self.job_id, self.run = store, job_id, run
        self.stopping = threading.Event()
        self.last_step = store.last_metrics_step(job_id)
        self.offset = 0
        self.records: dict[int, dict] = {}
        self.checkpoints: set[int] = set()
        self.settings_seen = False

    def run(self) -> None:
        while not self.stopping.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        try:
            self._settings()
            self._metrics()
            self._checkpoints()
        except Exception as e:  # progress reports must never stop the training
            print(f"tasktune worker: progress report failed: {e}", file=sys.stderr)

    def _settings(self) -> None:
        config = self.run / "config.yaml"
        if self.settings_seen or not config.is_file():
            return
        train = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("train", {})
        self.store.update_job(self.job_id, hyperparameters=resolved_hyperparameters(train))
        self.settings_seen = True

    def _metrics(self) -> None:
        path = self.run / "metrics.jsonl"
        if not path.is_file():
            return
        if path.stat().st_size < self.offset:  # a resumed run cut the log back to its checkpoint
            self.offset = 0
        with open(path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # whole lines only: the last one may be half-written
        for line in data[:end].splitlines():
            record = _json(line)
            if record is None or "step" not in record:
                continue
            self.records[record["step"]] = record
            if record["step"] > self.last_step:
                self.last_step = record["step"]
                self._event(record)
        self.offset += end

    def _event(self, r: dict) -> None:
        data = {"step": r["step"], "train_loss": r.get("train/loss"), "valid_loss": r.get("eval/loss"),
                "learning_rate": r.get("train/lr")}  # fmt: skip
        message = f"Step {r['step']}: training loss={r.get('train/loss', float('nan')):.4f}"
        if r.get("eval/loss") is not None:
            message += f", validation loss={r['eval/loss']:.4f}"
        self.store.add_event(self.job_id, message, type_="metrics", data=data)

    def _checkpoints(self) -> None:
        folder = self.run / "checkpoints"
        if not folder.is_dir():
            return
        for p in sorted(folder.iterdir()):
            m = re.fullmatch(r"step-(\d{8})", p.name)
            if not m or int(m.group(1)) in self.checkpoints or not (p / "state.json").is_file():
                continue
            step = int(m.group(1))
            r = self.records.get(step, {})
            self.store.add_checkpoint(self.job_id, step, {"step": step, "train_loss": r.get("train/loss"),
                                                          "valid_loss": r.get("eval/loss")})  # fmt: skip
            self.checkpoints.add(step)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        self.poll()  # the last steps and checkpoints


def _json(line: bytes) -> dict | None:
    import json

    try:
        return json.loads(line)
    except ValueError:
        return None


def check_data(task, cfg, paths: dict[str, Path], job: dict) -> None:
    """tasktune's data check (the one `tasktune train` runs first); its errors fail the job, by line and file id."""
    from tasktune.check import CheckConfig, check_dataset
    from tasktune.check.scan import task_splits

    report = check_dataset(task_splits(task), task=task, cfg=CheckConfig.for_training(task, cfg))
    if not report.errors:
        return
    f = report.errors[0]
    param = "validation_file" if f.split == "eval" else "training_file"
    lines = ", ".join(str(loc.line) for loc in f.locations[:5])
    where = f" (line{'s' if len(f.locations) > 1 else ''} {lines}{', ...' if f.count > 5 else ''})" if lines else ""
    others = f"; {len(report.errors) - 1} more kind(s) of error: {', '.join(e.code for e in report.errors[1:])}"
    raise JobError(
        f"invalid_{param}",
        f"{param} {job[param]}: the data check found {f.code}: {f.message}{where}; fix: {f.remedy}"
        + (others if len(report.errors) > 1 else ""),
        param,
    )


def write_results(store: Store, job: dict, run: Path) -> str:
    """The step metrics as a CSV file of purpose fine-tune-results (OpenAI's first columns, then tasktune's)."""
    from tasktune.fsio import atomic_write_text
    from tasktune.rundir import read_metrics

    records = read_metrics(run)
    val_keys = sorted({k for r in records for k in r if k.startswith("val/")} - {"val/best", "val/best_step"})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "train_loss", "valid_loss", "learning_rate", "grad_norm",
                *[f"valid_{k[4:]}" for k in val_keys]])  # fmt: skip
    for r in records:
        w.writerow([r.get(k) for k in ("step", "train/loss", "eval/loss", "train/lr", "train/grad_norm", *val_keys)])
    file_id = new_id("file")
    path = store.file_path(file_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())
    store.add_file(file_id, job["tenant"], "step_metrics.csv", "fine-tune-results", path.stat().st_size)
    return file_id


def hide_paths(text: str, store: Store, job: dict, paths: dict[str, Path]) -> str:
    """An error message as the client may see it: the job's files by their ids, no other server path."""
    for key, param in (("train", "training_file"), ("validation", "validation_file")):
        if job.get(param):
            text = text.replace(str(paths[key]), job[param])
    text = text.replace(str(paths["run"]), "the job's run").replace(str(store.state), "<state>")
    return re.sub(r"(?<![\w.-])/(?:[\w.@+-]+/)+[\w.@+-]*", "<path>", text)


def resume_point(run: Path) -> int:
    """The step the run resumes from. A checkpoint of the run's last step, written just before the server was killed
    and the weights saved, cannot be resumed (train.py: "the run already finished"): it is set aside, and the run
    repeats its last steps from the checkpoint before it, which gives the same weights (training is seeded)."""
    from tasktune.checkpoint import find_checkpoint

    found = find_checkpoint(run, tidy=False)
    if found.state is None:
        return 0
    figures = found.state.figures
    if found.state.step >= figures.get("planned_steps", found.state.step + 1) or figures.get("stopped_early"):
        aside = found.path.with_name(f"{found.path.name}.final")
        shutil.rmtree(aside, ignore_errors=True)  # from an earlier kill in the same place
        found.path.rename(aside)
        return resume_point(run)
    return found.state.step


def run_job(store: Store, job_id: str, save_every: int) -> int:
    job = store.job(job_id, None)
    if job is None or job["status"] != "running":
        return 0  # cancelled before it started
    paths = job_paths(store, job_id)
    from tasktune.train import resume_run, train

    progress = Progress(store, job_id, paths["run"])
    progress.start()
    try:
        task = job_task(job["suffix"] or "ft", paths["train"], paths["validation"] if job["validation_file"] else None)
        if (paths["run"] / "run.json").is_file():
            pass  # trained before the server was killed; only the report below is left
        elif (paths["run"] / "config.yaml").is_file():
            step = resume_point(paths["run"])
            store.add_event(job_id, f"Resuming from the checkpoint of step {step}" if step else
                            "Restarting from the first step: no checkpoint was saved", data={"step": step})  # fmt: skip
            resume_run(paths["run"])
        else:
            cfg = train_settings(job["hyperparameters"], model=job["base"], seed=job["seed"], save_every=save_every)
            # train() checks the data again (cheap next to training), but its DataError speaks to a command-line
            # user (--force, file paths); this one names the upload's id and line
            check_data(task, cfg, paths, job)
            shutil.rmtree(paths["run"], ignore_errors=True)  # a start killed before its config was written
            train(task, cfg, paths["run"])
    except TrainingStopped:
        progress.stop()
        return 0  # cancelled, or the server is stopping: the scheduler knows which
    except JobError as e:
        progress.stop()
        return _fail(store, job, e.to_dict() | {"message": hide_paths(e.message, store, job, paths)})
    except Exception as e:
        progress.stop()
        traceback.print_exc()
        code = {DataError: "invalid_training_file", ModelError: "invalid_model"}.get(type(e), "training_failed")
        text = e.message if isinstance(e, TaskTuneError) else f"{type(e).__name__}: {e}"
        param = {"invalid_training_file": "training_file", "invalid_model": "model"}.get(code)
        return _fail(store, job, {"code": code, "message": hide_paths(text, store, job, paths), "param": param})
    progress.stop()
    trained = max((r.get("train/tokens", 0) for r in progress.records.values()), default=0)
    result_file = write_results(store, job, paths["run"])
    store.update_job(job_id, only_if=("running",), trained=1, trained_tokens=trained, result_files=[result_file])
    store.add_event(job_id, f"Training finished: {progress.last_step} steps, {trained:,} tokens")
    return 0


def _fail(store: Store, job: dict, error: dict) -> int:
    if store.update_job(job["id"], only_if=("running",), status="failed", error=error, finished_at=int(time.time())):
        store.add_event(job["id"], f"Job failed: {error['message']}", level="error")
    return 0


def watch_parent() -> None:
    """End this process as soon as its server is gone (SIGKILLed): it must never train beside a restarted one."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="tasktune-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasktune.jobs.worker")
    parser.add_argument("state")
    parser.add_argument("job_id")
    parser.add_argument("--save-every", type=int, required=True)
    args = parser.parse_args(argv)
    watch_parent()
    store = Store(args.state)
    with open(store.state / "worker.lock", "a") as lock:
        # Wait for the lock: an orphaned training process of a killed server ends itself within POLL_S.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return run_job(store, args.job_id, args.save_every)


if __name__ == "__main__":
    from tasktune.runtime import quiet_libraries

    quiet_libraries()
    sys.exit(main())
