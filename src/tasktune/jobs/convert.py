"""From OpenAI's job request to tasktune's: chat-format uploads into training rows, hyper-parameters into settings.

OpenAI's chat rows (`{"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}`) are rows tasktune
already reads (data.py); so are the legacy `{"prompt", "completion"}` rows. Converting an upload only undoes what
OpenAI allows and tasktune's reader does not: content given as a list of text parts, a per-message `weight` of 1
(every assistant turn is trained; 0 is refused) and the `name` key. Every line keeps its number, so the data
check's findings name the line of the upload.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from tasktune.config import TaskConfig, TrainConfig
from tasktune.data import RowError, row_to_messages
from tasktune.recipe import LORA_LEARNING_RATE

MAX_LINES_NAMED = 5  # bad lines listed in a job's error; the rest are counted
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # undecodable bytes, as errors="surrogateescape" reads them
UNSUPPORTED_KEYS = ("tools", "functions", "parallel_tool_calls")
UNSUPPORTED_MESSAGE_KEYS = ("tool_calls", "function_call", "tool_call_id")


class JobError(Exception):
    """Why a job failed, in OpenAI's `error` shape: a stable code, a message that names the line, the parameter."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param}


def _plain_messages(row: dict) -> dict:
    """`row` with OpenAI-only message features undone, or RowError for those tasktune cannot train on."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
        return row  # not a chat row: the reader judges it as it is
    if bad := [k for k in UNSUPPORTED_KEYS if k in row]:
        raise RowError(f"'{bad[0]}': tool and function calling rows are not supported; train on plain chat rows")
    messages = []
    for i, m in enumerate(row["messages"]):
        if not isinstance(m, dict):
            messages.append(m)
            continue
        if bad := [k for k in UNSUPPORTED_MESSAGE_KEYS if k in m]:
            raise RowError(f"messages[{i}].{bad[0]}: tool calls are not supported; train on plain chat rows")
        if m.get("weight", 1) != 1:  # tasktune trains every assistant turn: dropping a weight 0 would train it
            raise RowError(f"messages[{i}].weight: {m['weight']!r}: tasktune trains every assistant turn;"
                           " remove the turn (or make it context in a user message) instead")  # fmt: skip
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise RowError(f"messages[{i}].content: only text parts are supported (no images or audio)")
            content = "".join(str(p.get("text", "")) for p in content)
        messages.append({"role": m.get("role"), "content": content})
    return {"messages": messages}


def convert_upload(src: Path, dst: Path, *, file_id: str, param: str) -> int:
    """Write the rows of upload `src` to `dst` as tasktune chat rows, line for line; returns the number of rows.
    Raises JobError naming the first bad lines (and how many there are) when any row is unusable."""
    problems: list[str] = []
    n_bad = rows = 0
    out = []
    with open(src, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                out.append("\n")
                continue
            try:
                if NOT_UTF8.search(line):
                    raise RowError("bytes that are not UTF-8: re-save the file as UTF-8")
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RowError(f"not valid JSON ({e.msg} at column {e.colno})") from None
                messages = row_to_messages(_plain_messages(row), require_answer=True)
            except RowError as e:
                n_bad += 1
                if len(problems) < MAX_LINES_NAMED:
                    problems.append(f"line {lineno}: {e}")
                out.append("\n")
                continue
            rows += 1
            out.append(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    if n_bad:
        more = f" (and {n_bad - len(problems)} more bad lines)" if n_bad > len(problems) else ""
        raise JobError(
            f"invalid_{param}",
            f"{param} {file_id} has {n_bad} unusable row(s): {'; '.join(problems)}{more}. Each line must be one JSON"
            ' object like {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]};'
            " fix the lines, upload the file again and create a new job",
            param,
        )
    if rows == 0:
        raise JobError(f"invalid_{param}", f"{param} {file_id} has no rows; upload a JSONL file of chat rows", param)
    dst.parent.mkdir(parents=True, exist_ok=True)
    from tasktune.fsio import atomic_write_text

    atomic_write_text(dst, "".join(out))
    return rows


def train_settings(hp: dict, *, model: str, seed: int, save_every: int) -> TrainConfig:
    """tasktune's training settings for OpenAI's hyper-parameters; "auto" (or absent) leaves a setting to tasktune's
    recipe, which chooses it from the data (tasktune.recipe)."""
    given: dict = {"model": model, "method": "lora", "seed": seed, "save_every": save_every, "keep_checkpoints": 3}
    if isinstance(hp.get("n_epochs"), int):
        # OpenAI trains exactly n_epochs: no time budget and no early stop (the best validated weights are still kept)
        given |= {"epochs": float(hp["n_epochs"]), "time_budget": None, "patience": 0}
    if isinstance(hp.get("batch_size"), int):
        given["batch_size"] = hp["batch_size"]
    if isinstance(hp.get("learning_rate_multiplier"), (int, float)):
        # the multiplier scales the rate the recipe would choose, as OpenAI's scales its own default
        given["learning_rate"] = hp["learning_rate_multiplier"] * LORA_LEARNING_RATE
    return TrainConfig(**given)


def resolved_hyperparameters(train: dict) -> dict:
    """OpenAI's hyper-parameters as the run resolved them (from its config.yaml's `train`)."""
    epochs = train.get("epochs")
    lr = train.get("learning_rate")
    return {
        "n_epochs": int(epochs) if isinstance(epochs, (int, float)) and float(epochs).is_integer() else epochs,
        "batch_size": train.get("batch_size"),
        "learning_rate_multiplier": None if lr is None else _round(lr / LORA_LEARNING_RATE),
    }


def _round(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else x


def job_task(name: str, train: Path, validation: Path | None) -> TaskConfig:
    """The task of a job: text answers, learnt from the chat rows as they are (their system turns included)."""
    data = {"train": str(train)} | ({"eval": str(validation)} if validation else {})
    return TaskConfig(name=name, output={"kind": "text"}, data=data)
