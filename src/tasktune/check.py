"""tasktune check: the dataset doctor. Reads every row of every split before any training and reports what would
hurt it, each problem with its file and line, a severity and a remedy.

    tasktune check DATA [DATA ...] [--task TASK.yaml] [--model M] [--max-length N] [--method lora|full]
                   [--show N] [--json FILE] [--fix OUT]

With `--task`, the task's data.train / data.eval / data.test are checked (DATA, if given, replaces them: the first
file is the training split, the others are held-out splits). Exit code 0 without errors, 1 with errors, 2 for bad
usage. `tasktune train` runs the same check first and refuses to start on errors unless `--force`.

What it looks at, per row and then per split (codes in RULES):
  format      unreadable lines, non-UTF-8 bytes, missing/empty/mistyped fields, unknown roles, no assistant turn
  labels      answers that are not JSON or break the task's schema (with the JSON path), skewed categorical fields,
              the same input with different answers
  duplicates  exact and near duplicates (MinHash, Jaccard >= 0.9 on word 5-shingles) within a split, and held-out
              rows that leak into train
  lengths     prompt / answer tokens with the model's own tokenizer, rows that max_length would cut, supervised share
  template    chat-template control tokens inside content, answers that would not end at the stop token
  size        too few rows for the method, held-out split too small to measure a difference
  privacy     e-mail addresses, phone numbers, API keys, card numbers (masked; never printed in full)

Memory stays bounded: a row's texts are dropped once its batch is processed; what is kept per row is two 8-byte
digests, a line number, two token counts, a 256-byte MinHash signature and its 40 bytes of band keys (~330 bytes).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tasktune.config import DEFAULT_MODEL, TaskConfig, TrainConfig
from tasktune.data import Example, RowError, iter_rows, open_rows
from tasktune.dedup import MinHasher, cross_pairs, digest, first_with_same_key, near_pairs, normalise
from tasktune.errors import ConfigError, DataError, TaskTuneError
from tasktune.pii import scan as scan_pii
from tasktune.render import ChatFormat

SEVERITIES = ("error", "warning", "info")
MAX_SCHEMA_ROWS = 20_000  # training answers kept for the schema and copy-field findings (they settle long before)
BATCH_ROWS = 512  # rows tokenized and MinHashed together; bounds the texts held at once


@dataclass(frozen=True)
class Rule:
    severity: str
    title: str
    remedy: str
    drops: bool = False  # `--fix` drops the rows this finding locates


FIX = "; `tasktune check --fix OUT` drops it"
RULES: dict[str, Rule] = {
    # format: rows that cannot be trained on at all
    "unreadable-line": Rule("error", "lines that are not valid JSON", "repair or delete the line" + FIX, True),
    "non-utf8": Rule("error", "bytes that are not UTF-8", "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
                     + FIX, True),
    "wrong-type": Rule("error", "fields of the wrong type", "rows are JSON objects; input/output are strings (a JSON "
                       "output may be an object); messages are lists of {role, content} strings" + FIX, True),
    "missing-field": Rule("error", "rows without an input", 'give each row "input" and "output" (or "messages", or '
                          '"prompt" and "completion")' + FIX, True),
    "missing-answer": Rule("error", "rows without an answer", 'add the expected answer as "output" (or "completion")'
                           + FIX, True),
    "empty-field": Rule("error", "empty inputs or answers", "fill in the field or delete the row" + FIX, True),
    "unknown-role": Rule("error", "messages with an unknown role", "use the roles system, user and assistant" + FIX,
                         True),
    "no-assistant-turn": Rule("error", "conversations without a final assistant turn", "end each conversation with "
                              "the assistant message the model should learn" + FIX, True),
    "no-user-turn": Rule("error", "conversations without a user turn", "add the user message that the answer "
                         "responds to" + FIX, True),
    "empty-split": Rule("error", "a split without a usable row", "add rows, one JSON object per line"),
    # labels
    "invalid-json-answer": Rule("error", "answers that are not valid JSON (the task's output.kind is json)",
                                "fix the answer's JSON (or set output.kind: text)" + FIX, True),
    "schema-violation": Rule("error", "answers that break the task's JSON schema", "correct the field named by the "
                             "JSON path, or widen the schema if the value is right" + FIX, True),
    "conflicting-answers": Rule("warning", "the same input with different answers", "decide which answer is right and "
                                "correct the others: contradictory labels teach noise; --fix drops every row of a "
                                "conflicting input", True),
    "skewed-labels": Rule("warning", "a categorical field dominated by one value", "add rows with the rare values (or "
                          "down-sample the common one): a model that always answers the majority value scores well "
                          "on this data and learns little else"),
    "label-distribution": Rule("info", "distribution of categorical answer fields", "compare with the distribution "
                               "you expect in production"),
    "inferred-schema": Rule("info", "the JSON Schema the training answers follow (the task has none)", "answers are "
                            "decoded under it; `--fix OUT` writes it as OUT/schema.json for you to edit, and OUT/"
                            "task.yaml points at it"),
    "copy-fields": Rule("info", "string fields whose values are copied from the input", "set output.copy_fields to "
                        "these paths in the task file: decoding then writes only spans of the request's input there, "
                        "so a misspelt or invented value cannot come out"),
    # duplicates and leakage
    "duplicate-exact": Rule("warning", "rows that repeat an earlier row", "delete the repeats: each copy adds weight "
                            "to one case; --fix keeps the first", True),
    "duplicate-near": Rule("warning", "rows nearly identical to an earlier row", "delete or vary them; --fix keeps "
                           "the first", True),
    "leak-exact": Rule("error", "held-out rows whose input is also in train", "remove those rows from train (the "
                       "held-out split stays as it is): a model scored on inputs it trained on looks better than it "
                       "is; --fix drops the train copies"),
    "leak-near": Rule("warning", "held-out rows nearly identical to a train row", "remove the near copies from train; "
                      "--fix drops them"),
    # lengths
    "too-long": Rule("warning", "rows longer than max_length", "tasktune train skips these rows (cutting one would cut "
                     "its answer and its EOS); raise --max-length or shorten the inputs"),
    "lengths": Rule("info", "token lengths (model's tokenizer)", "choose --max-length above the longest row you "
                    "want to keep"),
    # template safety
    "control-token": Rule("error", "chat-template control tokens inside content", "remove or escape the token text "
                          "(e.g. write `< |im_start| >`): inside content it is read as a real control token and "
                          "breaks the turn structure" + FIX, True),
    "special-token": Rule("warning", "the tokenizer's special tokens inside content", "remove the token text unless "
                          "the model should see that special token there"),
    "early-eos": Rule("error", "answers containing the stop token before their end", "remove the stop-token text "
                      "from the answer: the model learns to stop there and every later token is lost" + FIX, True),
    "template-mismatch": Rule("error", "rows the chat template renders differently from the training encoding",
                              "keep answers free of what the template rewrites (e.g. leading/trailing whitespace it "
                              "trims), or use single-turn rows" + FIX, True),
    "eos-mismatch": Rule("warning", "answers end with a token that is not the model's EOS", "tasktune stops on both; "
                         "other runtimes stop only at EOS: set the EOS (generation_config.eos_token_id) to the "
                         "end-of-turn token when you export"),
    # size
    "too-few-rows": Rule("warning", "too few training rows for the method", "add rows (or use --method lora)"),
    "eval-too-small": Rule("warning", "held-out split too small to measure the difference you need", "add held-out "
                           "rows (the arithmetic is in the message)"),
    "eval-size": Rule("info", "what the held-out split can measure", "-"),
    # privacy (regex scans; see pii.py)
    "pii-email": Rule("warning", "e-mail addresses", "remove or pseudonymise them (a model can repeat training text)"),
    "pii-phone": Rule("warning", "phone numbers", "remove or pseudonymise them (a model can repeat training text)"),
    "pii-api-key": Rule("warning", "API keys or secrets", "remove them and revoke the keys: anything in training "
                        "data can come back out of the model"),
    "pii-card": Rule("warning", "payment card numbers (Luhn-valid)", "remove them: card numbers must not be stored "
                     "in training data (PCI DSS)"),
}  # fmt: skip

# Rows a method needs before a fine-tune is more than noise. LoRA: OpenAI's fine-tuning guide sees clear gains from
# 50-100 examples. Full: every weight moves, so a few hundred rows are memorised and general ability is lost.
MIN_ROWS = {"lora": 50, "full": 500}


@dataclass
class CheckConfig:
    """How the check reads the data; `for_training` takes the same values train would use."""

    model: str = DEFAULT_MODEL  # tokenizer of this base model counts the tokens
    max_length: int = 1024  # rows longer than this are skipped by train
    method: str = "lora"  # sets the minimum row count
    instruction: str | None = None  # rendered in front of each row (task.train_with_instruction)
    system_prompt: str | None = None  # the run's own system turn (train.system_prompt); None: the template's
    near_duplicate_threshold: float = 0.9  # Jaccard similarity on word shingles; templated data stays below ~0.6
    shingle_words: int = 5
    min_difference: float = 0.10  # the accuracy difference a held-out split must be able to resolve
    skew_threshold: float = 0.9  # share of the top value that makes a categorical field "skewed"
    duplicate_warning_share: float = 0.01  # duplicates below this share of a split are info, above it a warning
    max_locations: int = 5  # locations kept per finding

    @classmethod
    def for_training(cls, task: TaskConfig, cfg: TrainConfig) -> CheckConfig:
        return cls(model=cfg.model, max_length=cfg.max_length, method=cfg.method, system_prompt=cfg.system_prompt,
                   instruction=task.instruction if task.train_with_instruction else None)  # fmt: skip


@dataclass
class Location:
    file: str
    line: int
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Finding:
    code: str
    severity: str
    message: str
    remedy: str
    split: str | None = None
    count: int = 0
    locations: list[Location] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)


@dataclass
class CheckReport:
    """Every finding, and per split its row counts and token-length figures. `drops` drives `write_fixed`."""

    model: str
    max_length: int
    method: str
    answer_kind: str
    splits: dict[str, dict]
    findings: list[Finding]
    seconds: float = 0.0
    drops: dict[str, dict[int, tuple[str, str]]] = field(default_factory=dict, repr=False)
    inferred_schema: dict | None = None  # JSON tasks without a schema: what the training answers follow

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def codes(self, severity: str | None = None) -> set[str]:
        return {f.code for f in self.findings if severity is None or f.severity == severity}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("drops")
        d["summary"] = {s: self.count(s) for s in SEVERITIES}
        d["rows_to_drop"] = {s: len(lines) for s, lines in self.drops.items()}
        return d

    def format(self, *, details: int = 3) -> str:
        return format_report(self, details=details)


# --- the scan -----------------------------------------------------------------------------------------------------
class _Findings:
    def __init__(self, cfg: CheckConfig):
        self.cfg = cfg
        self.items: dict[tuple[str, str | None], Finding] = {}
        self.drops: dict[str, dict[int, tuple[str, str]]] = {}

    def get(self, code: str, split: str | None, message: str = "") -> Finding:
        key = (code, split)
        if key not in self.items:
            rule = RULES[code]
            self.items[key] = Finding(code, rule.severity, message or rule.title, rule.remedy, split)
        return self.items[key]

    def row(self, code: str, split: str, file: str, line: int, detail: str = "") -> None:
        f = self.get(code, split)
        f.count += 1
        if len(f.locations) < self.cfg.max_locations:
            f.locations.append(Location(file, line, detail))
        if RULES[code].drops:
            self.drop(split, line, code, detail)

    def drop(self, split: str, line: int, code: str, reason: str) -> None:
        self.drops.setdefault(split, {}).setdefault(line, (code, reason))


@dataclass
class _Pending:
    """A row waiting for the batched tokenizer and MinHash calls."""

    line: int
    prompt_text: str
    answer: str
    dedup_text: str
    encoded: tuple[int, int] | None = None  # (prompt, supervised) lengths when the row was encoded on its own


class _SplitScan:
    """What is kept of a split while its rows stream by: per row two digests, a line number, two token counts and a
    MinHash signature with its band keys (~330 bytes); the texts only while their batch is pending."""

    def __init__(self, name: str, path: Path):
        self.name, self.path, self.file = name, path, str(path)
        self.rows = self.valid = 0
        self.lines = array("q")
        self.prompt_digest = array("Q")
        self.answer_digest = array("Q")
        self.sig_parts: list[np.ndarray] = []
        self.key_parts: list[np.ndarray] = []
        self.sigs = self.keys = None  # concatenated when the split is finished
        self.prompt_len = array("i")
        self.answer_len = array("i")
        self.too_long = self.answer_lost = 0
        self.labels: dict[str, Counter | None] = {}  # None once a field proves not to be categorical
        self.pending: list[_Pending] = []


class _Checker:
    def __init__(self, tok, cfg: CheckConfig, task: TaskConfig | None):
        self.tok = tok
        self.fmt = ChatFormat(tok, cfg.system_prompt)
        self.cfg = cfg
        self.kind = task.output.kind if task is not None else None  # None: decided by the first answer
        self.schema = _SchemaCheck.for_task(task)
        self.free_text = set(task.output.free_text_fields) if task is not None else set()
        self.found = _Findings(cfg)
        self.stop_ids = set(self.fmt.stop_ids)
        self.control, self.other_special = _special_tokens(tok, self.fmt)
        self.render = _Renderer(self.fmt)
        self.hasher = MinHasher(cfg.near_duplicate_threshold, shingle_words=cfg.shingle_words)
        self.train: _SplitScan | None = None
        self.task = task
        self.pairs: list[tuple[str, object]] = []  # (input, parsed answer) of JSON training rows: schema, copy fields
        self.inferred_schema: dict | None = None

    # --- per row --------------------------------------------------------------------------------------------------
    def scan_split(self, name: str, path: Path) -> _SplitScan:
        s = _SplitScan(name, path)
        for line, item in iter_rows(path):
            s.rows += 1
            if isinstance(item, RowError):
                self.found.row(item.code, name, s.file, line, str(item))
                continue
            self.scan_row(s, line, item)
            if len(s.pending) >= BATCH_ROWS:
                self.flush(s)
        self.flush(s)
        return s

    def scan_row(self, s: _SplitScan, line: int, ex: Example) -> None:
        s.valid += 1
        single = sum(m["role"] == "assistant" for m in ex.messages) == 1
        self.check_content(s, line, ex, single)
        answer_key = self.check_answer(s, line, ex.answer)
        if self.kind == "json" and s.name == "train" and len(self.pairs) < MAX_SCHEMA_ROWS:
            with contextlib.suppress(json.JSONDecodeError):
                self.pairs.append((ex.input_text, json.loads(ex.answer)))
        prompt_key = "\x1f".join(f"{m['role']}\x1e{normalise(m['content'])}" for m in ex.prompt_messages)
        s.lines.append(line)
        s.prompt_digest.append(digest(prompt_key))
        s.answer_digest.append(digest(answer_key))
        messages = self.fmt.with_instruction(ex.messages, self.cfg.instruction)
        pending = _Pending(line, "", ex.answer, " ".join(m["content"] for m in ex.messages))
        try:
            if single:
                pending.prompt_text, full = self.render(messages)
                if not full.startswith(pending.prompt_text + ex.answer + self.fmt.end_text):
                    why = "the template changes the answer or what follows it (e.g. trims whitespace)"
                    self.found.row("template-mismatch", s.name, s.file, line, why)
            else:  # several assistant turns: encode on its own (rare; the batched path covers single answers)
                enc = self.fmt.encode_example(messages)
                pending.encoded = (len(enc.input_ids) - enc.n_supervised, enc.n_supervised)
        except Exception as e:  # jinja raises from inside a template, e.g. one that has no system role
            message = e.message if isinstance(e, TaskTuneError) else f"the chat template rejects the row: {e}"
            self.found.row("template-mismatch", s.name, s.file, line, _short(message, 160))
            pending.encoded = (0, 0)
        s.pending.append(pending)

    def check_content(self, s: _SplitScan, line: int, ex: Example, single_answer: bool) -> None:
        """Control tokens and personal data in each message. A stop token in a single answer is found on its token
        ids (flush); in a multi-turn row, here by its text (special tokens only ever come from their exact text)."""
        for m in ex.messages:
            text = m["content"]
            where = {"user": "input", "assistant": "answer", "system": "system message"}[m["role"]]
            if "<" in text:  # every special token of the tokenizers tasktune meets is written <...>; skip the regex
                for tok_text in dict.fromkeys(self.control.findall(text)):
                    stops = self.tok.convert_tokens_to_ids(tok_text) in self.stop_ids and m["role"] == "assistant"
                    if stops and single_answer:
                        continue
                    code = "early-eos" if stops else "control-token"
                    self.found.row(code, s.name, s.file, line, f"{tok_text} in the {where}")
                if self.other_special is not None:
                    for tok_text in dict.fromkeys(self.other_special.findall(text)):
                        self.found.row("special-token", s.name, s.file, line, f"{tok_text} in the {where}")
            for hit in scan_pii(text):
                self.found.row(f"pii-{hit.kind}", s.name, s.file, line, f"{hit.masked} in the {where}")

    def check_answer(self, s: _SplitScan, line: int, answer: str) -> str:
        """JSON and schema checks and label counts; returns the answer's comparison key."""
        if self.kind is None:
            self.kind = "json" if _json_container(answer) else "text"
        if self.kind != "json":
            if len(answer) > 40:
                s.labels["$"] = None  # free text, not a set of classes
            self.count_labels(s, {"$": normalise(answer)})
            return normalise(answer)
        try:
            value = json.loads(answer)
        except json.JSONDecodeError as e:
            self.found.row("invalid-json-answer", s.name, s.file, line, f"{e.msg} at column {e.colno}")
            return normalise(answer)
        if self.schema is not None:
            err = self.schema.first_error(value)
            if err is not None:
                path = _json_path(err.absolute_path)
                f = self.found.get("schema-violation", s.name)
                f.evidence.setdefault("paths", Counter())[re.sub(r"\[\d+\]", "[]", path)] += 1
                self.found.row("schema-violation", s.name, s.file, line, f"{path}: {_short(err.message, 120)}")
        self.count_labels(s, _categorical_leaves(value, self.free_text))
        return json.dumps(value, sort_keys=True, ensure_ascii=False)

    def count_labels(self, s: _SplitScan, leaves: dict) -> None:
        for path, value in leaves.items():
            if path in s.labels and s.labels[path] is None:
                continue
            counter = s.labels.setdefault(path, Counter())
            counter[value] += 1
            if len(counter) > 20:
                s.labels[path] = None  # many values: free text or an identifier, not a category

    # --- per batch ------------------------------------------------------------------------------------------------
    def flush(self, s: _SplitScan) -> None:
        rows, s.pending = s.pending, []
        if not rows:
            return
        batched = [r for r in rows if r.encoded is None]
        if batched:  # one call per batch: the fast tokenizer's batch path, not a call per row
            prompts = self.tok([r.prompt_text for r in batched], add_special_tokens=False)["input_ids"]
            answers = self.tok([r.answer for r in batched], add_special_tokens=False)["input_ids"]
            end = len(self.fmt.end_ids)
            for r, p, a in zip(batched, prompts, answers, strict=True):
                r.encoded = (len(p), len(a) + end)
                stop = next((t for t in a if t in self.stop_ids), None)
                if stop is not None:  # the labels would hold a stop token before the answer's own end
                    name = self.tok.convert_ids_to_tokens(stop)
                    self.found.row("early-eos", s.name, s.file, r.line, f"{name} inside the answer, before its end")
        for r in rows:
            self.count_length(s, r)
        sigs, keys = self.hasher.signatures([r.dedup_text for r in rows])
        s.sig_parts.append(sigs)
        s.key_parts.append(keys)

    def count_length(self, s: _SplitScan, r: _Pending) -> None:
        n_prompt, n_answer = r.encoded
        s.prompt_len.append(n_prompt)
        s.answer_len.append(n_answer)
        if n_prompt + n_answer > self.cfg.max_length:
            s.too_long += 1
            lost = n_prompt >= self.cfg.max_length
            s.answer_lost += lost
            f = self.found.get("too-long", s.name)
            f.count += 1
            if len(f.locations) < self.cfg.max_locations:
                what = "the whole answer" if lost else f"{n_prompt + n_answer - self.cfg.max_length} answer tokens"
                f.locations.append(Location(s.file, r.line, f"{n_prompt} + {n_answer} tokens: cutting would lose {what}"
                                            " and its EOS"))  # fmt: skip

    # --- per split: duplicates, conflicts, leakage (on the digests and signatures kept) ---------------------------
    def check_duplicates(self, s: _SplitScan) -> None:
        s.sigs = np.concatenate(s.sig_parts) if s.sig_parts else np.empty((0, self.hasher.num_perm), np.uint16)
        s.keys = np.concatenate(s.key_parts) if s.key_parts else np.empty((0, self.hasher.bands), np.uint64)
        s.sig_parts = s.key_parts = []
        lines = np.frombuffer(s.lines, dtype=np.int64) if len(s.lines) else np.empty(0, np.int64)
        prompt = np.frombuffer(s.prompt_digest, dtype=np.uint64) if len(s.lines) else np.empty(0, np.uint64)
        answer = np.frombuffer(s.answer_digest, dtype=np.uint64) if len(s.lines) else np.empty(0, np.uint64)
        row = prompt ^ (answer * np.uint64(0x9E3779B97F4A7C15))  # one key per (input, answer)
        first = first_with_same_key(row)
        dup = first != np.arange(len(row))
        for i in np.flatnonzero(dup):
            self.found.row("duplicate-exact", s.name, s.file, int(lines[i]), f"same as line {lines[first[i]]}")
        unique = np.flatnonzero(~dup)
        self.check_conflicts(s, lines[unique], prompt[unique])
        leaked = self.check_exact_leaks(s, lines[unique], prompt[unique]) if s is not self.train else set()
        earlier, later, sims = near_pairs(s.sigs[unique], s.keys[unique], self.cfg.near_duplicate_threshold)
        for j, i, sim in _best_match(later, earlier, sims):
            self.found.row("duplicate-near", s.name, s.file, int(lines[unique[j]]),
                           f"{sim:.0%} similar to line {lines[unique[i]]}")  # fmt: skip
        if self.train is not None and s is not self.train:
            rest = np.array([u for u in unique if int(lines[u]) not in leaked], dtype=np.int64)
            self.check_near_leaks(s, lines[rest], s.sigs[rest], s.keys[rest])
        if s is not self.train:
            s.sigs = s.keys = None  # only train's signatures are needed later

    def check_conflicts(self, s: _SplitScan, lines: np.ndarray, prompt: np.ndarray) -> None:
        first = first_with_same_key(prompt)  # rows here are distinct (input, answer) pairs
        later = np.flatnonzero(first != np.arange(len(prompt)))
        if not len(later):
            return
        heads = np.unique(first[later])
        for i in later:
            self.found.row("conflicting-answers", s.name, s.file, int(lines[i]),
                           f"same input as line {lines[first[i]]}, another answer")  # fmt: skip
        self.found.get("conflicting-answers", s.name).count += len(heads)  # the first row of each input counts too
        for h in heads:
            self.found.drop(s.name, int(lines[h]), "conflicting-answers", "its input has other answers further on")

    def check_exact_leaks(self, s: _SplitScan, lines: np.ndarray, prompt: np.ndarray) -> set[int]:
        t = self.train
        if t is None or not len(t.lines) or not len(lines):
            return set()
        t_prompt = np.frombuffer(t.prompt_digest, dtype=np.uint64)
        t_lines = np.frombuffer(t.lines, dtype=np.int64)
        values, first = np.unique(t_prompt, return_index=True)
        pos = np.clip(np.searchsorted(values, prompt), 0, len(values) - 1)
        hit = np.flatnonzero(values[pos] == prompt)
        for i in hit:
            self.found.row("leak-exact", s.name, s.file, int(lines[i]),
                           f"input also at {t.file}:{t_lines[first[pos[i]]]}")  # fmt: skip
        where = {int(prompt[i]): int(lines[i]) for i in hit}
        for j in np.flatnonzero(np.isin(t_prompt, prompt[hit])):
            self.found.drop(
                t.name, int(t_lines[j]), "leak-exact", f"its input is also at {s.file}:{where[int(t_prompt[j])]}"
            )
        return {int(lines[i]) for i in hit}

    def check_near_leaks(self, s: _SplitScan, lines: np.ndarray, sigs: np.ndarray, keys: np.ndarray) -> None:
        t = self.train
        t_lines = np.frombuffer(t.lines, dtype=np.int64)
        in_train, in_split, sims = cross_pairs(t.sigs, t.keys, sigs, keys, self.cfg.near_duplicate_threshold)
        for j, i, sim in _best_match(in_split, in_train, sims):
            self.found.row("leak-near", s.name, s.file, int(lines[j]), f"{sim:.0%} similar to {t.file}:{t_lines[i]}")
        for i, j in zip(in_train, in_split, strict=True):
            self.found.drop(t.name, int(t_lines[i]), "leak-near", f"near copy of {s.file}:{lines[j]}")

    def finish_split(self, s: _SplitScan) -> dict:
        self.check_duplicates(s)
        if s.valid == 0:
            self.found.get("empty-split", s.name, f"{s.name}: no usable row in {s.file}").count = s.rows
        for code in ("duplicate-exact", "duplicate-near"):
            f = self.found.items.get((code, s.name))
            if f is not None:
                share = f.count / max(s.rows, 1)
                f.severity = "warning" if share >= self.cfg.duplicate_warning_share else "info"
                f.message = f"{s.name}: {_rows(f.count)} ({share:.2%} of the split): {RULES[code].title}"
                if code == "duplicate-near":
                    f.message += (f" (Jaccard similarity >= {self.cfg.near_duplicate_threshold} on word "
                                  f"{self.cfg.shingle_words}-shingles)")  # fmt: skip
        f = self.found.items.get(("leak-exact", s.name))
        if f is not None and s.name != "test":
            f.severity = "warning"  # eval rows in train only flatter the eval loss; test rows fake the final score
        summary = {"file": s.file, "rows": s.rows, "usable_rows": s.valid}
        if len(s.prompt_len):
            summary |= self.length_summary(s)
        if s.too_long:
            f = self.found.get("too-long", s.name)
            f.message = (f"{s.name}: {_rows(s.too_long)} longer than max_length={self.cfg.max_length}; cut there, "
                         f"{s.too_long - s.answer_lost:,} would lose the end of the answer and "
                         f"{s.answer_lost:,} the whole answer")  # fmt: skip
            f.evidence = {"rows": s.too_long, "answer_cut": s.too_long - s.answer_lost, "answer_lost": s.answer_lost}
            if s is self.train and s.too_long == len(s.prompt_len):
                f.severity = "error"  # train would have nothing left
        return summary

    def length_summary(self, s: _SplitScan) -> dict:
        prompt, answer = np.asarray(s.prompt_len), np.asarray(s.answer_len)
        share = float(answer.sum() / max(prompt.sum() + answer.sum(), 1))
        stats = {"prompt_tokens": _stats(prompt), "answer_tokens": _stats(answer), "supervised_share": share}
        p, a = stats["prompt_tokens"], stats["answer_tokens"]
        self.found.get("lengths", s.name, f"{s.name}: prompt {p['p50']}/{p['p90']}/{p['max']} tokens "
                       f"(median/p90/max), answer {a['p50']}/{a['p90']}/{a['max']} (with its end token); "
                       f"{share:.0%} of tokens supervised").evidence = stats  # fmt: skip
        return stats

    def finish(self, splits: dict[str, _SplitScan]) -> None:
        train = splits.get("train")
        if train is not None:
            self.check_labels(train)
            self.check_size(train)
            if self.pairs:
                self.check_structure(train)
        held = splits.get("test") or splits.get("eval") or next((s for n, s in splits.items() if n != "train"), None)
        if held is not None:
            self.check_eval_size(held)
        end_id = self.fmt.end_ids[-1]
        if self.tok.eos_token_id is not None and end_id != self.tok.eos_token_id:
            end, eos = self.tok.convert_ids_to_tokens(end_id), self.tok.eos_token
            self.found.get("eos-mismatch", None, f"answers end with {end}, the end of an assistant turn in the chat "
                           f"template, but the tokenizer's EOS is {eos}")  # fmt: skip

    def check_labels(self, s: _SplitScan) -> None:
        """Categorical fields (at most 20 distinct short values over 20+ rows) whose top value has >= skew_threshold.
        A field with a single value is a constant, not a skew: nothing to learn, nothing to get wrong."""
        dist, skewed = {}, []
        for path, counter in s.labels.items():
            if counter is None or len(counter) < 2 or sum(counter.values()) < 20:
                continue
            total = sum(counter.values())
            (top, n_top), *_ = counter.most_common(1)
            dist[path] = {json.dumps(v): round(n / total, 4) for v, n in counter.most_common(8)}
            if n_top / total >= self.cfg.skew_threshold:
                rare = ", ".join(f"{json.dumps(v)} {n}" for v, n in counter.most_common()[1:4])
                skewed.append(f"{path} is {json.dumps(top)} in {n_top / total:.0%} of {total:,} rows (then {rare})")
        if skewed:
            f = self.found.get("skewed-labels", s.name, f"{s.name}: " + "; ".join(skewed))
            f.count = len(skewed)
            f.evidence = {p: dist[p] for p in dist if any(x.startswith(p + " ") for x in skewed)}
        if dist:
            parts = [
                f"{p}: " + ", ".join(f"{v} {share:.0%}" for v, share in list(d.items())[:4]) for p, d in dist.items()
            ]
            self.found.get("label-distribution", s.name, f"{s.name}: " + "; ".join(parts[:6])).evidence = dist

    def check_structure(self, s: _SplitScan) -> None:
        """The schema the answers follow when the task has none, and the fields the answers copy from the input."""
        from tasktune.constrain import copy_shares, infer_schema, suggested_copy_fields

        if self.task is not None and self.task.json_schema() is None:
            self.inferred_schema = infer_schema([a for _, a in self.pairs])
            text = _short(json.dumps(self.inferred_schema, ensure_ascii=False), 400)
            f = self.found.get("inferred-schema", s.name, f"{s.name}: no output.schema; the {len(self.pairs):,} "
                               f"answers follow {text}")  # fmt: skip
            f.evidence = {"schema": self.inferred_schema}
        known = set(self.task.output.copy_fields) if self.task is not None else set()
        fields = [p for p in suggested_copy_fields(self.pairs) if p not in known]
        if fields:
            shares = copy_shares(self.pairs)
            parts = [f"{p} ({shares[p][0]:,} of {shares[p][1]:,} values)" for p in fields]
            f = self.found.get("copy-fields", s.name, f"{s.name}: values that are spans of their input: "
                               + ", ".join(parts) + f"; set output.copy_fields: {json.dumps(fields)}")  # fmt: skip
            f.count = len(fields)
            f.evidence = {"copy_fields": fields}

    def check_size(self, s: _SplitScan) -> None:
        need = MIN_ROWS.get(self.cfg.method, MIN_ROWS["lora"])
        if 0 < s.valid < need:
            why = ("LoRA needs some 50-100 examples of a task before it learns more than the format (OpenAI's "
                   "fine-tuning guide sees clear gains from 50-100)" if self.cfg.method != "full" else
                   "full fine-tuning moves every weight: on a few hundred rows it memorises them and loses general "
                   "ability; LoRA changes far fewer parameters")  # fmt: skip
            f = self.found.get("too-few-rows", s.name, f"{s.name}: {_rows(s.valid)} usable for {self.cfg.method} "
                               f"(want at least {need}): {why}")  # fmt: skip
            f.evidence = {"rows": s.valid, "minimum": need, "method": self.cfg.method}

    def check_eval_size(self, s: _SplitScan) -> None:
        """Binomial arithmetic: an accuracy on n rows has standard error sqrt(p(1-p)/n) <= 0.5/sqrt(n). Two models
        scored on n rows differ beyond noise (95%, independent errors) only by more than 1.96*sqrt(2)*SE."""
        n = s.valid
        if n == 0:
            return
        se = 0.5 / math.sqrt(n)
        resolvable = 1.96 * math.sqrt(2) * se
        need = math.ceil(2 * (1.96 * 0.5 / self.cfg.min_difference) ** 2)
        msg = (f"{s.name}: {_rows(n)}: an accuracy measured on it has a standard error of up to {se * 100:.1f} points "
               f"(sqrt(0.5*0.5/{n})); two models must differ by more than {resolvable * 100:.1f} points "
               f"(1.96*sqrt(2)*SE) before the difference is more than noise (95%); resolving "
               f"{self.cfg.min_difference * 100:.0f} points needs {need:,} rows")  # fmt: skip
        code = "eval-too-small" if resolvable > self.cfg.min_difference else "eval-size"
        f = self.found.get(code, s.name, msg)
        f.evidence = {"rows": n, "standard_error": se, "resolvable_difference": resolvable, "rows_needed": need,
                      "target_difference": self.cfg.min_difference}  # fmt: skip


