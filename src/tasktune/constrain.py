"""Constrained decoding for JSON tasks: every answer parses and follows the schema, by construction.

Three parts, each small:
- `infer_schema`: a JSON Schema from the training answers, for tasks that bring none (keys, types, enums for fields
  with few distinct values, arrays, nesting);
- `copy_shares` / `input_spans`: string fields whose values are spans of the input, and the spans of one input, so
  that such a field can only be filled with text the request contains;
- `Constraint`: the schema compiled by llguidance (a structured-output backend of vLLM, SGLang and llama.cpp; see
  docs/constrained.md for why this one and not xgrammar), one matcher per request, applied to the logits through
  transformers' `LogitsProcessor` interface so that `generate()` keeps its KV cache and batching.

JSON paths are written as `tasktune check` writes them: `$.title`, `$[].surface`, `$.reporter.name`.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from functools import cached_property

import numpy as np

from tasktune.errors import ConfigError

ENUM_MAX_VALUES = 20  # the same bounds as `tasktune check`'s categorical fields: few distinct short values ...
ENUM_MIN_COUNT = 20  # ... over enough rows, each value seen ...
ENUM_MIN_REPEATS = 3  # ... several times on average, so a value missing from training is unlikely at test time
ENUM_MAX_LEN = 40
COPY_SHARE = 0.99  # `check` suggests a copy field when this share of its training values are spans of the input
COPY_MAX_SPAN = 64  # tokens (words, numbers, punctuation marks) in one copied value at most

# Words, numbers and single punctuation marks: a span of the input starts and ends on these boundaries, so "km" in
# "5km" and "$350" in "about $350" are spans, and the number of spans stays linear in the input's length.
_PIECE = re.compile(r"[^\W\d_]+|\d+|[^\w\s]|_", re.UNICODE)


# --- schema inference ------------------------------------------------------------------------------------------------
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (type(None), "null"),
               (list, "array"), (dict, "object"))  # fmt: skip


def _type(v) -> str:
    return next(name for t, name in _JSON_TYPES if isinstance(v, t))  # bool before int: True is an int in Python


def infer_schema(values: list) -> dict:
    """The JSON Schema that the training answers follow: an object's keys in the order first seen, `required` for the
    keys every answer has, no other keys; `enum` for string fields with few distinct values seen many times."""
    if not values:
        return {}
    by_type: dict[str, list] = {}
    for v in values:
        by_type.setdefault(_type(v), []).append(v)
    if {"integer", "number"} <= by_type.keys():  # 3 and 2.5 in one field: a number
        by_type["number"] += by_type.pop("integer")
    schemas = [_infer_one(t, vs) for t, vs in by_type.items()]
    if len(schemas) == 1:
        return schemas[0]
    if all(set(s) == {"type"} for s in schemas):
        return {"type": [s["type"] for s in schemas]}
    return {"anyOf": schemas}


def _infer_one(kind: str, values: list) -> dict:
    if kind == "object":
        keys: dict[str, list] = {}
        for v in values:
            for k, x in v.items():
                keys.setdefault(k, []).append(x)
        required = [k for k, xs in keys.items() if len(xs) == len(values)]
        schema = {"type": "object", "properties": {k: infer_schema(xs) for k, xs in keys.items()}}
        if required:
            schema["required"] = required
        return schema | {"additionalProperties": False}
    if kind == "array":
        items = [x for v in values for x in v]
        return {"type": "array", "items": infer_schema(items)} if items else {"type": "array"}
    if kind == "string":
        counts = Counter(values)
        few = len(counts) <= ENUM_MAX_VALUES and max(map(len, counts)) <= ENUM_MAX_LEN
        if few and len(values) >= max(ENUM_MIN_COUNT, ENUM_MIN_REPEATS * len(counts)):
            return {"type": "string", "enum": sorted(counts)}
    return {"type": kind}


# --- copy fields --------------------------------------------------------------------------------------------------
def string_leaves(value, prefix: str = "$") -> list[tuple[str, str]]:
    """(JSON path, value) for every string in an answer."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in string_leaves(v, f"{prefix}.{k}")]
    if isinstance(value, list):
        return [leaf for v in value for leaf in string_leaves(v, f"{prefix}[]")]
    return [(prefix, value)] if isinstance(value, str) else []


