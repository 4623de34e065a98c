"""tasktune serve: tuned runs behind an OpenAI-compatible HTTP API.

tasktune serve RUN [RUN ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY | --api-keys FILE] [--alias NAME=RUN]
               [--fine-tuning [--state DIR] [--base-model NAME=MODEL]]

Routes: GET /v1/models, POST /v1/chat/completions (`stream: true` sends server-sent events), POST /v1/completions,
GET /health. A request's `model` names a run (its folder name or an alias) or the base model of the LoRA runs. A run
is prompted the way it was trained: the bare input as the user turn, with the task's instruction only when the run
was trained with it, so clients send the input alone. On /v1/completions a run's `prompt` is that bare input; the
base model continues the raw text.

Errors have OpenAI's JSON shape: 400 bad body, 401 missing or wrong key, 404 unknown model, 413 prompt plus
max_tokens beyond the model's context, 503 queue full (with Retry-After). Generation runs in one thread (engine.py).

With --fine-tuning, OpenAI's files and fine-tuning routes are added (tasktune.jobs); with --api-keys, each key's
tenant sees only its own files, jobs and fine-tuned models.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasktune.engine import Engine, GenRequest, GenResult, QueueFull, Served
from tasktune.errors import ConfigError, TaskTuneError
from tasktune.http_errors import ServeError, error_body

log = logging.getLogger("tasktune.serve")


class ServeConfig(BaseModel):
    """Settings of `tasktune serve` (each is a flag: `max_queue` ↔ `--max-queue`)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind; anything but loopback is reachable from outside")
    port: int = Field(8000, ge=0, le=65535, description="port to bind (0: any free port, printed at start)")
    api_key: str | None = Field(None, description="require `Authorization: Bearer KEY` on every route but /health")
    api_keys: str | None = Field(
        None,
        description="file of `TENANT KEY` lines: each key is accepted, and each tenant sees only its own files, jobs"
        " and fine-tuned models (instead of --api-key)",
    )
    aliases: dict[str, str] = Field({}, description="extra model names: NAME → run folder")
    max_queue: int = Field(256, ge=1, description="requests that may wait; more get 503 (higher: more memory)")
    max_batch_size: int = Field(16, ge=1, description="requests generated together (higher: throughput, latency)")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="inference precision")
    fine_tuning: bool = Field(False, description="take OpenAI's files and fine-tuning jobs API (/v1/files, ...)")
    state: str = Field(".tasktune-state", description="folder of the fine-tuning database, uploads and job runs")
    base_models: dict[str, str] = Field(
        {}, description="base models jobs may name: NAME → built-in name or local folder (built-in names always)"
    )
    max_upload_mb: float = Field(512, gt=0, description="largest file upload in MiB; larger ones get 413")
    job_save_every: int = Field(
        50, ge=1, description="steps between a job's checkpoints: a killed server resumes the job from the newest"
    )


# --- request bodies (unknown fields are ignored, as OpenAI clients send many; fields we cannot honour are refused) ---
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # what torch.Generator accepts
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one answer per request")
    logprobs: bool | int | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ServeError(400, "stop: up to 4 non-empty strings", param="stop")
        return stops


class JsonSchemaFormat(_Body):
    name: str = "response"
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False