# --- helpers ------------------------------------------------------------------------------------------------------
class _Renderer:
    """(training prompt, full conversation) as the chat template renders them, fast.

    A jinja render through transformers costs ~50 us, more than everything else a row needs. So each shape of
    conversation (its sequence of roles) is rendered once with placeholders, and a row's contents are put in their
    place. That is exact when the template copies content verbatim, which is verified against the real template on
    the first VERIFY rows of each shape (one mismatch and the shape always renders for real). Content a template is
    known to treat specially (outer whitespace that it may trim, `<` of tags like <think> it may cut) always renders
    for real, so the template-mismatch check sees every row that could differ.
    """

    VERIFY = 32

    def __init__(self, fmt: ChatFormat):
        self.fmt = fmt
        self.shapes: dict[tuple[str, ...], tuple[list[str], list[str]] | None] = {}
        self.verified: Counter = Counter()

    def __call__(self, messages: list[dict]) -> tuple[str, str]:
        contents = [m["content"] for m in messages]
        roles = tuple(m["role"] for m in messages)
        if all(c and not c[0].isspace() and not c[-1].isspace() and "<" not in c for c in contents):
            parts = self.shapes[roles] if roles in self.shapes else self._parts(roles)
            if parts is not None:
                fast = (_fill(parts[0], contents[:-1]), _fill(parts[1], contents))
                if self.verified[roles] >= self.VERIFY:
                    return fast
                real = self._real(messages)
                self.verified[roles] += 1
                if real != fast:
                    self.shapes[roles] = None
                return real
        return self._real(messages)

    def _real(self, messages: list[dict]) -> tuple[str, str]:
        return self.fmt.prompt_text(messages[:-1]), self.fmt.full_text(messages)

    def _parts(self, roles: tuple[str, ...]) -> tuple[list[str], list[str]] | None:
        marks = [f"\u2063TT{i}\u2063" for i in range(len(roles))]
        msgs = [{"role": r, "content": m} for r, m in zip(roles, marks, strict=True)]
        try:
            prompt, full = self._real(msgs)
        except Exception:  # the template rejects this shape; each row then renders (and fails) for real
            self.shapes[roles] = None
            return None
        split = re.compile("|".join(map(re.escape, marks)))
        ok = split.findall(prompt) == marks[:-1] and split.findall(full) == marks
        self.shapes[roles] = (split.split(prompt), split.split(full)) if ok else None
        return self.shapes[roles]


