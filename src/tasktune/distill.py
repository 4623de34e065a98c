"""tasktune distill: label raw inputs with a teacher that is given the task's instruction (context distillation).

    tasktune distill --task TASK.yaml --inputs raw.jsonl --teacher MODEL_OR_RUN --out DATA
    tasktune distill --task TASK.yaml --inputs raw.jsonl --teacher-url URL --teacher-model NAME --out DATA
    tasktune train --task DATA/task.yaml --out RUN            # the student learns the answers from the bare input
    tasktune eval RUN --agreement-with DATA                   # student (bare) vs teacher (instructed), held-out inputs

The teacher sees what `tasktune eval --with-instruction [--shots k]` sends a base model: the task's instruction as
the system turn, k labelled rows of the task as earlier turns, then the input. Its answers are validated (for JSON
tasks: the whole answer is JSON, or one fenced JSON block, and it follows the schema); invalid ones are dropped and
listed with their input line and the reason. The labelled rows become a new task whose training rows carry no
instruction: the student learns to answer as the instructed teacher did, from the bare input (Askell et al. 2021,
sec. 3.4; Snell et al. 2022 "Learning by distilling context").

DATA/
  cache.jsonl    every teacher answer, appended and fsynced as it arrives (key: teacher, prompt, settings), so a
                 killed run resumes without asking again
  train.jsonl    labelled rows for the student; eval.jsonl for eval loss; test.jsonl held out for agreement
  dropped.jsonl  inputs without a usable answer: input file, line, reason
  task.yaml      the task over these files (instruction kept, for `eval --with-instruction` and comparisons)
  check.json     the dataset doctor's report (`tasktune check`) on the labelled set
  distill.json   teacher, settings, counts, tokens and cost
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from tasktune.config import StrictModel, TaskConfig, load_task
from tasktune.data import Example, answer_text, read_examples
from tasktune.errors import ConfigError, DataError, TaskTuneError
from tasktune.fsio import atomic_write_json, atomic_write_text, ensure_writable_dir, write_jsonl
from tasktune.metrics import schema_errors
from tasktune.render import instruction_in_front
from tasktune.runtime import progress_enabled

CACHE = "cache.jsonl"


class DistillConfig(StrictModel):
    """Settings of `tasktune distill` (each is a flag: `max_tokens` ↔ `--max-tokens`)."""

    teacher: str | None = Field(
        None, description="local teacher: a model (built-in name, HF folder, .gguf) or a tasktune run folder"
    )
    teacher_url: str | None = Field(None, description="OpenAI-compatible endpoint of the teacher, e.g. http://h/v1")
    teacher_model: str | None = Field(None, description="model name to ask at --teacher-url")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable that holds the endpoint's API key")
    concurrency: int = Field(4, ge=1, description="requests in flight (endpoint) or inputs per batch (local teacher)")
    max_retries: int = Field(6, ge=0, description="retries per request on 429/408/409/5xx/timeouts, backing off")
    timeout: float = Field(120.0, gt=0, description="seconds one endpoint request may take")
    max_tokens: int = Field(256, ge=1, description="answer length cap; answers cut off at it are dropped")
    constrain: bool = Field(
        True,
        description="JSON tasks: the teacher answers under the task's JSON Schema (a local"
        " teacher decodes under it; an endpoint gets it as response_format json_schema)",
    )
    temperature: float = Field(0.0, ge=0, le=2, description="teacher sampling temperature (0: greedy)")
    answer_pattern: str | None = Field(
        None, description="regular expression a text answer must contain (re.search) to be kept, e.g. a rule's marker"
    )
    shots: int = Field(0, ge=0, description="labelled rows of the task's data.train shown to the teacher as examples")
    test_share: float = Field(0.1, ge=0, lt=1, description="share of inputs held out for agreement (test.jsonl)")
    eval_share: float = Field(0.1, ge=0, lt=1, description="share of inputs for eval loss during training")
    seed: int = Field(0, description="seed of the split and of the few-shot draw")
    limit: int | None = Field(None, ge=1, description="label only the first N inputs")
    price_per_1k_prompt_tokens: float = Field(0.0, ge=0, description="USD per 1,000 teacher prompt tokens")
    price_per_1k_completion_tokens: float = Field(0.0, ge=0, description="USD per 1,000 teacher completion tokens")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="local teacher's inference precision")

    def check(self) -> None:
        if (self.teacher is None) == (self.teacher_url is None):
            raise ConfigError(
                "distill needs exactly one teacher: --teacher MODEL_OR_RUN or --teacher-url URL",
                "pass a local model or run with --teacher, or an OpenAI-compatible endpoint with --teacher-url",
            )
        if self.teacher_url is not None and not self.teacher_model:
            raise ConfigError("--teacher-url needs --teacher-model NAME", "name the model the endpoint should run")
        if self.teacher is not None and self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature}: a local teacher decodes greedily", "drop --temperature")
        if self.answer_pattern is not None:
            try:
                re.compile(self.answer_pattern)
            except re.error as e:
                raise ConfigError(
                    f"answer_pattern {self.answer_pattern!r}: {e}", "fix the regular expression"
                ) from None
        if self.test_share + self.eval_share >= 0.9:
            raise ConfigError("test_share + eval_share leave under 10% of inputs for training", "lower them")


# --- what the teacher is asked ---------------------------------------------------------------------------------------
def teacher_messages(instruction: str, prompt_messages: list[dict], shots: list[Example] = ()) -> list[dict]:
    """The conversation the teacher gets: the instruction as the system turn (joined with a system turn the input
    already has), the few-shot rows as earlier turns, then the input: what ChatFormat.with_instruction builds for a
    template with a system role, so a local teacher and an endpoint get the same conversation."""
    return instruction_in_front([m for s in shots for m in s.messages] + list(prompt_messages), instruction)


def cache_key(teacher_id: str, messages: list[dict], settings: dict) -> str:
    """Same teacher, same conversation, same generation settings → same key; anything else asks again."""
    blob = json.dumps({"teacher": teacher_id, "messages": messages, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop", or "length" when it ran into max_tokens
    prompt_tokens: int
    completion_tokens: int
    retries: int = 0


@dataclass
class Job:
    index: int  # position among the inputs
    line: int  # line in the inputs file
    example: Example
    messages: list[dict]
    key: str


class AnswerCache:
    """Append-only JSONL of teacher answers, one fsynced line per answer, shared by the labelling threads.

    A run killed mid-write leaves at most one partial last line: it is cut off on open, so the next append starts on
    a line of its own and that input is simply asked again."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        if path.is_file():
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                with open(path, "r+b") as f:
                    f.truncate(end)
            for raw in data[:end].splitlines():
                try:
                    rec = json.loads(raw)
                    self.records[rec["key"]] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a damaged line is an answer we do not have: it is asked again
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115  (open for the whole run; close() closes it)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())  # on disk before the next request: a crash loses no answer already paid for
            self.records[record["key"]] = record

    def close(self) -> None:
        self._f.close()