def _pieces(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _PIECE.finditer(text)]


def is_span(value: str, text: str) -> bool:
    """Whether `value` is a span of `text` on piece boundaries (what the copy constraint lets the model write)."""
    if not value:
        return True
    starts = {s for s, _ in _pieces(text)}
    ends = {e for _, e in _pieces(text)}
    at = text.find(value)
    while at >= 0:
        if at in starts and at + len(value) in ends:
            return True
        at = text.find(value, at + 1)
    return False


def copy_shares(pairs: list[tuple[str, object]]) -> dict[str, tuple[int, int, int]]:
    """For each string field of (input, parsed answer) pairs: (values that are spans of their input, values, most
    pieces in one value). A field whose values are all spans is a copy field candidate."""
    stats: dict[str, list[int]] = {}
    for text, answer in pairs:
        for path, value in string_leaves(answer):
            s = stats.setdefault(path, [0, 0, 0])
            s[1] += 1
            if is_span(value, text):
                s[0] += 1
                s[2] = max(s[2], len(_pieces(value)))
    return {p: (a, n, m) for p, (a, n, m) in stats.items()}


def suggested_copy_fields(pairs: list[tuple[str, object]], min_values: int = 20) -> list[str]:
    return [p for p, (spans, n, _) in copy_shares(pairs).items() if n >= min_values and spans >= COPY_SHARE * n]


def input_spans(text: str, max_pieces: int = COPY_MAX_SPAN) -> list[str]:
    """Every span of `text` of 1 to `max_pieces` pieces, as written in the text (its own spacing kept)."""
    pieces = _pieces(text)
    spans = {text[pieces[i][0] : pieces[j][1]] for i in range(len(pieces))
             for j in range(i, min(i + max_pieces, len(pieces)))}  # fmt: skip
    return sorted(spans)


def _with_copy(schema: dict, path: str, spans: list[str]) -> dict:
    """`schema` with the plain string field at `path` restricted to `spans` (a field with an enum keeps it)."""
    node = schema
    for part in re.findall(r"\.[^.\[]+|\[\]", path[1:]):
        if part == "[]":
            node = node.setdefault("items", {})
        else:
            node = node.setdefault("properties", {}).setdefault(part[1:], {})
    if node.get("type", "string") == "string" and not {"enum", "const", "anyOf", "oneOf"} & node.keys():
        node.clear()
        node |= {"type": "string", "enum": spans}
    return schema


# --- the engine -----------------------------------------------------------------------------------------------------
_TOKENIZERS: dict[tuple, tuple] = {}


def _ll_tokenizer(tokenizer, stop_ids: list[int], vocab_size: int):
    """llguidance's view of a tokenizer, built once per tokenizer (~0.6 s for a 49k vocabulary)."""
    import llguidance.hf

    key = (id(tokenizer), tuple(stop_ids), vocab_size)
    if key not in _TOKENIZERS:  # the tokenizer is kept in the value, so its id cannot be reused while cached
        _TOKENIZERS[key] = (tokenizer, llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=stop_ids))
    return _TOKENIZERS[key][1]


def vocab_size(model) -> int:
    """Width of the model's logits (it may exceed the tokenizer's vocabulary: padded embedding tables)."""
    out = model.get_output_embeddings()
    return int(out.weight.shape[0]) if out is not None else int(model.config.vocab_size)