def _fill(parts: list[str], contents: list[str]) -> str:
    out = [parts[0]]
    for c, p in zip(contents, parts[1:], strict=True):
        out += (c, p)
    return "".join(out)


class _SchemaCheck:
    """The first schema error of an answer. jsonschema takes ~130 us per answer (a third of a 100,000-row check),
    so the common schema shape, an object of `properties` with `required` and `additionalProperties`, is decided by
    validating each property value on its own and remembering the verdict per (field, value): exactly what these
    three keywords mean, and answers repeat their field values. Any other root keyword takes the full validator,
    and so does every answer that fails, to name the error.
    """

    FAST_ROOT = frozenset(
        {"type", "properties", "required", "additionalProperties", "$schema", "$id", "$defs", "definitions", "title",
         "description", "$comment", "examples", "default"}
    )  # fmt: skip
    CACHE = 200_000

    def __init__(self, schema: dict):
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as e:
            raise ConfigError(f"output.schema is not a valid JSON Schema: {e.message}", "fix the schema") from None
        self.validator = Draft202012Validator(schema)
        self.fields = None
        extra = schema.get("additionalProperties", True)
        if (schema.get("type") == "object" and set(schema) <= self.FAST_ROOT and isinstance(extra, bool)
                and isinstance(schema.get("properties", {}), dict)):  # fmt: skip
            self.fields = {k: self.validator.evolve(schema=sub) for k, sub in schema.get("properties", {}).items()}
            self.required = list(schema.get("required", []))
            self.extra_ok = extra
        self.verdicts: dict[tuple, bool] = {}

    @classmethod
    def for_task(cls, task: TaskConfig | None) -> _SchemaCheck | None:
        if task is None or task.output.kind != "json":
            return None
        schema = task.json_schema()
        return None if schema is None else cls(schema)

    def first_error(self, value):
        if self.fields is not None and self._valid(value):
            return None
        return next(iter(self.validator.iter_errors(value)), None)

    def _valid(self, value) -> bool:
        if not isinstance(value, dict) or any(k not in value for k in self.required):
            return False
        for k, v in value.items():
            sub = self.fields.get(k)
            if sub is None:
                if not self.extra_ok:
                    return False
                continue
            # the type is part of the key: True == 1 and 1 == 1.0 in Python, not in JSON Schema
            key = (
                k,
                type(v),
                v if isinstance(v, (str, int, float, bool, type(None))) else json.dumps(v, sort_keys=True),
            )
            ok = self.verdicts.get(key)
            if ok is None:
                ok = sub.is_valid(v)
                if len(self.verdicts) < self.CACHE:
                    self.verdicts[key] = ok
            if not ok:
                return False
        return True


