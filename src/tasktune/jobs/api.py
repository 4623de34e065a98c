"""OpenAI's files and fine-tuning routes, added to the serving app by `tasktune serve --fine-tuning`.

Request and response shapes are OpenAI's (the official client's types: FileObject, FineTuningJob,
FineTuningJobEvent, FineTuningJobCheckpoint, cursor pages with `has_more`). Every object belongs to the tenant whose
key created it; another tenant's id is answered like an unknown one (404), so ids cannot be probed.
"""

from __future__ import annotations

import codecs
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tasktune.errors import ModelError
from tasktune.http_errors import ServeError
from tasktune.jobs.scheduler import Scheduler, fine_tuned_name
from tasktune.jobs.store import ACTIVE, Store, new_id, now

# --- the service ---------------------------------------------------------------------------------------------------


@dataclass
class FineTuning:
    """What the routes share: the database, the job thread, the base models jobs may name, who owns which model."""

    store: Store
    scheduler: Scheduler
    bases: dict[str, str]  # a job's `model` → the base model tasktune trains (built-in name or local folder)
    max_upload_bytes: int
    owners: dict[str, str] = field(default_factory=dict)  # fine-tuned model name → tenant

    def visible(self, model: str, tenant: str) -> bool:
        """Fine-tuned models are their tenant's alone; every other served model is everyone's."""
        return self.owners.get(model, tenant) == tenant


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> ServeError:
    return ServeError(status, message, param=param, code=code)


def open_fine_tuning(config, engine, served: dict) -> FineTuning:
    """The fine-tuning service of a server: its state folder, its job thread (started), every succeeded job's model
    loaded again. `config` is the ServeConfig; `served` the engine's models, which finished jobs join."""
    from tasktune.engine import add_runs
    from tasktune.models import BUILTIN_MODELS, resolve_model

    bases = {name: name for name in BUILTIN_MODELS}
    bases |= {s.name: s.base_path for s in served.values() if s.kind == "base" and s.base_path}
    for name, spec in config.base_models.items():
        try:
            bases[name] = str(resolve_model(spec).path)  # a wrong path fails now, not in a job
        except ModelError as e:
            raise ModelError(f"--base-model {name}={spec}: {e.message}", e.hint) from None
    from tasktune.fsio import ensure_writable_dir

    store = Store(ensure_writable_dir(config.state, what="--state folder"))

    def add_model(job: dict, run: Path) -> None:
        name = job["fine_tuned_model"]
        ft.owners[name] = job["tenant"]  # owned before it is served: no other tenant ever sees it
        engine.run_on_thread(lambda: add_runs(served, {name: run}, config.precision)).result()

    scheduler = Scheduler(store, save_every=config.job_save_every, add_model=add_model)
    ft = FineTuning(store, scheduler, bases, int(config.max_upload_mb * 1024 * 1024))
    scheduler.load_finished()
    scheduler.start()
    return ft


# --- request bodies ------------------------------------------------------------------------------------------------
Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] | None = None
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] | None = None
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] | None = None

    def resolved(self) -> dict:
        return {k: "auto" if v is None else v for k, v in self.model_dump().items()}


class Supervised(BaseModel):
    model_config = ConfigDict(extra="ignore")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    supervised: Supervised | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients may send fields a newer API added

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[dict] | None = None


SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# --- OpenAI's objects ----------------------------------------------------------------------------------------------
def file_object(row: dict) -> dict:
    return {"object": "file", "id": row["id"], "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "expires_at": None,
            "status_details": None}  # fmt: skip


def job_object(row: dict) -> dict:
    hp = row["hyperparameters"]
    return {
        "object": "fine_tuning.job",
        "id": row["id"],
        "created_at": row["created_at"],
        "error": row["error"],
        "fine_tuned_model": row["fine_tuned_model"],
        "finished_at": row["finished_at"],
        "hyperparameters": hp,
        "model": row["model"],
        "organization_id": row["tenant"],
        "result_files": row["result_files"],
        "seed": row["seed"],
        "status": row["status"],
        "trained_tokens": row["trained_tokens"],
        "training_file": row["training_file"],
        "validation_file": row["validation_file"],
        "estimated_finish": None,
        "integrations": [],
        "metadata": row["metadata"],
        "user_provided_suffix": row["suffix"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
    }


def event_object(row: dict) -> dict:
    return {"object": "fine_tuning.job.event", "id": row["id"], "created_at": row["created_at"],
            "level": row["level"], "message": row["message"], "data": row["data"], "type": row["type"]}  # fmt: skip


def checkpoint_object(row: dict, job: dict) -> dict:
    return {"object": "fine_tuning.job.checkpoint", "id": row["id"], "created_at": row["created_at"],
            "fine_tuned_model_checkpoint": f"{fine_tuned_name(job)}:ckpt-step-{row['step']}",
            "fine_tuning_job_id": job["id"], "metrics": row["metrics"], "step_number": row["step"]}  # fmt: skip


def page(rows: list[dict], has_more: bool, shape) -> dict:
    data = [shape(r) for r in rows]
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}  # fmt: skip


