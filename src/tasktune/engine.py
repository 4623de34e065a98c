"""The serving engine: the loaded models, and one generation thread that batches queued requests per adapter.

All LoRA runs trained on the same base model share one copy of the base weights: they are loaded as named adapters
of one peft model, and each batch switches to its adapter (`set_adapter`) or, for the base model itself, runs with
the adapters disabled. Full, prefix and prompt runs each keep their own model.

One thread owns the models and runs every generation, so no two batches ever touch a model (or switch its adapter)
at the same time. Requests wait in a bounded queue; the thread takes the oldest request and every other waiting one
for the same model and adapter (up to the batch size) and generates them together.

`transformers.generate` takes one sampling configuration and one streamer for a whole batch; a server needs
per-request temperature, top-p, seed, max_tokens, stop strings and token streams inside one batch. Two small hooks
give that without a hand-written decoding loop (which would have to re-implement KV caches and peft's prefix and
prompt injection): a logits processor samples each row with its own settings and generator, and a stopping
criterion, called after every step with the new token of each row, tracks each row's text and stops it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tasktune.errors import TaskTuneError
from tasktune.render import ChatFormat
from tasktune.rundir import RunInfo
from tasktune.runtime import cast_for_inference


@dataclass
class Served:
    """One model name that clients can ask for: a run, or a base model shared by LoRA runs."""

    name: str
    kind: str  # lora | full | prefix | prompt | base
    model: object  # the torch model that generates for it (shared by the LoRA runs of one base)
    adapter: str | None  # peft adapter to switch to; None for a model with nothing to switch
    use_base: bool  # run with the adapters disabled (the base model of a LoRA group)
    fmt: ChatFormat
    instruction: str | None  # sent only when the run was trained with it in the prompt
    output_kind: str
    max_new_tokens: int  # default answer cap (a run's: from its training answers)
    context: int  # positions the model can attend to: prompt + answer must fit
    base: str | None = None  # the base model's name, for the listing
    run: str | None = None  # the run folder (server-side only: never sent to clients)
    base_path: str | None = None  # the base weights' folder of a LoRA group: later LoRA runs of it join the group
    schema: dict | None = None  # a JSON run's schema: chat requests are decoded under it unless they ask otherwise
    copy_fields: list[str] = field(default_factory=list)
    labels: list[str] | None = None  # a label run's answers: one of these, unless a request asks otherwise
    _constraints: dict = field(default_factory=dict, repr=False)  # compiled schemas, by their JSON text

    def constraint(self, schema: dict | None, copy_fields: list[str] = (), where: str = "output.schema",
                   labels: list[str] | None = None):  # fmt: skip
        """The compiled constraint for `schema` (or `labels`) on this model (cached: clients send the same schema
        again)."""
        from tasktune.constrain import Constraint, vocab_size

        key = json.dumps([schema, list(copy_fields), labels], sort_keys=True)
        if key not in self._constraints:
            if len(self._constraints) >= 64:  # a bounded cache: a client that sends a new schema each time
                self._constraints.pop(next(iter(self._constraints)))
            self._constraints[key] = Constraint(self.fmt.tok, self.fmt.stop_ids, vocab_size(self.model), schema,
                                                copy_fields=copy_fields, where=where, labels=labels)  # fmt: skip
        return self._constraints[key]

    @property
    def batch_key(self) -> tuple:
        return id(self.model), self.adapter, self.use_base


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) | "length" (max_tokens)


@dataclass
class GenRequest:
    """One generation. The callbacks are called from the generation thread."""

    served: Served
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    strip: bool = True  # chat answers are stripped like `tasktune predict`'s; raw completions are not
    on_done: Callable[[GenResult | BaseException], None] = lambda r: None
    on_delta: Callable[[str], None] | None = None  # streaming: new text as it is decided
    cancelled: bool = False  # the client went away: the row stops at the next step
    constraint: object | None = None  # a constrain.Constraint: the answer is decoded under its grammar
    input_text: str = ""  # the bare input, for a constraint's copy fields


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


class _Row:
    """Decoding state of one request inside a batch."""

    def __init__(self, req: GenRequest, fmt: ChatFormat):
        self.req = req
        self.fmt = fmt
        self.tokens: list[int] = []
        self.ended_on_token = False
        self.done = False
        self.finish_reason = "length"
        self.text = ""
        self.emitted = ""
        self.generator = None
        if req.temperature > 0:
            self.generator = torch.Generator().manual_seed(
                req.seed if req.seed is not None else random.SystemRandom().randrange(2**63)
            )
        self._hold = max((len(s) for s in req.stop), default=0)

    def _decode(self) -> str:
        text = self.fmt.tok.decode(self.tokens, skip_special_tokens=True)
        return text.lstrip() if self.req.strip else text

    def step(self, token: int) -> None:
        """Take the row's next token; decide whether it is done; stream what is now certain."""
        if token in self.fmt.stop_ids:
            self.ended_on_token, self.done, self.finish_reason = True, True, "stop"
        else:
            self.tokens.append(token)
        if self.req.stop or self.req.on_delta is not None or self.done:
            self.text = self._decode()
            cut = min((i for s in self.req.stop if (i := self.text.find(s)) >= 0), default=-1)
            if cut >= 0:
                self.text, self.done, self.finish_reason = self.text[:cut], True, "stop"
        if not self.done and (len(self.tokens) >= self.req.max_tokens or self.req.cancelled):
            self.done = True
            self.text = self._decode()
        if self.req.on_delta is not None:
            self._stream()

    def _stream(self) -> None:
        if self.done:
            visible = self.final_text()
        else:
            # Hold back what may still change: a partial UTF-8 character, trailing spaces that the final strip
            # removes, and a tail that could be the start of a stop string.
            visible = self.text.rstrip("\ufffd")
            if self.req.strip:
                visible = visible.rstrip()
            if self._hold:
                visible = visible[: max(len(self.emitted), len(visible) - self._hold + 1)]
        if len(visible) > len(self.emitted) and visible.startswith(self.emitted):
            self.req.on_delta(visible[len(self.emitted) :])
            self.emitted = visible

    def final_text(self) -> str:
        return self.text.rstrip() if self.req.strip else self.text

    def result(self) -> GenResult:
        if not self.text and self.tokens:
            self.text = self._decode()
        return GenResult(
            text=self.final_text(),
            prompt_tokens=len(self.req.prompt_ids),
            completion_tokens=len(self.tokens) + int(self.ended_on_token),
            finish_reason=self.finish_reason,
        )