# --- teachers --------------------------------------------------------------------------------------------------------
def _teacher_schema(cfg: DistillConfig, task: TaskConfig) -> dict | None:
    """The schema the teacher answers under: the task's (or its training answers'); None when unconstrained."""
    from tasktune.constrain import task_schema

    return task_schema(task)[0] if cfg.constrain and task.output.kind == "json" else None


def _schema_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "answer"  # OpenAI's rule for json_schema.name


class EndpointTeacher:
    """Any OpenAI-compatible chat endpoint, through the official `openai` client.

    Retries are the client's own: on 408/409/429/5xx, timeouts and dropped connections it backs off exponentially
    (0.5 s doubling to 8 s, with jitter) and honours Retry-After / retry-after-ms up to two minutes; `max_retries`
    bounds them. Errors that would repeat for every input (wrong key, unknown model, endpoint unreachable) stop the
    run; an error about one input (e.g. 400 context length) drops that input."""

    def __init__(self, cfg: DistillConfig, task: TaskConfig):
        try:
            import openai
        except ImportError:
            raise TaskTuneError("an endpoint teacher needs the openai package", "pip install openai") from None
        self.openai = openai
        key = os.environ.get(cfg.api_key_env)
        if not key:
            print(f"tasktune: ${cfg.api_key_env} is not set: asking {cfg.teacher_url} without an API key",
                  file=sys.stderr)  # fmt: skip
        self.client = openai.OpenAI(base_url=cfg.teacher_url, api_key=key or "none", max_retries=cfg.max_retries,
                                    timeout=cfg.timeout)  # fmt: skip
        self.cfg = cfg
        self.id = f"endpoint:{cfg.teacher_url.rstrip('/')}:{cfg.teacher_model}"
        self.schema = _teacher_schema(cfg, task)
        self.extra = {}
        if self.schema:  # an empty schema (any JSON) has no response_format that every endpoint takes: none is sent
            spec = {"name": _schema_name(task.name), "schema": self.schema, "strict": True}
            self.extra["response_format"] = {"type": "json_schema", "json_schema": spec}

    def settings(self) -> dict:
        out = {"max_tokens": self.cfg.max_tokens, "temperature": self.cfg.temperature}
        return out | ({"response_format": self.extra["response_format"]} if self.extra else {})

    def ask(self, job: Job) -> Answer:
        openai = self.openai
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.cfg.teacher_model, messages=job.messages, max_tokens=self.cfg.max_tokens,
                temperature=self.cfg.temperature, **self.extra,
            )  # fmt: skip
            r = raw.parse()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise TaskTuneError(
                f"the teacher endpoint refused the API key ({e.status_code}): {_api_message(e)}",
                f"put the key in ${self.cfg.api_key_env} (or name another variable with --api-key-env)",
            ) from None
        except openai.NotFoundError as e:
            raise TaskTuneError(
                f"the teacher endpoint has no model {self.cfg.teacher_model!r} (404): {_api_message(e)}",
                "check --teacher-model and --teacher-url (it usually ends in /v1)",
            ) from None
        except openai.APIConnectionError as e:
            raise TaskTuneError(
                f"cannot reach the teacher at {self.cfg.teacher_url} after {self.cfg.max_retries} retries: {e}",
                "check --teacher-url; answers so far are cached, so the same command resumes",
            ) from None
        choice = r.choices[0]
        usage = r.usage
        return Answer(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            retries=raw.retries_taken,
        )

    def label(self, jobs: list[Job]) -> Iterator[tuple[Job, Answer | Exception]]:
        """Answers as they arrive, at most `concurrency` requests in flight."""
        if not jobs:
            return
        pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="teacher")
        todo = iter(jobs)
        running = {}
        try:
            for job in todo:  # fill the window, then top it up as answers arrive (no thousands of queued futures)
                running[pool.submit(self.ask, job)] = job
                if len(running) >= self.cfg.concurrency:
                    break
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = running.pop(fut)
                    err = fut.exception()
                    if isinstance(err, TaskTuneError):
                        raise err
                    yield job, err if err is not None else fut.result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        running[pool.submit(self.ask, nxt)] = nxt
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def _api_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(e, "message", e))


