"""The scan: every row of every split, read once, in bounded memory; the findings it raises."""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasktune.check.report import CheckReport
from tasktune.check.rules import MIN_ROWS, RULES
from tasktune.config import DEFAULT_MODEL, TaskConfig, TrainConfig
from tasktune.data import Example, RowError, iter_rows, open_rows
from tasktune.dedup import MinHasher, cross_pairs, digest, first_with_same_key, near_pairs, normalise
from tasktune.errors import ConfigError, DataError, TaskTuneError
from tasktune.findings import SEVERITIES, Finding, Location
from tasktune.pii import scan as scan_pii
from tasktune.render import ChatFormat

MAX_SCHEMA_ROWS = 20_000  # training answers kept for the schema and copy-field findings (they settle long before)
BATCH_ROWS = 512  # rows tokenized and MinHashed together; bounds the texts held at once


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
            self.items[key] = Finding(code, rule.severity, message or rule.title, rule.remedy, split=split)
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
