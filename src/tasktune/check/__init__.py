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

The package: rules.py (the catalogue of codes), scan.py (the scan and its findings), report.py (the report and
its printed form), show.py (`--show`), fix.py (`--fix`). Findings are tasktune.findings.Finding, shared with
`tasktune diagnose`.
"""

from __future__ import annotations

from tasktune.check.fix import check_fix_target, write_fixed
from tasktune.check.report import CheckReport, format_report
from tasktune.check.rules import MIN_ROWS, RULES, Rule
from tasktune.check.scan import CheckConfig, check_dataset, check_for_training, files_as_splits, task_splits
from tasktune.check.show import preview_rows
from tasktune.findings import SEVERITIES, Finding, Location

__all__ = [
    "MIN_ROWS",
    "RULES",
    "SEVERITIES",
    "CheckConfig",
    "CheckReport",
    "Finding",
    "Location",
    "Rule",
    "check_dataset",
    "check_fix_target",
    "check_for_training",
    "files_as_splits",
    "format_report",
    "preview_rows",
    "task_splits",
    "write_fixed",
]