def _special_tokens(tok, fmt: ChatFormat) -> tuple[re.Pattern, re.Pattern | None]:
    """Two patterns: tokens the chat template itself uses (plus BOS/EOS/PAD), and the tokenizer's other specials."""
    specials = set(tok.all_special_tokens)
    specials |= {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if getattr(t, "special", False)}
    specials.discard("")
    sample = fmt.full_text([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}])
    control = {t for t in specials if t in sample} | {t for t in (tok.eos_token, tok.bos_token, tok.pad_token) if t}
    others = specials - control

    def pattern(tokens: set[str]) -> re.Pattern | None:
        if not tokens:
            return None
        return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))

    return pattern(control) or re.compile(r"(?!x)x"), pattern(others)


def _json_container(text: str) -> bool:
    try:
        return isinstance(json.loads(text), (dict, list))
    except json.JSONDecodeError:
        return False


def _json_path(parts) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _categorical_leaves(value, free_text: set[str], prefix: str = "$") -> dict:
    """Leaf values that could be categories (short strings, booleans, integers, null), by JSON path."""
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k) not in free_text:
                out |= _categorical_leaves(v, free_text, f"{prefix}.{k}")
    elif isinstance(value, list):
        for v in value:
            out |= _categorical_leaves(v, free_text, f"{prefix}[]")
    elif value is None or isinstance(value, (bool, int)) or (isinstance(value, str) and len(value) <= 40):
        out[prefix] = value
    return out