# --- the app -------------------------------------------------------------------------------------------------------
def create_app(engine: Engine, served: dict[str, Served], config: ServeConfig, *, fine_tuning=None,
               keys: dict[str, str] | None = None):  # fmt: skip
    """The app; `fine_tuning` (a jobs.api.FineTuning) adds OpenAI's files and jobs routes, `keys` (KEY → tenant)
    replaces the single --api-key."""
    from fastapi import Depends, FastAPI, Header
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    from tasktune.jobs.tenants import tenant_of

    created = int(time.time())
    app = FastAPI(title="tasktune", docs_url=None, redoc_url=None)

    def fail(status: int, message: str, type_: str, code=None, param=None, headers=None) -> JSONResponse:
        return JSONResponse(error_body(status, message, type_, code, param), status_code=status, headers=headers)

    @app.exception_handler(ServeError)
    async def _serve_error(request, e: ServeError):
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return fail(e.status, e.message, e.type, e.code, e.param, headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request, e: RequestValidationError):
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "json_invalid":
            return fail(400, "the request body is not valid JSON", "invalid_request_error")
        if not loc:  # the body as a whole: not an object, or not sent as JSON
            message = "the request body must be a JSON object, sent with Content-Type: application/json"
            return fail(400, message, "invalid_request_error")
        message = f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))
        return fail(400, message, "invalid_request_error", param=loc or None)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        kind = "authentication_error" if e.status_code == 401 else "invalid_request_error"
        return fail(e.status_code, str(e.detail), kind)

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        log.exception("request failed")
        return fail(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    # (annotations are strings under `from __future__ import annotations`, and FastAPI resolves them in this module's
    # globals: parameters here use only builtin types, with Header() as the default)
    async def check_key(authorization: str | None = Header(None)) -> str:
        """The request's tenant."""
        tenant = tenant_of(authorization, config.api_key, keys)
        if tenant is None:
            raise HTTPException(401, "missing or wrong API key: send `Authorization: Bearer KEY`")
        return tenant

    def visible(tenant: str) -> list[Served]:
        models = list(served.values())  # a copy: a finished job's model may be added meanwhile
        return [s for s in models if fine_tuning is None or fine_tuning.visible(s.name, tenant)]

    def lookup(name: str, tenant: str) -> Served:
        s = served.get(name)
        if s is None or (fine_tuning is not None and not fine_tuning.visible(name, tenant)):
            names = ", ".join(m.name for m in visible(tenant))
            raise ServeError(404, f"model {name!r} is not served here; models: {names}", code="model_not_found",
                             param="model")  # fmt: skip
        return s

    def plan(s: Served, prompt_ids: list[int], body: _Sampling, max_tokens: int | None, strip: bool) -> GenRequest:
        if body.logprobs:
            raise ServeError(400, "logprobs are not supported", param="logprobs")
        if not prompt_ids:
            raise ServeError(400, "the prompt is empty", param="prompt")
        room = s.context - len(prompt_ids)
        if max_tokens is None:
            max_tokens = min(s.max_new_tokens, room)
        if room < 1 or len(prompt_ids) + max_tokens > s.context:
            raise ServeError(
                413,
                f"the prompt has {len(prompt_ids)} tokens and max_tokens is {max_tokens}: together more than the"
                f" {s.context} tokens of {s.name}'s context; shorten the input or lower max_tokens",
                code="context_length_exceeded",
                param="messages" if isinstance(body, ChatRequest) else "prompt",
            )
        return GenRequest(
            served=s,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            temperature=body.temperature or 0.0,
            top_p=body.top_p if body.top_p is not None else 1.0,
            stop=body.stops(),
            seed=body.seed,
            strip=strip,
        )

    def constraint_for(s: Served, fmt: ResponseFormat | None):
        """OpenAI's response_format: json_schema decodes under the client's schema, json_object under any JSON
        object, text freely; without one, a JSON run's requests are decoded under the run's own schema and a label
        run's as one of its labels."""
        if fmt is None:
            if s.labels:
                return s.constraint(None, labels=s.labels)
            return None if s.schema is None else s.constraint(s.schema, s.copy_fields)
        if fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return s.constraint({"type": "object"}, where="response_format")
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise ServeError(400, "response_format: json_schema needs json_schema.schema (a JSON Schema object)",
                             param="response_format")  # fmt: skip
        try:
            return s.constraint(fmt.json_schema.schema_, where="response_format.json_schema.schema")
        except ConfigError as e:
            raise ServeError(400, e.message, param="response_format") from None

    def submit(req: GenRequest) -> None:
        try:
            engine.submit(req)
        except QueueFull as e:
            raise ServeError(503, f"server busy: {e}; retry shortly", "server_error", code="queue_full") from None

    async def result_of(req: GenRequest) -> GenResult:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(r):
            if fut.done():
                return
            if isinstance(r, BaseException):
                fut.set_exception(r)
            else:
                fut.set_result(r)

        req.on_done = lambda r: loop.call_soon_threadsafe(done, r)
        submit(req)
        try:
            return await fut
        finally:
            req.cancelled = True  # no effect once done; stops the row if the client went away

    def usage(results: list[GenResult]) -> dict:
        p, c = sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def streamed(req: GenRequest, chunk, include_usage: bool):
        """Queue the request now (so a full queue is a 503 status, not an error inside the stream), then relay."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req.on_delta = lambda text: loop.call_soon_threadsafe(events.put_nowait, text)
        req.on_done = lambda r: loop.call_soon_threadsafe(events.put_nowait, r)
        submit(req)

        async def relay():
            try:
                yield sse(chunk(role=True))
                while True:
                    item = await events.get()
                    if isinstance(item, str):
                        yield sse(chunk(text=item))
                        continue
                    if isinstance(item, BaseException):
                        log.error("generation failed: %s", item)
                        yield sse(error_body(500, f"internal error: {item}", "server_error"))
                    else:
                        yield sse(chunk(finish=item.finish_reason))
                        if include_usage:
                            yield sse(chunk(usage=usage([item])))
                    yield "data: [DONE]\n\n"
                    return
            finally:
                req.cancelled = True

        return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():  # no key needed: it names only the models every tenant sees
        public = [s.name for s in list(served.values()) if fine_tuning is None or s.name not in fine_tuning.owners]
        return {"status": "ok", "models": public, "waiting": engine.waiting, "batches": engine.batches}

    @app.get("/v1/models")
    async def models(tenant: str = Depends(check_key)):
        data = []
        for s in visible(tenant):  # no run folder: a client must not learn the server's paths
            owner = fine_tuning.owners.get(s.name, "tasktune") if fine_tuning else "tasktune"
            data.append({"id": s.name, "object": "model", "created": created, "owned_by": owner,
                         "root": s.base or s.name, "parent": s.base, "method": s.kind})  # fmt: skip
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, tenant: str = Depends(check_key)):
        s = lookup(body.model, tenant)
        messages = s.fmt.with_instruction([m.as_dict() for m in body.messages], s.instruction)
        try:
            prompt_ids = s.fmt.encode_prompt(messages)
        except Exception as e:  # the model's chat template rejects this conversation (jinja raises)
            raise ServeError(400, f"messages: the model's chat template rejects them: {e}", param="messages") from None
        req = plan(s, prompt_ids, body, body.max_completion_tokens or body.max_tokens, strip=True)
        req.constraint = constraint_for(s, body.response_format)
        req.input_text = next((m.as_dict()["content"] for m in reversed(body.messages) if m.role == "user"), "")
        rid, t = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:

            def chunk(role=False, text=None, finish=None, usage=None):
                delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
                choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
                out = {"id": rid, "object": "chat.completion.chunk", "created": t, "model": s.name, "choices": choices}
                return out | ({"usage": usage} if usage else {})

            return streamed(req, chunk, bool(body.stream_options and body.stream_options.include_usage))
        r = await result_of(req)
        choice = {"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": r.finish_reason}
        return {"id": rid, "object": "chat.completion", "created": t, "model": s.name, "choices": [choice],
                "usage": usage([r])}  # fmt: skip

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, tenant: str = Depends(check_key)):
        s = lookup(body.model, tenant)
        if body.echo:
            raise ServeError(400, "echo is not supported", param="echo")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > engine.max_queue:
            raise ServeError(400, f"prompt: 1 to {engine.max_queue} prompts", param="prompt")
        if body.stream and len(prompts) != 1:
            raise ServeError(400, "stream: one prompt per streamed request", param="stream")
        reqs = []
        for p in prompts:
            if s.kind == "base":  # the base model continues the text as it is
                ids = s.fmt.tok.encode(p, add_special_tokens=False)
            else:  # a tuned run knows one prompt format: the bare input as the user turn
                ids = s.fmt.encode_prompt(s.fmt.with_instruction([{"role": "user", "content": p}], s.instruction))
            req = plan(s, ids, body, body.max_tokens, strip=s.kind != "base")
            if s.kind != "base":  # the run's answer to a bare input, as `tasktune predict` gives it: under its schema
                req.constraint, req.input_text = constraint_for(s, None), p
            reqs.append(req)
        rid, t = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:

            def chunk(role=False, text=None, finish=None, usage=None):
                if role:
                    text = ""
                choices = [] if usage else [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
                out = {"id": rid, "object": "text_completion", "created": t, "model": s.name, "choices": choices}
                return out | ({"usage": usage} if usage else {})

            return streamed(reqs[0], chunk, bool(body.stream_options and body.stream_options.include_usage))
        results = await asyncio.gather(*(result_of(r) for r in reqs))
        choices = [{"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                   for i, r in enumerate(results)]  # fmt: skip
        return {"id": rid, "object": "text_completion", "created": t, "model": s.name, "choices": choices,
                "usage": usage(list(results))}  # fmt: skip

    if fine_tuning is not None:
        from tasktune.jobs.api import add_routes

        add_routes(app, fine_tuning, check_key)
    return app


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# --- entry point ---------------------------------------------------------------------------------------------------
def run_names(runs: list[str], aliases: dict[str, str]) -> dict[str, Path]:
    """Model name → run folder: each run by its folder name, plus the aliases (whose runs need not be listed)."""
    names: dict[str, Path] = {}
    for r in runs:
        path = Path(r)
        if not (path / "run.json").is_file():
            raise TaskTuneError(f"{r} is not a tasktune run (no run.json)", "pass run folders written by train")
        name = path.resolve().name
        if name in names and names[name].resolve() != path.resolve():
            raise TaskTuneError(
                f"two runs are both named {name!r} ({names[name]} and {path})", "give one a name with --alias NAME=RUN"
            )
        names[name] = path
    for alias, target in aliases.items():
        path = names.get(target, Path(target))
        if not (path / "run.json").is_file():
            raise TaskTuneError(f"--alias {alias}={target}: {target} is not a tasktune run", "point it at a run")
        if alias in names and names[alias].resolve() != path.resolve():
            raise TaskTuneError(f"--alias {alias}: that name is already a run's", "choose another alias")
        names[alias] = path
    return names


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before loading models, so a taken port fails in a second, not after a minute of loading."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise TaskTuneError(f"cannot listen on {host}:{port}: {e.strerror}", "choose another --port or --host") from e
    sock.listen(2048)
    return sock


def serve(runs: list[str], config: ServeConfig) -> None:
    """Load the runs, start the generation thread (and with --fine-tuning the job thread) and answer HTTP until
    interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise TaskTuneError("serving needs FastAPI and uvicorn", "pip install 'tasktune[serve]'") from None
    from tasktune.engine import load_served

    if not runs and not config.aliases and not config.fine_tuning:
        raise TaskTuneError("serve needs at least one RUN folder", "pass the --out folder of `tasktune train`")
    keys = check_fine_tuning_settings(config)
    names = run_names(runs, config.aliases)
    sock = bind_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None and keys is None:
        print(f"tasktune: warning: listening on {config.host} without --api-key: anyone who reaches it can use it")
    served = load_served(names, config.precision, progress=lambda m: print(f"tasktune: {m}", flush=True))
    engine = Engine(max_queue=config.max_queue, max_batch_size=config.max_batch_size).start()
    fine_tuning = None
    if config.fine_tuning:
        from tasktune.jobs.api import open_fine_tuning

        fine_tuning = open_fine_tuning(config, engine, served)
        print(f"tasktune: fine-tuning jobs on; base models: {', '.join(fine_tuning.bases)}", flush=True)
    app = create_app(engine, served, config, fine_tuning=fine_tuning, keys=keys)
    url_host = f"[{host}]" if ":" in host else host
    public = [name for name in served if fine_tuning is None or name not in fine_tuning.owners]
    print(f"tasktune: serving {', '.join(public) or 'no model yet'} on http://{url_host}:{port}/v1", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=os.environ.get("TASKTUNE_LOG_LEVEL", "warning"))).run(
            sockets=[sock]
        )
    finally:
        if fine_tuning is not None:
            fine_tuning.scheduler.stop()
        engine.stop()


def check_fine_tuning_settings(config: ServeConfig) -> dict[str, str] | None:
    """Refuse settings that contradict each other; return the --api-keys file's KEY → tenant (None without it)."""
    from tasktune.jobs.tenants import read_api_keys

    if config.api_keys and config.api_key:
        raise ConfigError("--api-key and --api-keys both given", "use --api-keys alone (one `TENANT KEY` line each)")
    if not config.fine_tuning:
        given = [f for f, default in (("--state", ".tasktune-state"),) if getattr(config, f[2:]) != default]
        if config.base_models:
            given.append("--base-model")
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --fine-tuning", "add --fine-tuning, or drop them")
    for name in config.base_models:
        if not name or ":" in name or "/" in name:
            raise ConfigError(f"--base-model {name!r}: a name without ':' or '/'", "e.g. --base-model smol=DIR")
    return read_api_keys(config.api_keys) if config.api_keys else None