def _hooks(rows: list[_Row]):
    from transformers import LogitsProcessor, StoppingCriteria

    class SampleRows(LogitsProcessor):
        """Greedy rows pass through (generate takes their argmax); a sampled row gets one token drawn with its own
        temperature, top-p and generator, and every other token -inf, so generate's argmax picks the draw."""

        def __call__(self, input_ids, scores):
            for i, row in enumerate(rows):
                if row.generator is None or row.done:
                    continue
                logits = scores[i] / row.req.temperature
                if row.req.top_p < 1.0:
                    # nucleus sampling (Holtzman et al. 2020, §3.1): keep the smallest set of top tokens whose
                    # probability reaches top_p
                    sorted_logits, order = torch.sort(logits, descending=True)
                    cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
                    drop = cum - torch.softmax(sorted_logits, dim=-1) >= row.req.top_p
                    logits = logits.clone()
                    logits[order[drop]] = float("-inf")
                probs = torch.softmax(logits, dim=-1)
                token = torch.multinomial(probs, 1, generator=row.generator)
                scores[i] = float("-inf")
                scores[i, token] = 0.0
            return scores

    class TrackRows(StoppingCriteria):
        """Called after each step with every row's new token in the last column."""

        def __call__(self, input_ids, scores, **kwargs):
            last = input_ids[:, -1].tolist()
            for row, token in zip(rows, last, strict=True):
                if not row.done:
                    row.step(token)
            return torch.tensor([row.done for row in rows], dtype=torch.bool, device=input_ids.device)

    return SampleRows(), TrackRows()