def _best_match(rows: np.ndarray, partners: np.ndarray, sims: np.ndarray):
    """(row, its most similar partner, similarity) once per row, in row order."""
    best: dict[int, tuple[int, float]] = {}
    for r, p, sim in zip(rows.tolist(), partners.tolist(), sims.tolist(), strict=True):
        if r not in best or sim > best[r][1]:
            best[r] = (p, sim)
    return [(r, p, sim) for r, (p, sim) in sorted(best.items())]


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _stats(values: np.ndarray) -> dict:
    p50, p90, p99 = (int(v) for v in np.percentile(values, [50, 90, 99]))
    return {"mean": round(float(values.mean()), 1), "p50": p50, "p90": p90, "p99": p99, "max": int(values.max())}


# --- public API ---------------------------------------------------------------------------------------------------
def task_splits(task: TaskConfig) -> dict[str, Path]:
    """The task's data files by split name, train first."""
    return {name: p for name in ("train", "eval", "test") if (p := task.data_path(name)) is not None}


def files_as_splits(paths: list[str | Path]) -> dict[str, Path]:
    """DATA files from the command line: the first is the training split, the others held-out splits (named by
    their file name, e.g. eval, test)."""
    splits: dict[str, Path] = {}
    for i, p in enumerate(paths):
        name = "train" if i == 0 else Path(p).stem
        if name in splits or (i > 0 and name == "train"):
            name = f"{name}-{i + 1}"
        splits[name] = Path(p)
    return splits


