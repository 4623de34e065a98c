"""The bug-report generator: deterministic, labels valid by the schema, test styles and phrasings held out."""

from __future__ import annotations

import json
import re

from tasktune.config import load_task
from tasktune.examples import bug_reports as br
from tasktune.metrics import schema_errors


def test_deterministic_for_a_seed():
    assert br.generate_rows(50, seed=7, held_out=False) == br.generate_rows(50, seed=7, held_out=False)
    assert br.generate_rows(50, seed=7, held_out=False) != br.generate_rows(50, seed=8, held_out=False)


def test_every_label_is_schema_valid_and_follows_the_rules():
    for held_out in (False, True):
        for row in br.generate_rows(2000, seed=1, held_out=held_out):
            label = row["output"]
            assert schema_errors(label, br.SCHEMA) == [], row
            if label["error_message"] is not None:
                assert label["error_message"] in row["input"]  # copied exactly
            if label["app_version"] is not None:
                major, minor, _patch = label["app_version"].split(".")
                assert f"{major}.{minor}" in row["input"]


def test_severity_rules():
    rows = br.generate_rows(3000, seed=2, held_out=False)
    by_title = {i.title: i for i in br.ISSUES}
    for row in rows:
        issue = by_title[row["output"]["title"]]
        expected = br.SEVERITY_BY_KIND[issue.kind]
        workaround = any(w.lower() in row["input"].lower() for w in br.WORKAROUNDS[0] + br.WORKAROUNDS[1])
        if expected == "high" and workaround:
            expected = "medium"
        assert row["output"]["severity"] == expected, row


def test_test_split_styles_and_phrasings_are_absent_from_train():
    train = "\n".join(r["input"] for r in br.generate_rows(3000, seed=3, held_out=False))
    test_rows = br.generate_rows(500, seed=4, held_out=True)
    assert "Subject:" not in train and "**Describe the bug**" not in train
    assert all(r["input"].startswith(("Subject:", "**Describe the bug**")) for r in test_rows)
    held_out_phrases = [p for issue in br.ISSUES for p in issue.test]
    held_out_phrases += [p for _, test in br.PLATFORM_PHRASES.values() for p in test]
    held_out_phrases += [p for _, test in (*br.REPRO_PHRASES.values(), *br.REGRESSION_PHRASES.values()) for p in test]
    held_out_phrases += list(br.WORKAROUNDS[1]) + list(br.ERROR_FORMS[1]) + list(br.VERSION_FORMS[1])
    # "{M}.{m}" in a phrase stands for numbers, "{err}" for an error text
    patterns = [
        re.compile(re.sub(r"\\\{\w+\\\}", lambda m: r"\d+" if len(m[0]) < 6 else ".+", re.escape(p.lower())))
        for p in held_out_phrases
    ]
    for phrase, pattern in zip(held_out_phrases, patterns, strict=True):
        assert not pattern.search(train.lower()), phrase
    test_text = "\n".join(r["input"] for r in test_rows).lower()
    assert sum(bool(p.search(test_text)) for p in patterns) > len(held_out_phrases) * 0.9


def test_reports_vary_in_the_ways_real_ones_do():
    inputs = [r["input"] for r in br.generate_rows(1000, seed=5, held_out=False)]
    assert any("ERROR [" in t for t in inputs)  # pasted logs
    assert any("    at com.driftwood." in t for t in inputs)  # stack traces
    assert any(t.isupper() is False and "!!!" in t for t in inputs)  # angry
    assert any(t.startswith(("Bug:", "Problem:", "Issue report")) for t in inputs)  # bullet lists
    assert any("the latest version" in t for t in inputs)  # a version with no number → null
    assert len(set(inputs)) > 990


def test_writes_a_loadable_task(tmp_path):
    out = br.write_bug_reports(tmp_path / "bugs", n=40, n_eval=10, n_test=10)
    task = load_task(out / "task.yaml")
    assert len(task.instruction.split()) > 300  # a long instruction, as teams really write
    assert task.output.kind == "json" and task.output.free_text_fields == ["title"]
    assert task.json_schema() == json.loads(json.dumps(br.SCHEMA))
    assert len((out / "train.jsonl").read_text().splitlines()) == 40
    assert not task.train.model_fields_set  # no hand-tuned settings: the demo trains with the recipe's choices


def test_a_report_states_how_often_only_when_its_label_says_so():
    """The instruction maps "every time", "whenever", "sometimes", "once" to a reproducibility value, so a report
    whose label is null must not say any of them (a symptom like "every time I export as PDF it crashes" under
    reproducibility null taught the model that the instruction's own rule was wrong)."""
    cues = r"every ?time|whenever|always|sometimes|intermittent|occasionally|once|each time|all the time"
    cue = re.compile(rf"\b({cues})\b")
    for held_out in (False, True):
        for row in br.generate_rows(3000, seed=6, held_out=held_out):
            if row["output"]["reproducibility"] is None:
                assert not cue.search(row["input"].lower()), row["input"]