class Constraint:
    """A task's JSON Schema (or any JSON when it has none), compiled once for a tokenizer; `processor(inputs)` gives
    the logits processor for one batch of requests.

    `copy_fields`: JSON paths of string fields whose value must be a span of the request's input; the span lists
    differ per request, so those grammars are built per request (a few ms each)."""

    def __init__(self, tokenizer, stop_ids: list[int], vocab_size: int, schema: dict | None = None, *,
                 copy_fields: list[str] = (), max_span: int = COPY_MAX_SPAN, where: str = "output.schema",
                 labels: list[str] | None = None):  # fmt: skip
        self.schema = schema if schema else {}
        self.labels = list(labels) if labels else None  # a label task's answers: exactly one of these, no JSON
        self.copy_fields = list(copy_fields)
        self.max_span = max_span
        self.where = where
        self.stop_ids = list(stop_ids)
        self.hf_tokenizer = tokenizer
        # The tokenizer wrapper costs ~1 s to build; one per Constraint, shared by all its requests.
        self.tok = _ll_tokenizer(tokenizer, self.stop_ids, vocab_size)
        self.vocab_size = vocab_size
        self.grammar = self.compile_labels(self.labels) if self.labels else self.compile(self.schema)

    def compile(self, schema: dict, where: str | None = None) -> str:
        """The llguidance grammar for `schema`; a schema it cannot compile is a ConfigError that names it."""
        import llguidance

        # Compact, one-line JSON with the separators tasktune trains on (data.answer_text): the tuned model's own
        # habits agree with the constraint, and no freedom is left for runs of whitespace.
        options = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)
        except ValueError as e:
            raise ConfigError(f"{where or self.where}: not a JSON Schema object ({e})", "fix the schema") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tok)
        if is_error:
            raise ConfigError(
                f"{where or self.where}: the constrained decoder cannot use this schema: {messages[0]}",
                "remove or rewrite the keyword it names, or turn the constraint off (--no-constrain)",
            )
        return grammar

    def compile_labels(self, labels: list[str]) -> str:
        """A grammar whose only sentences are the labels, verbatim."""
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(x) for x in labels))
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tok)
        if is_error:
            raise ConfigError(f"the task's labels cannot be decoded as a choice: {messages[0]}", "use --no-constrain")
        return grammar

    @cached_property
    def _template(self):
        import llguidance

        return llguidance.LLMatcher(self.tok, self.grammar)

    def matcher(self, input_text: str = ""):
        import llguidance

        if not self.copy_fields or self.labels:
            return self._template.deep_copy()  # one compiled grammar for every request
        schema = copy.deepcopy(self.schema)
        spans = input_spans(input_text, self.max_span)
        for path in self.copy_fields:
            schema = _with_copy(schema, path, spans)
        return llguidance.LLMatcher(self.tok, self.compile(schema))

    @cached_property
    def closer(self) -> Closer:
        return Closer(self.hf_tokenizer, self.vocab_size, self.stop_ids)

    def budget(self, cap: int) -> int | None:
        """The answer cap the closer must finish within; None for labels, which end within it by construction."""
        return None if self.labels else cap

    def processor(self, inputs: list[str], cap: int | None = None) -> ConstrainedLogits:
        """The logits processor for one batch: a grammar state per request; `cap`, the answer cap, lets an answer
        that runs on finish as valid JSON before it instead of being cut."""
        budgets = [self.budget(cap) if cap is not None else None] * len(inputs)
        return ConstrainedLogits([self.matcher(t) for t in inputs], self.vocab_size, self.stop_ids, budgets=budgets,
                                 closer=self.closer if any(budgets) else None)  # fmt: skip

    def to_json(self) -> dict:
        return {"schema": self.schema, "copy_fields": self.copy_fields, "labels": self.labels}


def string_state(state: tuple[bool, bool], text: str) -> tuple[bool, bool]:
    """(inside a JSON string, after a backslash there) once `text` follows `state`."""
    inside, escaped = state
    for ch in text:
        if not inside:
            inside = ch == '"'
        elif escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            inside = False
    return inside, escaped


