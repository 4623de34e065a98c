"""Read training and inference rows from JSONL or CSV into one shape: a list of chat messages.

Accepted row shapes (the same ones TRL and the OpenAI fine-tuning API take):
  {"input": ..., "output": ...}            output may be a JSON object/array (kept as compact JSON text)
  {"messages": [{"role": ..., "content": ...}, ...]}
  {"prompt": ..., "completion": ...}       each a string, or a list of messages
Other keys (ids, metadata) are kept aside and ignored.

Read with the standard library rather than `datasets`: every error must name the file and line, and a bad row must
not abort the read of the rows after it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tasktune.errors import DataError

ROLES = ("system", "user", "assistant")
MAX_ERRORS_SHOWN = 10


@dataclass
class Example:
    """One row: `messages` ends with the assistant answer when the row has one."""

    messages: list[dict[str, str]]
    source: str = "<memory>"
    line: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def has_answer(self) -> bool:
        return bool(self.messages) and self.messages[-1]["role"] == "assistant"

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        return self.messages[:-1] if self.has_answer else self.messages

    @property
    def answer(self) -> str | None:
        return self.messages[-1]["content"] if self.has_answer else None

    @property
    def input_text(self) -> str:
        """The last user turn: what a client sends as the bare input."""
        users = [m["content"] for m in self.prompt_messages if m["role"] == "user"]
        return users[-1] if users else ""

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


class RowError(ValueError):
    """A row-level problem; the reader attaches file and line. `code` is a stable id (`tasktune check` reports it)."""

    def __init__(self, message: str, code: str = "wrong-type"):
        super().__init__(message)
        self.code = code


def answer_text(value) -> str:
    """An answer as text: strings as they are, JSON values as compact JSON (what the model learns to emit)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def row_to_messages(row: dict, *, require_answer: bool) -> list[dict[str, str]]:
    """Normalise one parsed row into chat messages, or raise RowError saying what is wrong and what is expected."""
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}", "wrong-type")
    if "messages" in row:
        messages = _check_messages(row["messages"], "messages")
    elif "input" in row:
        messages = [{"role": "user", "content": _text(row["input"], "input")}]
        if "output" in row and row["output"] is not None:
            messages.append({"role": "assistant", "content": _answer(row["output"], "output")})
    elif "prompt" in row:
        p = row["prompt"]
        messages = (
            _check_messages(p, "prompt") if isinstance(p, list) else [{"role": "user", "content": _text(p, "prompt")}]
        )
        c = row.get("completion")
        if isinstance(c, list):
            messages += _check_messages(c, "completion")
        elif c is not None:
            messages.append({"role": "assistant", "content": _answer(c, "completion")})
    else:
        keys = ", ".join(sorted(row)) or "none"
        raise RowError(f"no 'input', 'messages' or 'prompt' field (row has: {keys})", "missing-field")
    if require_answer:
        if not messages or messages[-1]["role"] != "assistant":
            code = "no-assistant-turn" if "messages" in row or isinstance(row.get("prompt"), list) else "missing-answer"
            raise RowError("no answer: add 'output' (or 'completion', or a final assistant message)", code)
        if not messages[-1]["content"].strip():
            raise RowError("the answer is empty", "empty-field")
    if not any(m["role"] == "user" for m in messages):
        raise RowError("no user turn", "no-user-turn")
    return messages


def _text(value, name: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"field '{name}' must be a string, got {type(value).__name__}", "wrong-type")
    if not value.strip():
        raise RowError(f"field '{name}' is empty", "empty-field")
    return value


def _answer(value, name: str) -> str:
    if isinstance(value, (dict, list)):
        return answer_text(value)
    if isinstance(value, (int, float, bool)):
        return json.dumps(value)
    return _text(value, name)


def _check_messages(value, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        code = "empty-field" if isinstance(value, list) else "wrong-type"
        raise RowError(f"field '{name}' must be a non-empty list of {{role, content}} objects", code)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"{name}[{i}] must be an object with 'role' and 'content'", "wrong-type")
        if m["role"] not in ROLES:
            raise RowError(f"{name}[{i}]: unknown role {m['role']!r} (allowed: {', '.join(ROLES)})", "unknown-role")
        content = m["content"]
        if m["role"] == "assistant" and isinstance(content, (dict, list)):
            content = answer_text(content)
        if not isinstance(content, str):
            raise RowError(f"{name}[{i}].content must be a string, got {type(content).__name__}", "wrong-type")
        out.append({"role": m["role"], "content": content})
    return out


# Undecodable bytes become lone surrogates (U+DC80..U+DCFF) under "surrogateescape": the rest of the file stays
# readable, each bad line is reported on its own, and `tasktune check --fix` can copy good lines byte for byte.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def open_rows(path: str | Path):
    """Open a data file as text for reading rows; `iter_raw_rows` and `tasktune check --fix` number lines alike."""
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark that some editors write is not part of the first row (or CSV header)
        return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")  # the caller closes it
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}", "check the data file path") from None


def _not_utf8(text: str) -> RowError | None:
    bad = _NOT_UTF8.search(text)
    if bad is None:
        return None
    return RowError(f"bytes that are not UTF-8 at column {bad.start() + 1}: re-save the file as UTF-8", "non-utf8")


def iter_raw_rows(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed row or RowError) for every row; never stops at a bad one."""
    path = Path(path)
    with open_rows(path) as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            for row in reader:
                values = [v for v in row.values() if isinstance(v, str)]
                err = next(filter(None, map(_not_utf8, values)), None)
                yield reader.line_num, err or {k: v for k, v in row.items() if k is not None}
            return
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            err = _not_utf8(line)
            if err is not None:
                yield lineno, err
                continue
            try:
                yield lineno, json.loads(line.rstrip("\r\n"))  # so an unclosed string reads as unterminated
            except json.JSONDecodeError as e:
                yield lineno, RowError(f"not valid JSON ({e.msg} at column {e.colno})", "unreadable-line")


def iter_rows(path: str | Path, *, require_answer: bool = True) -> Iterator[tuple[int, Example | RowError]]:
    """Yield (line number, Example or RowError) for every row of a file: the one row parser of tasktune."""
    for lineno, row in iter_raw_rows(path):
        if isinstance(row, RowError):
            yield lineno, row
            continue
        try:
            yield lineno, Example(row_to_messages(row, require_answer=require_answer), str(path), lineno, row)
        except RowError as e:
            yield lineno, e


def read_examples(path: str | Path, *, require_answer: bool = True) -> list[Example]:
    """All rows of a file as Examples; any malformed row fails the read with every problem listed."""
    examples, errors = [], []
    for lineno, item in iter_rows(path, require_answer=require_answer):
        if isinstance(item, RowError):
            errors.append(f"{path}:{lineno}: {item}")
        else:
            examples.append(item)
    if errors:
        shown = "\n".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(
            f"{len(errors)} bad row(s) in {path}:\n{shown}{more}",
            'each line must be one JSON object like {"input": "...", "output": "..."}; '
            "`tasktune check` lists every problem",
        )
    if not examples:
        raise DataError(f"{path} has no rows", "add rows, one JSON object per line")
    return examples


def examples_from_inputs(inputs: list[str]) -> list[Example]:
    return [Example([{"role": "user", "content": s}], "<input>", i + 1) for i, s in enumerate(inputs)]
