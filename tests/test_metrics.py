"""Metrics on hand-made cases: broken JSON, wrong types, missing fields, free text, text overlap."""

from __future__ import annotations

import json

import pytest

from tasktune.metrics import diff, extract_json, field_scores, json_metrics, rouge_l, text_metrics, token_f1

REF = {"title": "App crashes on export", "severity": "high", "platform": None, "regression": True,
       "tags": ["pdf", "export"]}  # fmt: skip
SCHEMA = {
    "type": "object",
    "properties": {"severity": {"enum": ["high", "low"]}, "regression": {"type": ["boolean", "null"]}},
    "required": ["severity"],
}


def _m(preds, refs=None, **kw):
    refs = refs or [json.dumps(REF)] * len(preds)
    return json_metrics(preds, refs, SCHEMA, **kw)


def test_perfect_answer():
    m = _m([json.dumps(REF)])
    assert m["valid_json_rate"] == m["schema_valid_rate"] == m["field_accuracy"] == m["exact_match"] == 1.0


def test_broken_json_scores_zero_fields():
    m = _m(['{"title": "App crashes on export", "severity": "high"'])  # cut off: no closing brace
    assert m["valid_json_rate"] == 0.0 and m["json_found_rate"] == 0.0
    assert m["field_accuracy"] == 0.0 and m["exact_match"] == 0.0


def test_wrong_types_are_wrong():
    pred = dict(REF, regression="true", platform="null")  # strings where a bool and a null belong
    scores = field_scores(pred, REF)
    assert scores["regression"] == 0.0 and scores["platform"] == 0.0
    assert scores["severity"] == 1.0
    m = _m([json.dumps(pred)])
    assert m["schema_valid_rate"] == 0.0  # "true" is not a boolean
    assert m["field_accuracy"] == pytest.approx(4 / 6)


def test_missing_and_extra_fields():
    pred = {k: v for k, v in REF.items() if k != "severity"} | {"extra": 1}
    scores = field_scores(pred, REF)
    assert scores["severity"] == 0.0 and len(scores) == 6
    assert _m([json.dumps(pred)])["exact_match"] == 0.0
    assert any("unexpected field" in d for d in diff(json.dumps(pred), json.dumps(REF), "json"))


def test_normalised_exact_match_and_list_leaves():
    pred = dict(REF, severity=" HIGH ", tags=["pdf"])
    scores = field_scores(pred, REF)
    assert scores["severity"] == 1.0
    assert scores["tags[0]"] == 1.0 and scores["tags[1]"] == 0.0


def test_free_text_fields_use_token_f1():
    pred = dict(REF, title="app crashes during export")
    exact = field_scores(pred, REF)["title"]
    f1 = field_scores(pred, REF, {"title"})["title"]
    assert exact == 0.0
    assert f1 == pytest.approx(token_f1("app crashes during export", "App crashes on export")) == pytest.approx(0.75)


def test_lenient_extraction_credits_fields_but_not_validity():
    fenced = "Here you go:\n```json\n" + json.dumps(REF) + "\n```"
    assert extract_json(fenced) == REF
    assert extract_json("Sure! " + json.dumps(REF) + " Hope it helps") == REF
    m = _m([fenced])
    assert m["valid_json_rate"] == 0.0 and m["schema_valid_rate"] == 0.0
    assert m["json_found_rate"] == 1.0 and m["field_accuracy"] == 1.0


def test_text_metrics():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("the cat", "a dog") == 0.0
    assert rouge_l("cat the sat", "the cat sat") == pytest.approx(2 / 3)
    m = text_metrics(["Refund issued to the customer", "x"], ["refund issued to the customer", "completely different"])
    assert m["exact_match"] == 0.5
    assert m["rouge_l"] == pytest.approx(0.5)
    assert 0 < m["chrf"] < 1
