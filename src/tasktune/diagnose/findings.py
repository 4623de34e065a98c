"""What a diagnosis is made of: findings (id, severity, evidence in numbers, remedy) and the result that holds them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tasktune.findings import SEVERITIES, Finding, FindingsQueries

# Findings about the optimisation itself: when one of these is an error, what the model then does (no stop, broken
# JSON, copied answers, forgotten skills) follows from it, and is reported as its consequence rather than as a cause.
ROOT_CAUSES = ("loss-not-finite", "loss-diverged", "loss-flat")
CONSEQUENCES = ("no-stop", "runs-past-answer", "invalid-output", "memorisation", "format-drift", "forgetting")


@dataclass
class Diagnosis(FindingsQueries):
    run: str
    task: str
    method: str
    output_kind: str
    findings: list[Finding]
    curves: dict  # loss-curve figures (optimisation section)
    heldout: dict  # where the held-out inputs came from, generation figures (stopping section)
    memorisation: dict
    probes: dict  # general-ability probe scores, base vs tuned
    data_check: dict  # the dataset doctor's error and warning codes with counts
    seconds: float = 0.0
    examples: list[dict] = field(default_factory=list)  # held-out predictions with their flags, for the report

    def get(self, code: str) -> Finding | None:
        return next((f for f in self.findings if f.code == code), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary()
        return d


def demote_consequences(findings: list[Finding]) -> list[Finding]:
    """Sort by severity; behind a failed optimisation, report the output symptoms as its consequences (info)."""
    root = next((f for f in findings if f.code in ROOT_CAUSES and f.severity == "error"), None)
    if root is not None:
        for f in findings:
            if f.code in CONSEQUENCES and f.severity != "info":
                f.cause = root.code
                f.severity = "info"
                f.message += f" (a consequence of {root.code}: fix that first)"
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def format_diagnosis(d: Diagnosis) -> str:
    """Terminal summary: one line per finding, then each error and warning with its remedy."""
    counts = d.summary()
    lines = [f"tasktune diagnose: {d.run} ({d.method}, task {d.task}): {counts['error']} error(s), "
             f"{counts['warning']} warning(s), {counts['info']} info ({d.seconds:.0f}s)"]  # fmt: skip
    if d.findings:
        width = max(len(f.code) for f in d.findings)
        lines += [f"  {f.severity:<7}  {f.code:<{width}}  {f.message}" for f in d.findings]
    for f in d.findings:
        if f.severity != "info":
            lines.append(f"fix {f.code}: {f.remedy}")
    if not counts["error"]:
        lines.append("no error-level finding: the run trained, stops and generalises as far as these checks see")
    return "\n".join(lines)
