"""The server's job thread: validates new jobs' files, runs one job at a time in a worker process, and hands each
finished model to the engine before the job reads as `succeeded` (so a client that sees `succeeded` can call it).

Order of work after a restart: a job that was `running` resumes first (from its newest checkpoint), then the `queued`
ones, oldest first. Files are validated (converted line by line) while another job trains, so a broken upload fails
its job at once instead of after the queue ahead of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tasktune.jobs.convert import JobError, convert_upload
from tasktune.jobs.store import Store, now
from tasktune.jobs.worker import job_paths

WAIT_S = 0.5  # how often the thread looks for work and at the training process


def fine_tuned_name(job: dict) -> str:
    """OpenAI's naming: `ft:BASE:SUFFIX:ID` (the suffix may be empty)."""
    return f"ft:{job['model']}:{job['suffix'] or ''}:{job['id'].removeprefix('ftjob-')[:8]}"


class Scheduler:
    """Runs jobs one at a time; `add_model(job, run_folder)` makes a finished job's model servable."""

    def __init__(self, store: Store, *, save_every: int, add_model: Callable[[dict, Path], None]):
        self.store = store
        self.save_every = save_every
        self.add_model = add_model
        self._cond = threading.Condition()
        self._stopping = False
        self._proc: subprocess.Popen | None = None
        self._job_id: str | None = None
        self._thread = threading.Thread(target=self._loop, name="tasktune-jobs", daemon=True)

    # --- the server's side ----------------------------------------------------------------------------------------
    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def cancel(self, job_id: str) -> None:
        """Stop the job's training process if it runs (its loop ends after the current step)."""
        with self._cond:
            if self._job_id == job_id and self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
            self._cond.notify_all()

    def stop(self, timeout: float = 60) -> None:
        """Stop the thread; a training job is stopped with a checkpoint and stays `running` (it resumes next start)."""
        with self._cond:
            self._stopping = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    def load_finished(self) -> None:
        """Make every succeeded job's model servable again (at server start)."""
        for job in self.store.jobs_with("succeeded"):
            try:
                self.add_model(job, job_paths(self.store, job["id"])["run"])
            except Exception as e:  # one unloadable model must not keep the server from starting
                print(f"tasktune: cannot load {job['fine_tuned_model']} (job {job['id']}): {e}", flush=True)

    # --- the thread -----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping:
            try:
                self._validate_new()
                job = self._next()
                if job is None:
                    with self._cond:
                        self._cond.wait(WAIT_S)
                    continue
                self._run(job)
            except Exception as e:  # the thread must outlive any one job's trouble
                print(f"tasktune: job scheduler: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                time.sleep(WAIT_S)

    def _next(self) -> dict | None:
        for status in ("running", "queued"):
            jobs = self.store.jobs_with(status)
            if jobs:
                return jobs[0]
        return None

    def _validate_new(self) -> None:
        for job in self.store.jobs_with("validating_files"):
            paths = job_paths(self.store, job["id"])
            try:
                for param, key in (("training_file", "train"), ("validation_file", "validation")):
                    if job[param] is None:
                        continue
                    src = self.store.file_path(job[param])
                    if not src.is_file():
                        raise JobError(f"invalid_{param}", f"{param} {job[param]} was deleted before it was read",
                                       param)  # fmt: skip
                    convert_upload(src, paths[key], file_id=job[param], param=param)
            except JobError as e:
                if self.store.update_job(job["id"], only_if=("validating_files",), status="failed",
                                         error=e.to_dict(), finished_at=now()):  # fmt: skip
                    self.store.add_event(job["id"], f"Job failed: {e.message}", level="error")
                continue
            if self.store.update_job(job["id"], only_if=("validating_files",), status="queued"):
                self.store.add_event(job["id"], "Files validated, moving job to queued state")

    def _run(self, job: dict) -> None:
        if job["trained"]:  # trained before a restart, not yet served
            self._finish(job)
            return
        if job["status"] == "queued":
            if not self.store.update_job(job["id"], only_if=("queued",), status="running"):
                return  # cancelled in between
            self.store.add_event(job["id"], "Fine-tuning job started")
        else:
            self.store.add_event(job["id"], "The server restarted: the job resumes from its newest checkpoint")
        code = self._train(job)
        job = self.store.job(job["id"], None)
        if job["status"] != "running":
            return  # cancelled, or failed with its own error
        if job["trained"]:
            self._finish(job)
        elif not self._stopping:
            error = {
                "code": "server_error",
                "param": None,
                "message": f"the training process ended unexpectedly (exit code {code}); see the server's log",
            }
            if self.store.update_job(job["id"], only_if=("running",), status="failed", error=error,
                                     finished_at=now()):  # fmt: skip
                self.store.add_event(job["id"], f"Job failed: {error['message']}", level="error")

    def _train(self, job: dict) -> int:
        paths = job_paths(self.store, job["id"])
        cmd = [sys.executable, "-m", "tasktune.jobs.worker", str(self.store.state), job["id"],
               "--save-every", str(self.save_every)]  # fmt: skip
        env = os.environ | {"TASKTUNE_NO_PROGRESS": "1"}
        with open(paths["log"], "a", encoding="utf-8") as log, self._cond:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            self._job_id = job["id"]
        try:
            while self._proc.poll() is None:
                with self._cond:
                    self._cond.wait(WAIT_S)
                self._validate_new()
            return self._proc.returncode
        finally:
            with self._cond:
                self._job_id = None

    def _finish(self, job: dict) -> None:
        name = fine_tuned_name(job)
        try:
            self.add_model(job | {"fine_tuned_model": name}, job_paths(self.store, job["id"])["run"])
        except Exception as e:
            # the details (with server paths) go to the log, not to the client
            print(f"tasktune: job {job['id']}: cannot load its model: {type(e).__name__}: {e}", file=sys.stderr)
            error = {"code": "server_error", "param": None, "message": f"the model trained but could not be loaded"
                     f" ({type(e).__name__}); see the server's log"}  # fmt: skip
            if self.store.update_job(job["id"], only_if=("running",), status="failed", error=error, finished_at=now()):
                self.store.add_event(job["id"], f"Job failed: {error['message']}", level="error")
            return
        if self.store.update_job(job["id"], only_if=("running",), status="succeeded", fine_tuned_model=name,
                                 finished_at=now()):  # fmt: skip
            self.store.add_event(job["id"], f"New fine-tuned model created: {name}")
            self.store.add_event(job["id"], "The job has successfully completed")