def check_dataset(splits: dict[str, str | Path], *, task: TaskConfig | None = None, cfg: CheckConfig | None = None,
                  tokenizer=None) -> CheckReport:  # fmt: skip
    """Check every row of every split; `splits` maps names to files ("train" is the one others may leak into).

    Only the tokenizer of `cfg.model` is loaded, never its weights. Raises DataError for a missing file (bad usage);
    every problem inside the files becomes a finding.
    """
    cfg = cfg or CheckConfig()
    t0 = time.perf_counter()
    paths = {name: Path(p) for name, p in splits.items()}
    for p in paths.values():
        open_rows(p).close()  # a missing or unreadable file is bad usage (DataError, exit 2), not a finding
    if tokenizer is None:
        from tasktune.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    checker = _Checker(tokenizer, cfg, task)
    order = sorted(paths, key=lambda n: n != "train")  # train first: the others are checked for leaks into it
    scans: dict[str, _SplitScan] = {}
    summaries: dict[str, dict] = {}
    for name in order:
        scans[name] = s = checker.scan_split(name, paths[name])
        if name == "train":
            checker.train = s  # the held-out splits after it are checked for leaks into it
        summaries[name] = checker.finish_split(s)
    checker.finish(scans)
    findings = sorted(checker.found.items.values(),
                      key=lambda f: (SEVERITIES.index(f.severity), order.index(f.split) if f.split in order else -1,
                                     list(RULES).index(f.code)))  # fmt: skip
    for f in findings:
        if "paths" in f.evidence:
            f.evidence["paths"] = dict(f.evidence["paths"].most_common(10))
        if f.message == RULES[f.code].title and f.split:
            f.message = f"{f.split}: {_rows(f.count)}: {RULES[f.code].title}"
    return CheckReport(
        model=cfg.model, max_length=cfg.max_length, method=cfg.method, answer_kind=checker.kind or "text",
        splits=summaries, findings=findings, seconds=time.perf_counter() - t0, drops=checker.found.drops,
        inferred_schema=checker.inferred_schema,
    )  # fmt: skip


