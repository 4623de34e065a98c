"""What a data check found (CheckReport) and its printed form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasktune.findings import Finding, FindingsQueries


@dataclass
class CheckReport(FindingsQueries):
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("drops")
        d["summary"] = self.summary()
        d["rows_to_drop"] = {s: len(lines) for s, lines in self.drops.items()}
        return d

    def format(self, *, details: int = 3) -> str:
        return format_report(self, details=details)


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
