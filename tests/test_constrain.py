"""Constrained decoding: schema inference, copy fields, and answers that cannot break the schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tasktune.constrain import Constraint, infer_schema, input_spans, is_span, suggested_copy_fields
from tasktune.errors import ConfigError

# Bounded strings and arrays keep a random model's answers short enough to finish inside max_new_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {"type": "string", "enum": ["bug", "billing", "account"]},
        "urgent": {"type": "boolean"},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    },
    "required": ["kind", "urgent", "count", "tags"],
    "additionalProperties": False,
}
INPUTS = [f"ticket {i}: the app crashes when I open settings {i * 7} times" for i in range(12)]


# --- schema inference ----------------------------------------------------------------------------------------------
def test_infer_schema_keys_types_required_and_nesting():
    answers = [
        {"title": "Crash on start", "n": 3, "tags": ["ios"], "who": {"name": "Ann"}},
        {"title": "Sync lost", "n": 2.5, "tags": [], "who": {"name": "Bo", "team": "core"}, "extra": None},
    ]
    s = infer_schema(answers)
    assert list(s["properties"]) == ["title", "n", "tags", "who", "extra"]  # first-seen order: the decoding order
    assert s["required"] == ["title", "n", "tags", "who"]  # "extra" is missing from one answer
    assert s["additionalProperties"] is False
    assert s["properties"]["n"] == {"type": "number"}  # 3 and 2.5: a number, not integer-or-number
    assert s["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert s["properties"]["who"]["required"] == ["name"]
    assert s["properties"]["extra"] == {"type": "null"}
    for a in answers:
        jsonschema.validate(a, s)


def test_infer_schema_enum_only_for_few_values_seen_often():
    often = [{"severity": v} for v in ["low", "high", "medium"] * 10]
    assert infer_schema(often)["properties"]["severity"] == {"type": "string", "enum": ["high", "low", "medium"]}
    rare = [{"severity": v} for v in ["low", "high", "medium"] * 3]  # 9 rows: too few to trust a closed list
    assert infer_schema(rare)["properties"]["severity"] == {"type": "string"}
    names = [{"name": f"user{i}"} for i in range(40)]  # 40 distinct values: free text
    assert infer_schema(names)["properties"]["name"] == {"type": "string"}


def test_infer_schema_mixed_types():
    assert infer_schema([1, "a", None]) == {"type": ["integer", "string", "null"]}
    mixed = infer_schema([{"a": 1}, [1, 2]])
    assert {"type": "array", "items": {"type": "integer"}} in mixed["anyOf"]
    assert infer_schema([]) == {}


# --- copy fields ---------------------------------------------------------------------------------------------------
def test_spans_follow_piece_boundaries():
    text = "rose from about $350 per kg to 5km"
    assert is_span("$350 per kg", text) and is_span("km", text) and is_span("5", text)
    assert not is_span("bout", text)  # inside a word
    assert not is_span("350 per  kg", text)  # not verbatim
    spans = input_spans("a b c", max_pieces=2)
    assert spans == ["a", "a b", "b", "b c", "c"]


def test_suggested_copy_fields_needs_nearly_every_value_to_be_a_span():
    pairs = [(f"I walked {i} km today", [{"surface": f"{i} km", "unit": "kilometre"}]) for i in range(30)]
    assert suggested_copy_fields(pairs) == ["$[].surface"]
    pairs[0] = ("I walked 3 km today", [{"surface": "three km", "unit": "kilometre"}])  # one of 30 is not: 96.7%
    assert suggested_copy_fields(pairs) == []


# --- the engine on a model --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny import scramble_weights

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    scramble_weights(model)  # answers that depend on the input: a forced or leaked row shows
    return model, AutoTokenizer.from_pretrained(tiny_model)


def _predictor(tiny, **kw):
    from tasktune.predict import Predictor

    model, tok = tiny
    return Predictor(model, tok, instruction=None, output_kind="json", max_new_tokens=160, name="tiny", **kw)


def test_random_model_answers_parse_and_follow_the_schema_only_under_the_constraint(tiny):
    free = _predictor(tiny, schema=SCHEMA, constrain=False).predict(INPUTS, batch_size=4)
    assert sum(p.valid_json for p in free) < len(INPUTS)  # the planted defect: random weights do not write JSON
    preds = _predictor(tiny, schema=SCHEMA).predict(INPUTS, batch_size=4)
    for p in preds:
        assert p.valid_json and p.stopped, p.output
        jsonschema.validate(p.json, SCHEMA)
    assert len({p.output for p in preds}) > 1  # the inputs steer the answers: not one forced string


def test_constrained_batches_equal_single_requests(tiny):
    """Left padding and finished rows must not leak between the rows of a batch."""
    p = _predictor(tiny, schema=SCHEMA)
    batched = [x.output for x in p.predict(INPUTS, batch_size=6)]
    single = [x.output for x in p.predict(INPUTS, batch_size=1)]
    assert batched == single


def test_no_schema_still_gives_valid_json(tiny):
    for p in _predictor(tiny, schema=None).predict(INPUTS[:4], batch_size=4):
        assert p.valid_json and p.stopped, p.output  # any JSON value, finished before the cap


# Nothing bounds these values: a model that runs on (random weights do) fills any cap with one string or number.
UNBOUNDED = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "sizes": {"type": "array", "items": {"type": "number"}}},
    "required": ["name", "sizes"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("cap", [24, 32, 48])
def test_answers_that_run_on_are_finished_before_the_cap(tiny, cap, monkeypatch):
    from tasktune.constrain import ConstrainedLogits

    p = _predictor(tiny, schema=UNBOUNDED)
    p.max_new_tokens = cap
    preds = p.predict(INPUTS, batch_size=4)
    for x in preds:
        assert x.valid_json and x.stopped and x.generated_tokens <= cap, x.output
        jsonschema.validate(x.json, UNBOUNDED)
    monkeypatch.setattr(ConstrainedLogits, "CLOSE_HORIZON", 0)  # the planted defect: no way out near the cap
    cut = [x for x in p.predict(INPUTS, batch_size=4) if not x.valid_json]
    assert cut, "random weights should run past the cap without the closer"


def test_copy_fields_only_write_spans_of_the_input(tiny):
    schema = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"surface": {"type": "string"}, "unit": {"type": "string", "maxLength": 8}},
            "required": ["surface", "unit"],
            "additionalProperties": False,
        },
        "minItems": 1,
        "maxItems": 2,
    }
    preds = _predictor(tiny, schema=schema, copy_fields=["$[].surface"]).predict(INPUTS, batch_size=4)
    seen = 0
    for text, p in zip(INPUTS, preds, strict=True):
        assert p.valid_json, p.output
        for item in p.json:
            assert is_span(item["surface"], text), (item["surface"], text)
            seen += 1
    assert seen >= len(INPUTS)


def test_a_schema_the_engine_cannot_compile_names_the_file(tiny_tokenizer):
    tok = tiny_tokenizer
    bad = {"type": "object", "properties": {"a": {"type": "string", "not": {"const": "x"}}}}
    with pytest.raises(ConfigError) as e:
        Constraint(tok, [tok.eos_token_id], len(tok), bad, where="task/schema.json")
    assert "task/schema.json" in str(e.value) and "not" in str(e.value)


def test_schema_validity_of_inferred_schema_roundtrip(tiny):
    answers = [{"kind": k, "urgent": u} for k in ("bug", "billing", "account") for u in (True, False)] * 4
    schema = infer_schema(answers)
    for p in _predictor(tiny, schema=schema).predict(INPUTS[:6], batch_size=3):
        jsonschema.validate(json.loads(p.output), schema)
        assert p.json["kind"] in {"bug", "billing", "account"}


# --- the data check shows the schema and suggests copy fields -------------------------------------------------------
def test_check_infers_the_schema_suggests_copy_fields_and_fix_writes_schema_json(tmp_path, tiny_tokenizer):
    import yaml

    from tasktune.check import check_dataset, task_splits, write_fixed
    from tasktune.config import load_task
    from tests.tiny import write_jsonl

    rows = [{"input": f"order {i} of {i + 2} kg flour for Ann", "output": {"who": "Ann", "amount": f"{i + 2} kg",
             "kind": ["flour", "sugar"][i % 2]}} for i in range(40)]  # fmt: skip
    write_jsonl(tmp_path / "train.jsonl", rows)
    (tmp_path / "task.yaml").write_text("name: orders\noutput: {kind: json}\ndata: {train: train.jsonl}\n")
    task = load_task(tmp_path / "task.yaml")
    report = check_dataset(task_splits(task), task=task, tokenizer=tiny_tokenizer)
    found = {f.code: f for f in report.findings}
    schema = found["inferred-schema"].evidence["schema"]
    assert schema["required"] == ["who", "amount", "kind"]
    assert schema["properties"]["kind"] == {"type": "string", "enum": ["flour", "sugar"]}
    # "kind" is "sugar" in half the rows, never in the input: not a copy field; "who" and "amount" always are
    assert found["copy-fields"].evidence["copy_fields"] == ["$.who", "$.amount"]

    write_fixed(report, task_splits(task), tmp_path / "fixed", task=task)
    assert json.loads((tmp_path / "fixed" / "schema.json").read_text()) == schema
    fixed = yaml.safe_load((tmp_path / "fixed" / "task.yaml").read_text())
    assert fixed["output"]["schema"] == "schema.json"
    assert load_task(tmp_path / "fixed" / "task.yaml").json_schema() == schema

    (tmp_path / "task.yaml").write_text("name: orders\noutput: {kind: json, copy_fields: [$.who, $.amount]}\n"
                                        "data: {train: train.jsonl}\n")  # fmt: skip
    task = load_task(tmp_path / "task.yaml")
    codes = check_dataset(task_splits(task), task=task, tokenizer=tiny_tokenizer).codes()
    assert "copy-fields" not in codes  # already set: nothing left to suggest


def test_a_run_keeps_the_schema_it_decodes_under_and_eval_reports_both_ways(task_dir, tiny_model, tmp_path):
    from tasktune.config import TrainConfig, load_task
    from tasktune.data import read_examples
    from tasktune.evaluate import evaluate
    from tasktune.predict import Predictor
    from tasktune.rundir import RunInfo
    from tasktune.train import train

    task = load_task(task_dir / "task.yaml")  # a JSON task without a schema
    cfg = TrainConfig(model=str(tiny_model), method="lora", max_steps=4, batch_size=8, precision="fp32",
                      recipe="off")  # fmt: skip
    train(task, cfg, tmp_path / "run")
    info = RunInfo.load(tmp_path / "run")
    assert info.schema_source == "inferred from 48 training answers"
    assert info.schema["required"] == ["kind", "urgent"] and info.schema["properties"]["urgent"] == {"type": "boolean"}
    test = read_examples(task.data_path("test"))
    on = evaluate(Predictor.from_run(tmp_path / "run"), test, task, name="on", mode="bare_input")
    off = evaluate(Predictor.from_run(tmp_path / "run", constrain=False), test, task, name="off", mode="bare_input")
    assert on.constrained and not off.constrained
    assert on.metrics["valid_json_rate"] == 1.0  # 4 steps on a tiny model: only the constraint makes it JSON
    assert off.metrics["valid_json_rate"] < 1.0


def test_a_label_task_answers_with_its_labels_only(tmp_path, tiny_model):
    from tasktune.config import TrainConfig, load_task
    from tasktune.constrain import task_labels
    from tasktune.data import read_examples
    from tasktune.evaluate import evaluate
    from tasktune.predict import Predictor
    from tasktune.rundir import RunInfo
    from tasktune.train import train
    from tests.tiny import write_jsonl

    labels = ["billing", "bug report", "feature request", 'say "thanks"']
    rows = [{"input": f"message {i}: {INPUTS[i % len(INPUTS)]}", "output": labels[i % 4]} for i in range(52)]
    write_jsonl(tmp_path / "train.jsonl", rows[:40])
    write_jsonl(tmp_path / "test.jsonl", rows[40:])
    (tmp_path / "task.yaml").write_text("name: labels\noutput: {kind: text}\ndata: {train: train.jsonl, test: "
                                        "test.jsonl}\n")  # fmt: skip
    task = load_task(tmp_path / "task.yaml")
    assert task_labels(task) == sorted(labels)
    prose = [{"input": f"q{i}", "output": f"a long free answer number {i}"} for i in range(40)]
    write_jsonl(tmp_path / "prose.jsonl", prose)
    assert task_labels(load_task(tmp_path / "task.yaml"), read_examples(tmp_path / "prose.jsonl")) is None
    cfg = TrainConfig(model=str(tiny_model), method="lora", max_steps=2, batch_size=8, precision="fp32",
                      recipe="off", validate_every=0)  # fmt: skip
    train(task, cfg, tmp_path / "run")
    assert RunInfo.load(tmp_path / "run").labels == sorted(labels)
    test = read_examples(tmp_path / "test.jsonl")
    on = evaluate(Predictor.from_run(tmp_path / "run"), test, task, name="on", mode="bare_input")
    assert on.constrained == "label-constrained"
    assert all(p["output"] in labels for p in on.predictions), [p["output"] for p in on.predictions]
    off = Predictor.from_run(tmp_path / "run", constrain=False).predict(test)
    assert any(p.output not in labels for p in off)  # the planted defect: 2 steps on a tiny model do not learn them