class Engine:
    """Owns the models; `submit` queues a request, one thread generates in batches per adapter."""

    def __init__(self, *, max_queue: int = 256, max_batch_size: int = 16, batch_wait_s: float = 0.01):
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._pending: deque[GenRequest] = deque()
        self._calls: deque[tuple[Callable, Future]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="tasktune-generate", daemon=True)
        self.batches = 0  # batches run so far (for /health and tests)

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def submit(self, req: GenRequest) -> None:
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting (the queue holds {self.max_queue})")
            self._pending.append(req)
            self._cond.notify()

    def run_on_thread(self, fn: Callable[[], object]) -> Future:
        """Run `fn` on the generation thread between two batches (it owns the models: adding an adapter to a model
        that is generating would change its modules under the running forward pass)."""
        fut: Future = Future()
        with self._cond:
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    def _run_calls(self) -> None:
        while True:
            with self._cond:
                if not self._calls:
                    return
                fn, fut = self._calls.popleft()
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    def _next_batch(self) -> list[GenRequest] | None:
        self._run_calls()
        with self._cond:
            while not self._pending and not self._stopping:
                if self._calls:
                    return []
                self._cond.wait()
            if self._stopping:
                return None
            if len(self._pending) < self.max_batch_size:
                # Requests of a burst arrive a few ms apart: a short wait lets them share the first batch.
                self._cond.wait(timeout=self.batch_wait_s)
            key = self._pending[0].served.batch_key
            batch = [r for r in self._pending if r.served.batch_key == key][: self.max_batch_size]
            for r in batch:
                self._pending.remove(r)
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [r for r in batch if not r.cancelled]
            try:
                results = self.run_batch(live) if live else []
            except Exception as e:  # a failed batch fails its requests, never the thread
                for r in live:
                    r.on_done(e)
                continue
            for r, res in zip(live, results, strict=True):
                r.on_done(res)

    @torch.inference_mode()
    def run_batch(self, batch: list[GenRequest]) -> list[GenResult]:
        """Generate one batch (all requests for the same model and adapter); called by the generation thread."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from tasktune.generate import new_tokens, pad_left

        served = batch[0].served
        assert all(r.served.batch_key == served.batch_key for r in batch), "a batch mixes adapters"
        model, fmt = served.model, served.fmt
        pad_id = fmt.tok.pad_token_id if fmt.tok.pad_token_id is not None else fmt.stop_ids[0]
        ids, mask = pad_left([r.prompt_ids for r in batch], pad_id)
        rows = [_Row(r, fmt) for r in batch]
        sampler, tracker = _hooks(rows)
        processors = [sampler]
        if any(r.constraint is not None for r in batch):
            from tasktune.constrain import ConstrainedLogits, vocab_size

            matchers = [None if r.constraint is None else r.constraint.matcher(r.input_text) for r in batch]
            budgets = [None if r.constraint is None else r.constraint.budget(r.max_tokens) for r in batch]
            closer = next((r.constraint.closer for r, b in zip(batch, budgets, strict=True) if b is not None), None)
            # before the sampler: a sampled row draws among the tokens its grammar allows
            processors.insert(0, ConstrainedLogits(matchers, vocab_size(model), fmt.stop_ids, budgets=budgets,
                                                   closer=closer))  # fmt: skip
        if served.adapter is not None:
            model.set_adapter(served.adapter)
        switch = model.disable_adapter() if served.use_base else contextlib.nullcontext()
        device = next(model.parameters()).device
        with switch:
            new_tokens(  # prompt- and prefix-tuned runs need generate.py's path, not peft's generate()
                model,
                ids.to(device),
                mask.to(device),
                max_new_tokens=max(r.max_tokens for r in batch),
                do_sample=False,
                eos_token_id=fmt.stop_ids,
                pad_token_id=pad_id,
                logits_processor=LogitsProcessorList(processors),
                stopping_criteria=StoppingCriteriaList([tracker]),
            )
        self.batches += 1
        return [row.result() for row in rows]


# --- loading ---------------------------------------------------------------------------------------------------------
def base_model_name(info: RunInfo) -> str:
    """What clients call a run's base model: the built-in name, or the base folder's name."""
    from tasktune.models import BUILTIN_MODELS

    return info.base_model if info.base_model in BUILTIN_MODELS else Path(info.base_model).name


def _context(model, extra_positions: int = 0) -> int:
    config = getattr(model, "config", None)
    n = getattr(config, "max_position_embeddings", None) or 2048
    return int(n) - extra_positions


def load_served(runs: dict[str, Path], precision: str = "auto", progress: Callable[[str], None] = print) -> dict:
    """Load every run once; LoRA runs on the same base become adapters of one shared model. Returns name → Served."""
    from peft import PeftModel

    from tasktune.models import load_base
    from tasktune.predict import Predictor

    # A run served under several names (its folder name and aliases) is loaded once.
    first: dict[Path, str] = {}
    aliases = {}
    for name, path in runs.items():
        key = Path(path).resolve()
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    runs = {name: path for name, path in runs.items() if name not in aliases}
    infos = {name: RunInfo.load(path) for name, path in runs.items()}
    served: dict[str, Served] = {}
    groups: dict[str, list[str]] = {}
    for name, info in infos.items():
        if info.method == "lora":
            groups.setdefault(str(_lora_base_path(info)), []).append(name)
    for base_path, names in groups.items():
        progress(f"loading {base_path} with {len(names)} LoRA adapter(s): {', '.join(names)}")
        base, base_tok = load_base(Path(base_path))
        shared = None
        for i, name in enumerate(names):
            folder = runs[name] / infos[name].weights_dir
            if not folder.is_dir():
                raise TaskTuneError(f"{folder} is missing: the run did not finish", "train again, or resume the run")
            adapter = f"adapter{i}"  # peft adapter names become module keys: run names may hold dots
            if shared is None:
                shared = PeftModel.from_pretrained(base, folder, adapter_name=adapter)
            else:
                shared.load_adapter(folder, adapter_name=adapter)
            served[name] = _lora_served(name, infos[name], runs[name], shared, adapter, base_path)
        cast_for_inference(shared, precision)
        shared.eval()
        base_name = base_model_name(infos[names[0]])
        if base_name in served or base_name in runs:
            raise TaskTuneError(
                f"the base model's name {base_name!r} is also a run's name", "serve that run under an --alias"
            )
        served[base_name] = Served(
            name=base_name,
            kind="base",
            model=shared,
            adapter=None,
            use_base=True,
            fmt=ChatFormat(base_tok),
            instruction=None,
            output_kind="text",
            max_new_tokens=256,
            context=_context(base),
            base_path=base_path,
        )
    for name, info in infos.items():
        if info.method == "lora":
            continue
        progress(f"loading {info.method} run {name}")
        p = Predictor.from_run(runs[name], precision=precision, merge=False)
        virtual = 0
        peft_config = getattr(p.model, "peft_config", None)
        if peft_config:
            virtual = getattr(next(iter(peft_config.values())), "num_virtual_tokens", 0) or 0
        served[name] = Served(
            name=name,
            kind=info.method,
            model=p.model.eval(),
            adapter=None,
            use_base=False,
            fmt=p.fmt,
            instruction=p.instruction,
            output_kind=info.output_kind,
            max_new_tokens=info.max_new_tokens,
            context=_context(p.model, virtual),
            base=base_model_name(info),
            run=str(runs[name]),
            schema=_run_schema(info),
            copy_fields=info.copy_fields,
            labels=info.labels,
        )
    for alias, name in aliases.items():
        if alias in served:
            raise TaskTuneError(f"--alias {alias}: that name is already served", "choose another alias")
        served[alias] = dataclasses.replace(served[name], name=alias)
    return served


def _lora_base_path(info: RunInfo) -> Path:
    from tasktune.models import resolve_model

    base_path = Path(info.base_model_path)
    return base_path if (base_path / "config.json").is_file() else resolve_model(info.base_model).path


def _lora_served(name: str, info: RunInfo, run: Path, shared, adapter: str, base_path: str) -> Served:
    """The entry of a LoRA run loaded as `adapter` of the group's shared model."""
    from transformers import AutoTokenizer

    return Served(
        name=name,
        kind="lora",
        model=shared,
        adapter=adapter,
        use_base=False,
        fmt=ChatFormat(AutoTokenizer.from_pretrained(Path(run) / info.weights_dir)),
        instruction=info.instruction if info.instruction_in_prompt else None,
        output_kind=info.output_kind,
        max_new_tokens=info.max_new_tokens,
        context=_context(shared),
        base=base_model_name(info),
        run=str(run),
        schema=_run_schema(info),
        copy_fields=info.copy_fields,
        labels=info.labels,
        base_path=str(base_path),
    )