class Closer:
    """Finishes a JSON answer in as few tokens as it can: the way out when the answer cap is near.

    A schema-valid answer must be complete, but a tuned model can run on (a number's digits, an ever longer list)
    until the answer cap cuts it, and a cut answer parses as nothing. Near the cap, the decoder therefore checks at
    each token whether the model's choice still leaves room to finish; if not, it writes the shortest way out
    instead. The way out is found greedily on a copy of the grammar state: end the answer where the grammar allows
    it; inside a string, close it (`"`, or `"}` and the like, longest first); outside, close arrays and objects
    (`]`, `}`), else a separator towards a required key that is still missing, the shortest value (`"`, `0`, `[`,
    `{`), or else the shortest token the grammar allows. No engine offers this (vLLM, SGLang and llama.cpp cut the
    answer), so it is written here, on llguidance's own masks.
    """

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        texts = tokenizer.batch_decode([[i] for i in range(min(len(tokenizer), vocab_size))])
        self.texts = texts + [""] * (vocab_size - len(texts))
        self.stop = stop_ids[0]
        self.vocab_size = vocab_size
        lengths = np.array([len(t) if t else 1 << 20 for t in self.texts], dtype=np.int64)  # empty ones last
        lengths[list(stop_ids)] = 1 << 20
        self.lengths = lengths

        def ids(keep) -> list[int]:
            return sorted((i for i, t in enumerate(texts) if t and keep(t) and i not in stop_ids),
                          key=lambda i: (-len(texts[i]), i))  # fmt: skip

        # inside a string: a quote, and after it only closing brackets
        self.in_string = ids(lambda t: t[0] == '"' and set(t[1:]) <= set("]}"))
        self.outside = (ids(lambda t: set(t) <= set("]}")) + ids(lambda t: t.strip() == ",")
                        + [i for v in ('"', "0", "[", "{") for i in ids(lambda t, v=v: t == v)])  # fmt: skip

    def allowed(self, matcher) -> np.ndarray:
        bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self.vocab_size].astype(bool)

    def pick(self, matcher, state: tuple[bool, bool]) -> int:
        """The next token of the shortest way out from `matcher`'s state (`state`: see `string_state`)."""
        if matcher.is_stopped() or matcher.is_accepting():
            return self.stop
        allowed = self.allowed(matcher)
        for i in self.in_string if state[0] else self.outside:
            if allowed[i]:
                return i
        return int(np.where(allowed, self.lengths, 1 << 30).argmin())

    def path(self, matcher, state: tuple[bool, bool], limit: int) -> list[int] | None:
        """The tokens of the way out before the stop token, or None when it needs more than `limit`."""
        m = matcher.deep_copy()
        out: list[int] = []
        while not (m.is_stopped() or m.is_accepting()):
            if len(out) >= limit:
                return None
            token = self.pick(m, state)
            if token == self.stop or not m.consume_token(token):
                return None
            state = string_state(state, self.texts[token])
            out.append(token)
        return out