def check_for_training(task: TaskConfig, cfg: TrainConfig, *, force: bool = False, tokenizer=None) -> CheckReport:
    """The check `tasktune train` runs before loading the model: errors stop it unless `force`."""
    report = check_dataset(task_splits(task), task=task, cfg=CheckConfig.for_training(task, cfg), tokenizer=tokenizer)
    if report.errors:
        text = report.format(details=3)
        if not force:
            raise DataError(
                f"the data check found {len(report.errors)} error(s), so training did not start:\n{text}",
                "fix the rows listed (`tasktune check --fix OUT` writes a cleaned copy), or pass --force to train "
                "anyway",
            )
        print(text)
        print(f"tasktune: --force: training despite {len(report.errors)} data error(s)")
    elif report.warnings:
        for f in report.warnings:
            print(f"tasktune check: warning {f.code}: {f.message}")
    return report


# --- output -------------------------------------------------------------------------------------------------------
def format_report(report: CheckReport, *, details: int = 3) -> str:
    """A table of findings by severity, then each error and warning with its first locations and its remedy."""
    rows = ", ".join(f"{name} {s['rows']:,}" for name, s in report.splits.items())
    lines = [f"tasktune check: {rows} rows; tokenizer {report.model}; max_length {report.max_length}; "
             f"method {report.method}; answers read as {report.answer_kind} ({report.seconds:.1f}s)", ""]  # fmt: skip
    if report.findings:
        width = max(len(f.code) for f in report.findings)
        lines.append(f"  {'severity':<8}  {'finding':<{width}}  {'rows':>7}  first at")
        for f in report.findings:
            where = f"{Path(f.locations[0].file).name}:{f.locations[0].line}" if f.locations else (f.split or "-")
            count = f"{f.count:,}" if f.count else "-"
            lines.append(f"  {f.severity:<8}  {f.code:<{width}}  {count:>7}  {where}")
    for f in report.findings:
        if f.severity == "info":
            continue
        lines += ["", f"{f.severity} {f.code}: {f.message}"]
        lines += [f"  {loc}" for loc in f.locations[:details]]
        if f.count > min(len(f.locations), details) and f.locations:
            lines.append(f"  ... {f.count - min(len(f.locations), details):,} more")
        lines.append(f"  fix: {f.remedy}")
    info = [f for f in report.findings if f.severity == "info"]
    if info:
        lines += ["", "info:"] + [f"  {f.code}: {f.message}" for f in info]
    n_err, n_warn = report.count("error"), report.count("warning")
    verdict = ("tasktune train will refuse this data (--force overrides)" if n_err else
               "ready to train" + (" (read the warnings)" if n_warn else ""))  # fmt: skip
    lines += ["", f"{n_err} error(s), {n_warn} warning(s), {report.count('info')} info: {verdict}"]
    return "\n".join(lines)


