"""tasktune diagnose: the run doctor. What went wrong in a finished fine-tuning run, in numbers, with the fix.

    tasktune diagnose RUN [--json FILE] [--limit N]        (also runs at the end of `tasktune train`)

It reads RUN/metrics.jsonl (divergence, no learning, spikes, overfitting, the train/eval gap), has the tuned model
answer held-out inputs (answers that never stop, that go on after the answer, broken JSON, training answers copied
onto new inputs) and a general-ability probe set shipped with tasktune that the base model answers too (forgetting,
answers in the task's format to unrelated questions), and links what it sees to the dataset doctor's findings
(`tasktune check`). Findings: diagnose/findings.py; each rule: curves.py, outputs.py, memorisation.py, probes.py.
"""

from tasktune.diagnose.doctor import DiagnoseConfig, diagnose, save_diagnosis
from tasktune.diagnose.findings import Diagnosis, Finding, format_diagnosis

__all__ = ["DiagnoseConfig", "Diagnosis", "Finding", "diagnose", "format_diagnosis", "save_diagnosis"]