# --- routes --------------------------------------------------------------------------------------------------------
def add_routes(app: FastAPI, ft: FineTuning, auth) -> None:
    """The files and fine-tuning routes; `auth` is the app's dependency that returns the request's tenant."""
    store = ft.store

    def own_file(file_id: str, tenant: str, param: str = "file_id", status: int = 404) -> dict:
        row = store.file(file_id, tenant) if file_id.startswith("file-") and file_id[5:].isalnum() else None
        if row is None:
            raise _error(status, f"{param}: no such file: {file_id}", param, "file_not_found")
        return row

    def own_job(job_id: str, tenant: str) -> dict:
        row = store.job(job_id, tenant) if job_id.startswith("ftjob-") and job_id[6:].isalnum() else None
        if row is None:
            raise _error(404, f"no such fine-tuning job: {job_id}", "fine_tuning_job_id", "job_not_found")
        return row

    @app.post("/v1/files")
    async def upload(request: Request, tenant: str = Depends(auth)):
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            raise _error(411, "send the upload with a Content-Length header (chunked uploads are not taken)")
        if int(length) > ft.max_upload_bytes + 64 * 1024:  # refused before reading; the multipart framing adds a little
            raise _too_large(ft.max_upload_bytes)
        # as a context: the parser's spooled temporary file is removed when the block ends
        async with request.form(max_files=1, max_fields=8) as form:
            purpose, upload = form.get("purpose"), form.get("file")
            if purpose != "fine-tune":
                raise _error(400, f"purpose: {purpose!r} is not taken here; this server takes purpose 'fine-tune'",
                             "purpose")  # fmt: skip
            if upload is None or isinstance(upload, str):
                raise _error(400, "file: send the file as the multipart field 'file'", "file")
            filename = PurePosixPath(str(upload.filename or "").replace("\\", "/")).name[:255] or "upload.jsonl"
            if not filename.lower().endswith(".jsonl"):
                raise _error(400, f"file: {filename!r} is not a .jsonl file; fine-tuning files are JSONL (one JSON"
                             " object per line), named *.jsonl", "file")  # fmt: skip
            file_id = new_id("file")
            # in a worker thread: copying and fsyncing a large file must not stall the requests being served
            await run_in_threadpool(_save_upload, upload.file, store.file_path(file_id), ft.max_upload_bytes)
            row = store.add_file(file_id, tenant, filename, "fine-tune", store.file_path(file_id).stat().st_size)
        return file_object(row)

    @app.get("/v1/files")
    async def list_files(tenant: str = Depends(auth), after: str | None = None, limit: int = 10000,
                         order: Literal["asc", "desc"] = "desc", purpose: str | None = None):  # fmt: skip
        where = {"tenant": tenant} | ({"purpose": purpose} if purpose else {})
        rows, more = store.page("files", where, after, _limit(limit, 10000), order == "desc")
        return page(rows, more, file_object)

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, tenant: str = Depends(auth)):
        return file_object(own_file(file_id, tenant))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, tenant: str = Depends(auth)):
        row = own_file(file_id, tenant)
        kind = "text/csv" if row["filename"].endswith(".csv") else "application/jsonl"
        return FileResponse(store.file_path(row["id"]), media_type=kind)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, tenant: str = Depends(auth)):
        row = own_file(file_id, tenant)
        if job := store.file_in_use(row["id"]):
            raise _error(409, f"{file_id} is being validated for job {job}; delete it once the job is queued")
        store.delete_file(row["id"])
        store.file_path(row["id"]).unlink(missing_ok=True)
        return {"id": row["id"], "object": "file", "deleted": True}

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(body: JobCreate, tenant: str = Depends(auth)):
        hp = _hyperparameters(body)
        if body.model not in ft.bases:
            raise _error(400, f"model: {body.model!r} cannot be fine-tuned here; base models: "
                         f"{', '.join(ft.bases) or 'none'} (the server's --base-model NAME=MODEL)", "model",
                         "model_not_available")  # fmt: skip
        for param in ("training_file", "validation_file"):
            file_id = getattr(body, param)
            # OpenAI answers an unknown file in a job's body with 400 (the body is wrong), not 404
            if file_id is not None and own_file(file_id, tenant, param, 400)["purpose"] != "fine-tune":
                raise _error(400, f"{param}: {file_id} is not a file of purpose 'fine-tune'", param)
        if body.suffix is not None and not SUFFIX.match(body.suffix):
            raise _error(400, "suffix: use up to 64 letters, digits, '-' or '_'", "suffix")
        _check_metadata(body.metadata)
        if body.integrations:
            raise _error(400, "integrations: not supported here (metrics are in the job's events and result file)",
                         "integrations")  # fmt: skip
        job_id = new_id("ftjob")
        row = dict(id=job_id, tenant=tenant, model=body.model, base=ft.bases[body.model],
                   training_file=body.training_file, validation_file=body.validation_file, suffix=body.suffix,
                   seed=body.seed if body.seed is not None else secrets.randbelow(2**31), metadata=body.metadata,
                   hyperparameters=hp, status="validating_files", created_at=now())  # fmt: skip
        job = store.add_job(row)
        store.add_event(job_id, f"Created fine-tuning job: {job_id}")
        store.add_event(job_id, f"Validating training file: {body.training_file}")
        ft.scheduler.wake()
        return job_object(job)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(tenant: str = Depends(auth), after: str | None = None, limit: int = 20):
        rows, more = store.page("jobs", {"tenant": tenant}, after, _limit(limit, 100), newest_first=True)
        return page(rows, more, job_object)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str, tenant: str = Depends(auth)):
        return job_object(own_job(job_id, tenant))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, tenant: str = Depends(auth)):
        job = own_job(job_id, tenant)
        if not store.update_job(job["id"], only_if=ACTIVE, status="cancelled", finished_at=now()):
            status = store.job(job_id, tenant)["status"]
            raise _error(400, f"job {job_id} has already {status}; only a job that is validating_files, queued or"
                         " running can be cancelled", code="job_not_cancellable")  # fmt: skip
        store.add_event(job["id"], "Job cancelled")
        ft.scheduler.cancel(job["id"])
        return job_object(store.job(job["id"], tenant))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def list_events(job_id: str, tenant: str = Depends(auth), after: str | None = None, limit: int = 20):
        job = own_job(job_id, tenant)
        rows, more = store.page("events", {"job_id": job["id"]}, after, _limit(limit, 1000), newest_first=True)
        return page(rows, more, event_object)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def list_checkpoints(job_id: str, tenant: str = Depends(auth), after: str | None = None, limit: int = 10):
        job = own_job(job_id, tenant)
        rows, more = store.page("checkpoints", {"job_id": job["id"]}, after, _limit(limit, 100), newest_first=True)
        return page(rows, more, lambda r: checkpoint_object(r, job))


