"""The general-ability probe set: short everyday questions with answers a rule can check.

The probes (probes.jsonl beside this file) were written for tasktune and share its license (Apache-2.0); nothing in
them is copied from a benchmark. Each line: {"id", "category", "prompt", "check", ...} with one of these rules:

  number      {"value": 12}     a number in the answer equals the value; numbers already in the prompt do not count
                                (so "7 + 5 = 12" passes and an echo of "7 + 5" does not); "1,000" reads as 1000
  contains    {"any": [...]}    one of the strings appears as a whole word, ignoring case
  first_word  {"any": [...]}    the answer's first word is one of these, ignoring case and punctuation (yes/no)
  one_word    {"any": [...]}    the answer is exactly one word (punctuation ignored) and it is one of these
  regex       {"pattern": ...}  the regular expression matches somewhere (case-sensitive unless it says (?i))

The base model and the tuned model answer the same probes; the drop in the share answered correctly measures what
fine-tuning cost in general ability, and the share of probe answers in the task's own format measures format drift.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
CHECKS = ("number", "contains", "first_word", "one_word", "regex")


@dataclass(frozen=True)
class Probe:
    id: str
    category: str
    prompt: str
    check: str
    any: tuple[str, ...] = ()
    value: float | None = None
    pattern: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def passes(self, answer: str) -> bool:
        """Whether `answer` satisfies this probe's checking rule."""
        if self.check == "number":
            given = set(_numbers(self.prompt))
            return any(abs(x - self.value) < 1e-9 for x in _numbers(answer) if x not in given)
        if self.check == "contains":
            return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", answer, re.I) for a in self.any)
        words = [w.casefold() for w in _WORD.findall(answer)]
        wanted = {a.casefold() for a in self.any}
        if self.check == "first_word":
            return bool(words) and words[0] in wanted
        if self.check == "one_word":
            return len(words) == 1 and words[0] in wanted
        return re.search(self.pattern, answer) is not None


def _numbers(text: str) -> list[float]:
    out = []
    for m in _NUMBER.findall(text):
        try:
            out.append(float(m.replace(",", "").rstrip(".")))
        except ValueError:
            continue
    return out


def load_probes() -> list[Probe]:
    """The probe set shipped with tasktune (package data)."""
    text = resources.files("tasktune.diagnose").joinpath("probes.jsonl").read_text(encoding="utf-8")
    probes = []
    for line in filter(str.strip, text.splitlines()):
        row = json.loads(line)
        assert row["check"] in CHECKS, f"probe {row['id']}: unknown check {row['check']!r}"
        rule = {"any": tuple(row.get("any", ())), "value": row.get("value"), "pattern": row.get("pattern")}
        probes.append(Probe(id=row["id"], category=row["category"], prompt=row["prompt"], check=row["check"], **rule))
    return probes