class LocalTeacher:
    """A model or tasktune run on this machine, answering in batches through `Predictor` (greedy, KV cache)."""

    def __init__(self, cfg: DistillConfig, task: TaskConfig, shots: list[Example]):
        from tasktune.models import resolve_model
        from tasktune.rundir import RunInfo

        self.run = Path(cfg.teacher)
        if (self.run / "run.json").is_file():
            self.id = f"run:{self.run.resolve()}:{RunInfo.load(self.run).created}"
            self.path = None
        else:
            self.path = resolve_model(cfg.teacher).path
            self.id = f"model:{self.path}"
        self.task, self.shots, self.cfg = task, shots, cfg
        self._predictor = None  # loaded on first use: a resumed run with every answer cached loads no model

    def predictor(self):
        from tasktune.predict import Predictor

        if self._predictor is None:
            schema = _teacher_schema(self.cfg, self.task)
            if self.path is None:
                p = Predictor.from_run(self.run, precision=self.cfg.precision, constrain=schema is not None)
            else:
                p = Predictor.from_base(str(self.path), instruction=None, output_kind=self.task.output.kind,
                                        precision=self.cfg.precision, schema=schema,
                                        copy_fields=self.task.output.copy_fields,
                                        constrain=schema is not None)  # fmt: skip
            p.instruction = self.task.instruction or None  # the teacher always gets the task's instruction
            p.max_new_tokens = self.cfg.max_tokens
            self._predictor = p
        return self._predictor

    def settings(self) -> dict:
        out = {"max_tokens": self.cfg.max_tokens, "temperature": 0.0, "precision": self.cfg.precision}
        return out | ({"constrain": True} if _teacher_schema(self.cfg, self.task) is not None else {})

    def label(self, jobs: list[Job]) -> Iterator[tuple[Job, Answer | Exception]]:
        size = self.cfg.concurrency
        for start in range(0, len(jobs), size):
            batch = jobs[start : start + size]
            preds = self.predictor().predict([j.example for j in batch], batch_size=size, shots=self.shots)
            for job, p in zip(batch, preds, strict=True):
                yield job, Answer(p.output, "stop" if p.stopped else "length", p.prompt_tokens, p.generated_tokens)