class ConstrainedLogits:
    """A transformers LogitsProcessor: before each new token, the logits of the tokens that would break a row's
    grammar go to -inf. It reads the token chosen at the previous step from `input_ids`, so it works for greedy and
    sampled decoding alike, with or without a prompt in `input_ids` (prompt-tuned models pass embeddings only).

    `budgets` (each row's answer cap) with a `closer`: within CLOSE_HORIZON tokens of its cap, a row whose model
    choice would leave too few tokens to finish the JSON takes the closer's way out instead, so a greedy answer
    always ends complete (a sampled one may still draw a token that needs more room than is left)."""

    CLOSE_HORIZON = 64

    def __init__(self, matchers: list, vocab_size: int, stop_ids: list[int], *,
                 budgets: list[int | None] | None = None, closer: Closer | None = None):  # fmt: skip
        import llguidance
        import torch

        self.matchers = matchers
        self.vocab_size = vocab_size
        self.stop_ids = list(stop_ids)
        self.start: int | None = None  # input_ids length at the first call: the prompt
        self.done = [m is None for m in matchers]  # None: a row decoded freely (a server batch mixes both)
        self.errors: list[str | None] = [None] * len(matchers)
        self.budgets = list(budgets) if budgets is not None and closer is not None else [None] * len(matchers)
        self.closer = closer
        self.states = [(False, False)] * len(matchers)  # per row: inside a JSON string, after a backslash
        self.executor = llguidance.LLExecutor(num_threads=1)  # the model's forward pass already has the cores
        self.bitmask = torch.full((len(matchers), (vocab_size + 31) // 32), -1, dtype=torch.int32)

    def __call__(self, input_ids, scores):
        import torch

        if self.start is None:
            self.start = input_ids.shape[1]
        else:
            for row, m in enumerate(self.matchers):
                if self.done[row]:
                    continue
                token = int(input_ids[row, -1])
                if token in self.stop_ids or not m.consume_token(token):
                    self.done[row] = True  # the answer ended; or, never expected, the engine failed on it
                    self.errors[row] = m.get_error() if m.is_error() else None
                elif self.closer is not None:
                    self.states[row] = string_state(self.states[row], self.closer.texts[token])
        self.bitmask.fill_(-1)  # finished rows allow everything: generate() pads them anyway
        live = [(m, row) for row, m in enumerate(self.matchers) if not self.done[row]]
        if live:
            import llguidance.torch

            llguidance.torch.fill_next_token_bitmask_par(self.executor, live, self.bitmask)
        allowed = np.unpackbits(self.bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, : scores.shape[1]]
        allowed = torch.from_numpy(allowed.astype(bool))
        if allowed.shape[1] < scores.shape[1]:  # logits wider than the tokenizer's vocabulary: padding ids
            allowed = torch.nn.functional.pad(allowed, (0, scores.shape[1] - allowed.shape[1]), value=False)
        step = input_ids.shape[1] - self.start  # tokens generated so far; this call chooses the next one
        for m, row in live:
            if m.is_stopped():  # the value is complete: the answer ends here, on the template's stop token
                allowed[row] = False
                allowed[row, self.stop_ids] = True
            elif self.budgets[row] is not None and self.budgets[row] - step <= self.CLOSE_HORIZON:
                forced = self._way_out(m, self.states[row], self.budgets[row] - step, scores[row], allowed[row])
                if forced is not None:
                    allowed[row] = False
                    allowed[row, forced] = True
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))

    def _way_out(self, m, state, left: int, scores, allowed) -> int | None:
        """The closer's next token when the model's own choice would leave too few of the `left` tokens (this one
        and the stop token included) to finish the answer; None when the model may choose."""
        path = self.closer.path(m, state, limit=left - 1)
        if path is None:  # too late to finish within the cap: finish as soon as possible all the same
            return self.closer.pick(m, state)
        choice = int(scores.float().masked_fill(~allowed.to(scores.device), float("-inf")).argmax())
        if choice in self.stop_ids:
            return None
        after = m.deep_copy()
        after_state = string_state(state, self.closer.texts[choice])
        if after.consume_token(choice) and self.closer.path(after, after_state, limit=left - 2) is not None:
            return None
        return path[0] if path else self.stop_ids[0]


def task_schema(task, examples: list | None = None) -> tuple[dict | None, str]:
    """The schema a JSON task's answers are decoded under, and where it came from: the task's own, else the one its
    training answers follow (`examples`, read from data.train when not given). (None, "") for text tasks."""
    if task.output.kind != "json":
        return None, ""
    schema = task.json_schema()
    if schema is not None:
        return schema, "task"
    values = []
    for ex in _training_examples(task) if examples is None else examples:
        try:
            values.append(json.loads(ex.answer))
        except (json.JSONDecodeError, TypeError):
            continue  # `tasktune check` reports these rows; they say nothing about the schema
    return infer_schema(values), f"inferred from {len(values)} training answers"


def _training_examples(task) -> list:
    from tasktune.data import read_examples

    path = task.data_path("train")
    return read_examples(path) if path is not None and path.is_file() else []


def task_labels(task, examples: list | None = None) -> list[str] | None:
    """A text task whose training answers are a closed set of short labels (task_metrics.is_label_task, at least 20
    answers): the labels, sorted, which its answers are then decoded under, so that a tuned model answers with a
    label it was taught and never a near miss. None for JSON tasks and free text."""
    from tasktune.task_metrics import is_label_task

    if task.output.kind != "text":
        return None
    answers = [ex.answer for ex in (_training_examples(task) if examples is None else examples)]
    if len(answers) < 20 or not is_label_task(answers):  # is_label_task bounds them: at most 200 labels
        return None
    return sorted(set(answers))