def preview_rows(path: str | Path, tokenizer, n: int, *, instruction: str | None = None,
                 system_prompt: str | None = None, color: bool = False) -> str:  # fmt: skip
    """The first `n` rows as the model sees them in training, supervised tokens highlighted (green on a terminal,
    [[...]] otherwise)."""
    fmt = ChatFormat(tokenizer, system_prompt)
    on, off = ("\x1b[1;32m", "\x1b[0m") if color else ("[[", "]]")
    out = []
    for line, item in iter_rows(path):
        if len(out) >= n:
            break
        if isinstance(item, RowError):
            continue
        try:
            enc = fmt.encode_example(fmt.with_instruction(item.messages, instruction))
        except TaskTuneError:
            continue
        text, start = [], 0
        flags = [lab != -100 for lab in enc.labels]
        for j in range(1, len(flags) + 1):
            if j == len(flags) or flags[j] != flags[start]:
                piece = tokenizer.decode(enc.input_ids[start:j], skip_special_tokens=False)
                text.append(f"{on}{piece}{off}" if flags[start] else piece)
                start = j
        head = f"--- {path}:{line}: {enc.n_supervised} of {len(enc.input_ids)} tokens supervised"
        out.append(head + "\n" + "".join(text))
    return "\n\n".join(out) if out else "(no row could be rendered)"


def write_fixed(report: CheckReport, splits: dict[str, str | Path], out: str | Path,
                task: TaskConfig | None = None) -> dict[str, int]:  # fmt: skip
    """Cleaned copies of the split files in `out` (rows with dropping findings removed), and `dropped.jsonl`, one
    line per dropped row with its file, line and reason; with a task, a task.yaml that points at the copies. Input
    files are never modified. Returns the rows kept per split.
    """
    from tasktune.fsio import atomic_open, atomic_write_text, ensure_writable_dir

    out = check_fix_target(splits, out)
    ensure_writable_dir(out, what="--fix folder")
    kept: dict[str, int] = {}
    with atomic_open(out / "dropped.jsonl") as log:
        for name, p in splits.items():
            p, drops = Path(p), report.drops.get(name, {})
            kept[name] = 0

            def dropped(line: int, text: str, name=name, p=p, drops=drops) -> None:
                code, reason = drops[line]
                row = {"split": name, "file": str(p), "line": line, "code": code, "reason": reason, "row": text}
                log.write(json.dumps(row) + "\n")  # ensure_ascii: undecodable bytes show as \udcXX escapes

            with open_rows(p) as src, atomic_open(out / p.name) as dst:
                if p.suffix.lower() == ".csv":
                    reader = csv.DictReader(src)
                    writer = csv.DictWriter(dst, fieldnames=reader.fieldnames or [], lineterminator="\n")
                    writer.writeheader()
                    for row in reader:
                        if reader.line_num in drops:
                            dropped(reader.line_num, json.dumps(row))
                        else:
                            writer.writerow(row)
                            kept[name] += 1
                    continue
                for lineno, line in enumerate(src, start=1):
                    if not line.strip():
                        continue
                    if lineno in drops:
                        dropped(lineno, line.rstrip("\r\n"))
                    else:
                        dst.write(line if line.endswith("\n") else line + "\n")
                        kept[name] += 1
    if task is not None:
        schema = None
        if report.inferred_schema is not None and task.json_schema() is None:
            atomic_write_text(out / "schema.json", json.dumps(report.inferred_schema, indent=2, ensure_ascii=False)
                              + "\n")  # fmt: skip
            schema = "schema.json"
        _write_fixed_task(task, {n: Path(p) for n, p in splits.items()}, out, schema=schema)
    return kept


def check_fix_target(splits: dict[str, str | Path], out: str | Path) -> Path:
    """`out` as a folder for cleaned copies: not the folder of an input, no two inputs with the same file name."""
    out = Path(out)
    resolved = out.resolve()
    names = [Path(p).name for p in splits.values()]
    for p in map(Path, splits.values()):
        if resolved in (p.resolve().parent, p.resolve()):
            raise TaskTuneError(f"--fix {out} is the folder of the input {p}", "choose a new folder for the copies")
    if len(set(names)) != len(names) or {"dropped.jsonl", "task.yaml"} & set(names):
        raise TaskTuneError(f"the input file names {names} would collide in {out}", "rename the inputs")
    if out.exists() and not out.is_dir():
        raise TaskTuneError(f"--fix {out} exists and is a file", "pass a folder path")
    return out


def _write_fixed_task(task: TaskConfig, splits: dict[str, Path], out: str | Path, schema: str | None = None) -> Path:
    """A task.yaml in `out` that points at the cleaned copies (schema path made absolute, or `schema` in `out`)."""
    import yaml

    from tasktune.fsio import atomic_write_text

    data = task.to_yaml_dict()
    data["data"] = {name: (Path(splits[name]).name if name in splits else None) for name in ("train", "eval", "test")}
    if isinstance(task.output.schema_, str):
        data["output"]["schema"] = str((task.base_dir / task.output.schema_).resolve())
    if schema is not None:
        data["output"]["schema"] = schema

    class Dumper(yaml.SafeDumper):  # multi-line strings (the instruction) as readable `|` blocks
        pass

    def text(dumper, value: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    path = Path(out) / "task.yaml"
    atomic_write_text(path, "# written by `tasktune check --fix`: the task on the cleaned data\n"
                      + yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True))  # fmt: skip
    return path
