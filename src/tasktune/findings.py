"""One finding type for the data check (`tasktune check`) and the run doctor (`tasktune diagnose`).

A finding names what was seen (a stable `code` such as "duplicate-rows" or "loss-diverged"), how bad it is, the
numbers behind it and the change that fixes it; the data check also says where (split, rows, file:line), the run
doctor which data-check codes explain it and which root cause it follows from.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

SEVERITIES = ("error", "warning", "info")


@dataclass
class Location:
    file: str
    line: int
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Finding:
    code: str  # stable name, e.g. "duplicate-rows", "loss-diverged"
    severity: str  # error | warning | info
    message: str  # what was seen, with its numbers
    remedy: str  # which setting or row to change, to what, and why
    evidence: dict = field(default_factory=dict)  # the numbers behind the message
    _: KW_ONLY  # what only one of the two reports fills in is named at the call
    split: str | None = None  # data check: the split it was found in
    count: int = 0  # data check: rows affected
    locations: list[Location] = field(default_factory=list)  # data check: where, as file:line
    linked: list[str] = field(default_factory=list)  # run doctor: data-check codes that explain it
    cause: str | None = None  # run doctor: code of the root-cause finding this one follows from


class FindingsQueries:
    """What a report with `findings` (CheckReport, Diagnosis) answers about them."""

    findings: list[Finding]

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

    def summary(self) -> dict[str, int]:
        return {s: self.count(s) for s in SEVERITIES}