# --- validation ----------------------------------------------------------------------------------------------------
_FENCE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.S)


def validate(answer: Answer, kind: str, schema: dict | None, max_tokens: int,
             pattern: str | None = None) -> tuple[object, str | None]:  # fmt: skip
    """(the label, None), or (None, why it is dropped). A JSON label is the parsed value (written as compact JSON).

    An answer cut off at max_tokens is dropped, never kept: the student would learn to stop mid-answer."""
    if answer.finish_reason == "length":
        return None, f"cut off at max_tokens={max_tokens}: raise --max-tokens"
    text = answer.text.strip()
    if not text:
        return None, "empty answer"
    if kind != "json":
        if pattern is not None and re.search(pattern, text) is None:
            return None, f"does not match --answer-pattern {pattern!r}"
        return text, None
    fenced = _FENCE.match(text)  # a whole answer in one code fence is still one JSON value; prose around it is not
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at char {e.pos})"
    errors = schema_errors(value, schema)
    if errors:
        return None, f"breaks the schema: {errors[0]}"
    return value, None


# --- the command -----------------------------------------------------------------------------------------------------
@dataclass
class DistillResult:
    out: str
    teacher: str
    inputs: int
    labelled: int
    dropped: int  # invalid answers
    failed: int  # requests that failed for good this run (asked again by the next run)
    splits: dict[str, int]
    asked: int  # requests sent this run
    reused: int  # answers taken from the cache
    retries: int
    prompt_tokens: int  # over every answer used (cached or new)
    completion_tokens: int
    cost_usd: float
    cost_usd_this_run: float
    seconds: float
    check_errors: int = 0
    check_warnings: int = 0
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _split(n: int, cfg: DistillConfig) -> list[str]:
    """Split name per input: a seeded shuffle, the same on every rerun. Train keeps at least one input."""
    order = list(range(n))
    random.Random(cfg.seed).shuffle(order)
    n_test = min(round(n * cfg.test_share), max(n - 1, 0))
    n_eval = min(round(n * cfg.eval_share), max(n - 1 - n_test, 0))
    names = ["train"] * n
    for rank, i in enumerate(order):
        if rank < n_test:
            names[i] = "test"
        elif rank < n_test + n_eval:
            names[i] = "eval"
    return names


def _prepare_out(out: Path) -> Path:
    if out.is_dir() and any(out.iterdir()) and not (out / CACHE).is_file():
        raise TaskTuneError(
            f"{out} is not empty and holds no {CACHE} of an earlier distill run",
            "choose a new --out folder (the same folder as an earlier distill run resumes it)",
        )
    return ensure_writable_dir(out, what="distill output folder")