def _limit(limit: int, most: int) -> int:
    if not 1 <= limit <= most:
        raise _error(400, f"limit: between 1 and {most}", "limit")
    return limit


def _too_large(cap: int):
    return _error(413, f"file: larger than this server's upload limit of {cap:,} bytes; split the file, or start the"
                  " server with a higher --max-upload-mb", "file", "file_too_large")  # fmt: skip


def _hyperparameters(body: JobCreate) -> dict:
    """The job's hyper-parameters from `hyperparameters` or `method.supervised.hyperparameters` (not both)."""
    hp = body.hyperparameters
    if body.method is not None:
        if body.method.type != "supervised":
            raise _error(400, f"method.type: {body.method.type!r} is not supported; tasktune runs 'supervised' jobs",
                         "method.type")  # fmt: skip
        inner = body.method.supervised.hyperparameters if body.method.supervised else None
        if inner is not None and hp is not None and inner != hp:
            raise _error(400, "hyperparameters and method.supervised.hyperparameters disagree; send one of them",
                         "hyperparameters")  # fmt: skip
        hp = inner or hp
    return (hp or Hyperparameters()).resolved()


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise _error(400, "metadata: up to 16 keys of up to 64 characters, values up to 512", "metadata")


def _save_upload(upload, target: Path, cap: int) -> None:
    """Copy the upload to `target` through a temporary file beside it (renamed only when complete and valid): at
    most `cap` bytes (413 beyond), UTF-8 text without NUL bytes (400 otherwise)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=target.parent)
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := upload.read(1 << 20):
                size += len(chunk)
                if size > cap:
                    raise _too_large(cap)
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    raise _error(400, f"file: not UTF-8 text (byte {size - len(chunk) + e.start + 1}); fine-tuning"
                                 " files are UTF-8 JSONL", "file") from None  # fmt: skip
                if "\x00" in text:
                    raise _error(400, "file: holds NUL bytes, so it is not a JSONL text file", "file")
                out.write(chunk)
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise _error(400, "file: ends inside a UTF-8 character; fine-tuning files are UTF-8 JSONL",
                             "file") from None  # fmt: skip
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