def add_runs(served: dict[str, Served], runs: dict[str, Path], precision: str = "auto") -> None:
    """Add runs to a running server's models (on the generation thread: `Engine.run_on_thread`). A LoRA run whose
    base model is loaded joins that group as one more adapter (no second copy of the base); any other run loads as
    `load_served` loads it (a new base is then loaded on this thread, and generation waits for it)."""
    for name, path in runs.items():
        if name in served:
            raise TaskTuneError(f"model {name!r} is already served", "give the run another name")
        info = RunInfo.load(path)
        group = None
        if info.method == "lora":
            base_path = str(_lora_base_path(info))
            group = next((s for s in list(served.values()) if s.kind == "base" and s.base_path == base_path), None)
        if group is None:
            for n, s in load_served({name: Path(path)}, precision, progress=lambda _: None).items():
                if n == name or n not in served:  # a new base named like a model already served stays unlisted
                    served[n] = s
            continue
        model = group.model
        folder = Path(path) / info.weights_dir
        if not folder.is_dir():
            raise TaskTuneError(f"{folder} is missing: the run did not finish", "train again, or resume the run")
        taken = model.peft_config
        adapter = next(f"adapter{i}" for i in range(len(taken) + 1) if f"adapter{i}" not in taken)
        model.load_adapter(folder, adapter_name=adapter)
        cast_for_inference(model, precision)
        model.eval()
        served[name] = _lora_served(name, info, path, model, adapter, base_path)


def _run_schema(info: RunInfo) -> dict | None:
    """A JSON run's schema ({} = any JSON, for runs trained before runs kept one); None for text runs."""
    return (info.schema or {}) if info.output_kind == "json" else None


def wait_result(req: GenRequest, engine: Engine, timeout: float | None = None) -> GenResult:
    """Submit and block until done: for callers outside an event loop (benchmarks, tests of the engine)."""
    done = threading.Event()
    box: list = []
    req.on_done = lambda r: (box.append(r), done.set())
    engine.submit(req)
    if not done.wait(timeout):
        req.cancelled = True
        raise TimeoutError("generation did not finish in time")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]
