"""Task metrics on generated answers (never on teacher-forced logits).

JSON tasks: valid-JSON rate, schema-valid rate, field accuracy over every leaf field of the reference (normalised
exact match; fields the task marks as free text score token F1 instead), and whole-record exact match.
Text tasks: exact match, ROUGE-L (F1 of the longest common token subsequence) and chrF (sacrebleu).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+", re.UNICODE)


def normalise(value):
    """Strings compare case- and whitespace-insensitively; everything else exactly (1 != "1", null != "null")."""
    if isinstance(value, str):
        return _WS.sub(" ", value.strip()).casefold()
    return value


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def token_f1(pred: str, ref: str) -> float:
    p, r = tokens(pred), tokens(ref)
    if not p and not r:
        return 1.0
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def leaves(obj, prefix: str = "") -> dict[str, object]:
    """Flatten JSON into {path: leaf}; lists index their items (`steps[0]`)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out |= leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out or {prefix: {}}
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out |= leaves(v, f"{prefix}[{i}]")
        return out or {prefix: []}
    return {prefix: obj}


def _is_free_text(path: str, free_text: set[str]) -> bool:
    return path in free_text or re.sub(r"\[\d+\]", "", path) in free_text


def field_scores(pred, ref, free_text: set[str] = frozenset()) -> dict[str, float]:
    """Score of each reference leaf: 1/0 exact (normalised), or token F1 for free-text fields; missing → 0."""
    ref_leaves = leaves(ref)
    pred_leaves = leaves(pred) if isinstance(pred, (dict, list)) else {}
    scores = {}
    for path, want in ref_leaves.items():
        if path not in pred_leaves:
            scores[path] = 0.0
            continue
        got = pred_leaves[path]
        if _is_free_text(path, free_text) and isinstance(want, str) and isinstance(got, str):
            scores[path] = token_f1(got, want)
        else:
            scores[path] = float(normalise(got) == normalise(want) and type(got) is type(want))
    return scores


def extract_json(text: str):
    """The JSON value in an answer, leniently: the whole text, else a fenced block, else the first {...} or [...].

    Field accuracy uses this, so a base model that wraps correct JSON in prose or code fences still gets credit for
    its fields; `valid_json_rate` stays strict (the whole answer must be JSON), as a pipeline would need.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        try:
            return json.loads(fence.group(1))
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text, i)[0]
            except json.JSONDecodeError:
                continue
    return None


def schema_errors(obj, schema: dict | None) -> list[str]:
    if schema is None:
        return []
    from jsonschema import Draft202012Validator

    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in Draft202012Validator(schema).iter_errors(obj)]  # fmt: skip


def json_metrics(preds: list[str], refs: list[str], schema: dict | None = None,
                 free_text: set[str] = frozenset()) -> dict:  # fmt: skip
    """Aggregate JSON metrics; `refs` are the reference answers as JSON text."""
    n = len(preds)
    valid = schema_ok = exact = 0
    per_field: dict[str, list[float]] = defaultdict(list)
    all_scores: list[float] = []
    found = 0
    for pred_text, ref_text in zip(preds, refs, strict=True):
        ref = json.loads(ref_text)
        try:
            strict = json.loads(pred_text)
            valid += 1
            schema_ok += not schema_errors(strict, schema)  # schema-valid implies strictly valid JSON
        except json.JSONDecodeError:
            pass
        pred = extract_json(pred_text)
        found += pred is not None
        scores = field_scores(pred, ref, free_text)
        for path, s in scores.items():
            per_field[re.sub(r"\[\d+\]", "[]", path)].append(s)
        all_scores += scores.values()
        exact += pred is not None and same_record(pred, ref)
    return {
        "valid_json_rate": valid / n if n else 0.0,
        "json_found_rate": found / n if n else 0.0,
        "schema_valid_rate": schema_ok / n if n else 0.0,
        "field_accuracy": sum(all_scores) / len(all_scores) if all_scores else 0.0,
        "exact_match": exact / n if n else 0.0,
        "per_field": {k: sum(v) / len(v) for k, v in sorted(per_field.items())},
        "free_text_fields_scored_by": "token_f1" if free_text else None,
    }


def same_record(pred, ref) -> bool:
    got, want = leaves(pred), leaves(ref)
    return got.keys() == want.keys() and all(
        normalise(got[k]) == normalise(want[k]) and type(got[k]) is type(want[k]) for k in want
    )


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 over word tokens. Written here: rouge-score brings nltk and absl for these dozen lines."""
    p, r = tokens(pred), tokens(ref)
    if not p or not r:
        return float(p == r)
    prev = [0] * (len(r) + 1)
    for a in p:
        cur = [0]
        for j, b in enumerate(r):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def text_metrics(preds: list[str], refs: list[str]) -> dict:
    from sacrebleu.metrics import CHRF

    n = len(preds)
    chrf = CHRF()
    return {
        "exact_match": sum(normalise(p) == normalise(r) for p, r in zip(preds, refs, strict=True)) / n if n else 0.0,
        "rouge_l": sum(rouge_l(p, r) for p, r in zip(preds, refs, strict=True)) / n if n else 0.0,
        "chrf": sum(chrf.sentence_score(p, [r]).score / 100 for p, r in zip(preds, refs, strict=True)) / n
        if n
        else 0.0,
    }


def example_score(pred: str, ref: str, kind: str, free_text: set[str] = frozenset()) -> float:
    """One example's score, to rank the worst examples."""
    if kind == "json":
        parsed = extract_json(pred)
        if parsed is None:
            return -1.0
        scores = field_scores(parsed, json.loads(ref), free_text)
        return sum(scores.values()) / max(len(scores), 1)
    return rouge_l(pred, ref)


def diff(pred: str, ref: str, kind: str) -> list[str]:
    """Human-readable differences between an answer and its reference."""
    if kind == "json":
        try:
            got = leaves(json.loads(pred))
        except json.JSONDecodeError as e:
            return [f"not valid JSON ({e.msg} at char {e.pos}): {pred[:120]!r}"]
        want = leaves(json.loads(ref))
        out = [f"{k}: got {json.dumps(got.get(k, '<missing>'))}, expected {json.dumps(v)}"
               for k, v in want.items() if normalise(got.get(k, object())) != normalise(v)]  # fmt: skip
        out += [f"{k}: unexpected field" for k in got if k not in want]
        return out
    import difflib

    return list(difflib.unified_diff(ref.splitlines(), pred.splitlines(), "expected", "got", lineterm="", n=0))[2:]