def distill(task_file: str | Path, inputs: str | Path, out: str | Path, cfg: DistillConfig,
            teacher: object | None = None) -> DistillResult:  # fmt: skip
    """Label `inputs` with the instructed teacher, write the student's task into `out`, and check it.

    `teacher`: an object with `id`, `settings()` and `label(jobs)` to use instead of the one `cfg` names (tests)."""
    from tqdm.auto import tqdm

    from tasktune.evaluate import pick_shots

    cfg.check()
    t0 = time.perf_counter()
    task = load_task(task_file)
    if not task.instruction.strip():
        raise ConfigError(f"{task_file}: the task has no instruction to distil", "add `instruction:` to the task file")
    if cfg.answer_pattern is not None and task.output.kind == "json":
        raise ConfigError("--answer-pattern checks text answers; this task's answers are JSON",
                          "drop --answer-pattern: JSON answers are checked against output.schema")  # fmt: skip
    examples = read_examples(inputs, require_answer=False)[: cfg.limit]
    out = _prepare_out(Path(out))
    schema = task.json_schema()
    shots = pick_shots(task, cfg.shots, cfg.seed)
    if teacher is None:
        teacher = EndpointTeacher(cfg, task) if cfg.teacher_url else LocalTeacher(cfg, task, shots)
    settings = teacher.settings()
    jobs = []
    for i, ex in enumerate(examples):
        messages = teacher_messages(task.instruction, ex.prompt_messages, shots)
        jobs.append(Job(i, ex.line, ex, messages, cache_key(teacher.id, messages, settings)))

    cache = AnswerCache(out / CACHE)
    pending, seen = [], set()
    for j in jobs:  # a repeated input is asked once; its answer labels every copy
        if cache.get(j.key) is None and j.key not in seen:
            seen.add(j.key)
            pending.append(j)
    reused = sum(cache.get(j.key) is not None for j in jobs)
    price = (cfg.price_per_1k_prompt_tokens / 1000, cfg.price_per_1k_completion_tokens / 1000)
    failures: dict[str, str] = {}  # cache key -> why the request failed
    asked = retries = 0
    run_cost = 0.0
    print(f"tasktune: distill: {len(jobs)} inputs, {reused} answered before (cache), {len(pending)} to ask"
          f" {teacher.id}")  # fmt: skip
    bar = tqdm(total=len(pending), desc="labelling", unit="input", disable=not progress_enabled() or not pending)
    try:
        for job, answer in teacher.label(pending):
            asked += 1
            if isinstance(answer, Exception):
                failures[job.key] = f"teacher request failed: {type(answer).__name__}: {_api_message(answer)}"
            else:
                retries += answer.retries
                record = {"key": job.key, "line": job.line, "teacher": teacher.id} | asdict(answer)
                cache.add(record | {"t": time.time()})
                run_cost += answer.prompt_tokens * price[0] + answer.completion_tokens * price[1]
            bar.update(1)
            bar.set_postfix(cost=f"${run_cost:.4f}", failed=len(failures), refresh=False)
    finally:
        bar.close()
        cache.close()

    rows: dict[str, list[dict]] = {"train": [], "eval": [], "test": []}
    dropped = []
    split_of = _split(len(jobs), cfg)
    tokens = [0, 0]
    for job in jobs:
        where = {"file": str(inputs), "line": job.line, "input": job.example.input_text}
        if job.key in failures:
            dropped.append(where | {"reason": failures[job.key]})
            continue
        rec = cache.get(job.key)
        answer = Answer(rec["text"], rec["finish_reason"], rec["prompt_tokens"], rec["completion_tokens"])
        tokens[0] += answer.prompt_tokens
        tokens[1] += answer.completion_tokens
        label, reason = validate(answer, task.output.kind, schema, cfg.max_tokens, cfg.answer_pattern)
        if reason is not None:
            dropped.append(where | {"reason": reason, "answer": answer.text})
            continue
        rows[split_of[job.index]].append(_row(job.example, label, job.line))
    failed = sum(job.key in failures for job in jobs)
    if not rows["train"]:
        write_jsonl(out / "dropped.jsonl", dropped)
        raise DataError(
            f"no usable teacher answer for any training input ({len(dropped)} dropped; see {out / 'dropped.jsonl'})",
            "look at the reasons in dropped.jsonl: raise --max-tokens, fix the instruction, or choose another teacher",
        )
    _write_outputs(out, task, rows, dropped)
    report = _check(out, task)
    result = DistillResult(
        out=str(out), teacher=teacher.id, inputs=len(jobs), labelled=sum(map(len, rows.values())),
        dropped=len(dropped) - failed, failed=failed, splits={k: len(v) for k, v in rows.items()},
        asked=asked, reused=reused, retries=retries, prompt_tokens=tokens[0], completion_tokens=tokens[1],
        cost_usd=tokens[0] * price[0] + tokens[1] * price[1], cost_usd_this_run=run_cost,
        seconds=time.perf_counter() - t0, check_errors=len(report.errors), check_warnings=len(report.warnings),
        settings=cfg.model_dump() | {"task_file": str(task_file), "inputs": str(inputs), "teacher_settings": settings},
    )  # fmt: skip
    atomic_write_json(out / "distill.json", result.to_dict())
    return result


def _row(example: Example, label, line: int) -> dict:
    """A labelled row in the shape the input had: input/output for a single user turn, else messages."""
    extra = {"line": line}
    if example.has_answer:  # the input file's own answer: kept as the reference for `--agreement-with`
        extra["reference"] = example.answer
    msgs = example.prompt_messages
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return {"input": msgs[0]["content"], "output": label} | extra
    return {"messages": [*msgs, {"role": "assistant", "content": answer_text(label)}]} | extra


def _write_outputs(out: Path, task: TaskConfig, rows: dict[str, list[dict]], dropped: list[dict]) -> None:
    for split, split_rows in rows.items():
        write_jsonl(out / f"{split}.jsonl", split_rows)
    write_jsonl(out / "dropped.jsonl", dropped)
    config = task.to_yaml_dict()
    config["output"]["schema"] = task.json_schema()  # inline: the new task stands on its own
    config["data"] = {k: (f"{k}.jsonl" if rows[k] else None) for k in ("train", "eval", "test")}
    config["train_with_instruction"] = False  # the point: the student answers from the bare input
    atomic_write_text(out / "task.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _check(out: Path, task_src: TaskConfig):
    """The dataset doctor on the labelled set, with the student's tokenizer; findings are printed, not fatal here
    (`tasktune train` refuses errors on its own)."""
    from tasktune.check import CheckConfig, check_dataset, task_splits

    task = load_task(out / "task.yaml")
    report = check_dataset(task_splits(task), task=task, cfg=CheckConfig.for_training(task, task.train))
    atomic_write_json(out / "check.json", report.to_dict())
    print(report.format(details=3))
    return report


def format_distill(r: DistillResult) -> str:
    lines = [
        f"tasktune: distill: {r.labelled} of {r.inputs} inputs labelled by {r.teacher}"
        f" (train {r.splits['train']}, eval {r.splits['eval']}, test {r.splits['test']}); {r.dropped} invalid"
        f" answer(s) and {r.failed} failed request(s) listed in {Path(r.out) / 'dropped.jsonl'}",
        f"tasktune: {r.asked} request(s) this run, {r.reused} answer(s) from the cache, {r.retries} retries;"
        f" teacher tokens {r.prompt_tokens:,} prompt + {r.completion_tokens:,} completion, cost ${r.cost_usd:.4f}"
        f" (this run ${r.cost_usd_this_run:.4f}); {r.seconds:.0f}s",
    ]
    if r.failed:
        lines.append("tasktune: run the same command again to retry the failed requests (answers are cached)")
    lines.append(f"tasktune: next: tasktune train --task {Path(r.out) / 'task.yaml'} --out RUN")
    return "\n".join(lines)


# --- verification: the student on the bare input against the instructed teacher ------------------------------------
@dataclass
class AgreementReport:
    run: str
    data: str
    n: int
    kind: str
    exact_agreement: float  # student's answer == teacher's (normalised; JSON compared as values)
    field_agreement: float | None  # JSON: share of the teacher's leaf fields the student reproduces
    rouge_l_agreement: float | None  # text: ROUGE-L between the answers
    student_valid_rate: float  # JSON: strictly valid (and schema-valid when the task has a schema); text: non-empty
    student_prompt_tokens: float
    instructed_prompt_tokens: float  # the teacher's prompt (instruction + input) in the student's tokenizer
    prompt_token_saving: float
    references: int  # held-out rows whose input file had its own answer
    student_metrics_vs_reference: dict | None
    teacher_metrics_vs_reference: dict | None
    examples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def agreement_scores(student: list[str], teacher: list[str], kind: str, schema: dict | None = None,
                     free_text: set[str] = frozenset()) -> dict:  # fmt: skip
    """Exact and field-level agreement of the student's answers with the teacher's (the teacher's are the targets)."""
    from tasktune.metrics import field_scores, same_record, text_metrics

    n = len(student)
    if not n:
        raise TaskTuneError("no held-out rows to compare", "distil with --test-share above 0")
    if kind == "json":
        exact = valid = 0
        fields: list[float] = []
        for s, t in zip(student, teacher, strict=True):
            want = json.loads(t)
            try:
                got = json.loads(s)
            except json.JSONDecodeError:
                got = None
            else:
                valid += not schema_errors(got, schema)
            exact += got is not None and same_record(got, want)
            fields += field_scores(got, want, free_text).values()
        return {"exact_agreement": exact / n, "field_agreement": sum(fields) / max(len(fields), 1),
                "rouge_l_agreement": None, "student_valid_rate": valid / n}  # fmt: skip
    m = text_metrics(student, teacher)  # the teacher's answers are the references
    return {"exact_agreement": m["exact_match"], "field_agreement": None, "rouge_l_agreement": m["rouge_l"],
            "student_valid_rate": sum(bool(s.strip()) for s in student) / n}  # fmt: skip


def agreement(run: str | Path, data: str | Path, *, limit: int | None = None, batch_size: int = 16,
              precision: str = "auto") -> AgreementReport:  # fmt: skip
    """Score a student run on DATA/test.jsonl (held out by distill): its answer to the bare input against the answer
    the instructed teacher gave, and both against the input file's own answers where it had them."""
    from tasktune.metrics import json_metrics, text_metrics
    from tasktune.predict import Predictor

    data = Path(data)
    test = data / "test.jsonl"
    if not (data / "distill.json").is_file() or not test.is_file():
        raise TaskTuneError(f"{data} is not a distill output folder with held-out rows (test.jsonl)",
                            "pass the --out folder of `tasktune distill` (made with --test-share above 0)")  # fmt: skip
    task = load_task(data / "task.yaml")
    rows = read_examples(test)[:limit]
    predictor = Predictor.from_run(run, precision=precision)
    if predictor.instruction:
        print("tasktune: note: this run was trained with the instruction in its prompts", file=sys.stderr)
    preds = predictor.predict(rows, batch_size=batch_size)
    student = [p.output for p in preds]
    teacher = [ex.answer for ex in rows]
    schema, free = task.json_schema(), set(task.output.free_text_fields)
    scores = agreement_scores(student, teacher, task.output.kind, schema, free)
    fmt = predictor.fmt
    instructed = [len(fmt.encode_prompt(fmt.with_instruction(ex.prompt_messages, task.instruction))) for ex in rows]
    student_tokens = sum(p.prompt_tokens for p in preds) / len(preds)
    instructed_tokens = sum(instructed) / len(instructed)
    with_ref = [i for i, ex in enumerate(rows) if "reference" in ex.extra]
    vs_ref = {}
    if with_ref:
        refs = [answer_text(rows[i].extra["reference"]) for i in with_ref]
        for who, answers in (("student", student), ("teacher", teacher)):
            picked = [answers[i] for i in with_ref]
            m = json_metrics(picked, refs, schema, free) if task.output.kind == "json" else text_metrics(picked, refs)
            vs_ref[who] = {k: v for k, v in m.items() if k != "per_field"}
    return AgreementReport(
        run=str(run), data=str(data), n=len(rows), kind=task.output.kind, **scores,
        student_prompt_tokens=student_tokens, instructed_prompt_tokens=instructed_tokens,
        prompt_token_saving=1 - student_tokens / instructed_tokens if instructed_tokens else 0.0,
        references=len(with_ref), student_metrics_vs_reference=vs_ref.get("student"),
        teacher_metrics_vs_reference=vs_ref.get("teacher"),
        examples=[{"where": ex.where, "input": ex.input_text, "student": s, "teacher": t}
                  for ex, s, t in zip(rows, student, teacher, strict=True)],
    )  # fmt: skip


def format_agreement(r: AgreementReport) -> str:
    pct = "{:.1%}".format
    lines = [f"agreement of {r.run} (bare input) with the instructed teacher, {r.n} held-out inputs of {r.data}:",
             f"  exact agreement          {pct(r.exact_agreement)}"]  # fmt: skip
    if r.field_agreement is not None:
        lines.append(f"  field agreement          {pct(r.field_agreement)}")
    if r.rouge_l_agreement is not None:
        lines.append(f"  ROUGE-L agreement        {r.rouge_l_agreement:.3f}")
    lines += [
        f"  student answers valid    {pct(r.student_valid_rate)}",
        f"  prompt tokens / request  {r.student_prompt_tokens:.0f} bare vs {r.instructed_prompt_tokens:.0f} with the"
        f" instruction ({pct(r.prompt_token_saving)} fewer)",
    ]
    if r.references:
        key = "field_accuracy" if r.kind == "json" else "rouge_l"
        s, t = r.student_metrics_vs_reference[key], r.teacher_metrics_vs_reference[key]
        lines.append(f"  vs the inputs' own answers ({r.references} rows), {key}: student {s:.3f}, teacher {t:.3f}")
    return "\n".join(lines)
