"""Task metrics named in task.yaml: each on hand-made cases, validation of the names, and a tiny-model compare and
eval that report them next to the built-in metrics."""

from __future__ import annotations

import json

import pytest
import yaml

from tasktune.cli import main
from tasktune.compare import CompareConfig, compare
from tasktune.config import load_task
from tasktune.errors import ConfigError
from tasktune.examples import get_example
from tasktune.task_metrics import METRICS, compute, policy_violations

SUMMARY_META = {"facts": [["sync"], ["reinstall"], ["cache"], [r"refund|money back"], [r"\bhigh\b"]]}


def _score(name, prediction, meta, reference="ref"):
    return METRICS[name].fn(prediction, reference, meta)


def test_key_fact_recall_counts_the_facts_a_summary_states():
    full = ("Problem: notes do not sync. Tried: reinstalling the app, clearing the cache. Requested: a refund."
            " Urgency: high.")  # fmt: skip
    assert _score("key_fact_recall", full, SUMMARY_META) == 1.0
    missing_cache = full.replace(", clearing the cache", "")
    assert _score("key_fact_recall", missing_cache, SUMMARY_META) == pytest.approx(0.8)
    assert _score("key_fact_recall", full.replace("a refund", "their money back"), SUMMARY_META) == 1.0  # alternative
    assert _score("key_fact_recall", full.replace("high", "highest"), SUMMARY_META) == pytest.approx(0.8)  # \b
    assert _score("key_fact_recall", full, {}) is None  # no facts: the row is not scored
    assert _score("summary_words", "Problem: sync fails.", {}) == 3.0
    assert _score("length_ratio", "one two", {}, reference="one two three four") == 0.5


KNOWN = {"answerable": True, "facts": [[r"\$ ?4\b"], ["year"]]}
UNKNOWN = {"answerable": False, "support": [r"support@driftwood\.app"]}


def test_invented_answer_versus_abstention():
    abstain = "I don't have information about that. Please contact support@driftwood.app."
    invented = "Yes, Driftwood integrates with Salesforce on the Team plan."
    vague = "I'm not sure."  # abstains, but points nowhere
    assert _score("invented_answer_rate", invented, UNKNOWN) == 1.0
    assert _score("invented_answer_rate", abstain, UNKNOWN) == 0.0
    assert _score("abstention_rate", abstain, UNKNOWN) == 1.0
    assert _score("abstention_rate", vague, UNKNOWN) == 0.0 and _score("invented_answer_rate", vague, UNKNOWN) == 0.0
    assert _score("invented_answer_rate", invented, KNOWN) is None  # only rows whose answer was never given
    right, wrong = "Plus costs $4 per month or $40 per year.", "Plus costs $5 per month or $50 per year."
    assert _score("fact_accuracy", right, KNOWN) == 1.0 and _score("fact_accuracy", wrong, KNOWN) == 0.0
    assert _score("fact_accuracy", "I don't know, $4 a year maybe", KNOWN) == 0.0  # hedging is not knowing
    assert _score("false_abstention_rate", abstain, KNOWN) == 1.0
    assert _score("fact_accuracy", right, UNKNOWN) is None
    # how small models phrase "I don't know", and answers that only sound like it
    for says_so in ("I don't have specific information about that.", "Sorry, I cannot provide details on that.",
                    "I'm not aware of such an option."):  # fmt: skip
        assert _score("invented_answer_rate", says_so, UNKNOWN) == 0.0, says_so
    for invents in ("Please don't hesitate to contact support, it works on Team.", "Yes, see Settings > Sync."):
        assert _score("invented_answer_rate", invents, UNKNOWN) == 1.0, invents


POLICY_META = {
    "must": [["escalat"], ["security team"]],
    "must_not": [r"\bI (?:promise|guarantee)\b", r"calm down"],
    "rules": {"must[0]": "escalates", "must[1]": "to the security team", "must_not[0]": "no promises",
              "must_not[1]": "no rudeness"},
}  # fmt: skip


def test_policy_violation_versus_compliant_answer():
    good = "I'm sorry. I've escalated this to our security team; please change your password."
    assert _score("policy_compliance", good, POLICY_META) == 1.0 and policy_violations(good, POLICY_META) == []
    promise = good + " I promise nobody saw your notes."
    assert _score("policy_compliance", promise, POLICY_META) == 0.0
    assert policy_violations(promise, POLICY_META) == ["no promises"]
    assert policy_violations("Calm down, change your password.", POLICY_META) == [
        "escalates", "to the security team", "no rudeness"]  # fmt: skip
    assert _score("policy_compliance", good, {}) is None


def test_compute_averages_over_the_rows_a_metric_applies_to():
    preds = ["I don't know, ask support.", "Plus costs $4 per month, $40 a year.", "Sure, it does that."]
    metas = [UNKNOWN | {"support": ["support"]}, KNOWN, UNKNOWN]
    out = compute(["invented_answer_rate", "fact_accuracy", "key_fact_recall"], preds, preds, metas)
    assert out["invented_answer_rate"] == 0.5 and out["invented_answer_rate_n"] == 2
    assert out["fact_accuracy"] == 1.0 and out["fact_accuracy_n"] == 1
    assert out["key_fact_recall"] == 1.0 and out["key_fact_recall_n"] == 1  # the known row has facts
    assert compute(["policy_compliance"], preds, preds, [None] * 3) == {"policy_compliance": None,
                                                                        "policy_compliance_n": 0}  # fmt: skip


def test_unknown_metric_name_is_a_clear_error(tmp_path, capsys):
    task = tmp_path / "task.yaml"
    task.write_text("name: t\nmetrics: [key_fact_recall, rouge]\ndata: {test: test.jsonl}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_task(task)
    assert str(task) in str(e.value) and "'metrics'" in str(e.value) and "'rouge'" in str(e.value)
    assert "key_fact_recall" in str(e.value) and "Value error" not in str(e.value)  # lists the choices
    code = main(["eval", "--model", "m", "--task", str(task)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown metric(s) 'rouge'" in err and "Traceback" not in err


def _tiny_house_policy(tmp_path):
    """The house-policy example, small, with a short instruction: the tiny model has 512 positions."""
    out = get_example("house-policy")(tmp_path / "hp", n=40, seed=0, n_eval=8, n_test=10)
    data = yaml.safe_load((out / "task.yaml").read_text(encoding="utf-8"))
    data["instruction"] = "Follow the Driftwood support conduct policy."
    (out / "task.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return out


def test_tiny_compare_and_eval_report_the_task_metrics(tiny_model, tmp_path, capsys):
    task_dir = _tiny_house_policy(tmp_path)
    overrides = {"model": str(tiny_model), "precision": "fp32", "batch_size": 8}
    ccfg = CompareConfig(methods=["instruction", "lora"], budget_tokens=1500, test_rows=6, isolate=False)
    result = compare(task_dir / "task.yaml", ccfg, tmp_path / "cmp", overrides)
    for r in result.methods:
        assert r["metric"] == "policy_compliance" and r["quality"] == r["metrics"]["policy_compliance"]
        assert 0 <= r["quality"] <= 1 and r["metrics"]["policy_compliance_n"] == 6 and "rouge_l" in r["metrics"]
    md = (tmp_path / "cmp" / "report.md").read_text(encoding="utf-8")
    assert "| method | quality | policy_compliance |" in md
    html = (tmp_path / "cmp" / "report.html").read_text(encoding="utf-8")
    assert "<th>policy_compliance</th>" in html
    saved = json.loads((tmp_path / "cmp" / "results.json").read_text(encoding="utf-8"))
    answers = (tmp_path / "cmp" / "methods" / "lora" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(answers) == 6 and {"output", "reference"} <= set(json.loads(answers[0]))  # why it scored so
    assert "policy_compliance" in saved["methods"][1]["metrics"]

    run = tmp_path / "cmp" / "methods" / "lora" / "run"
    report = tmp_path / "eval.json"
    code = main(["eval", str(run), "--data", str(task_dir / "test.jsonl"), "--limit", "4", "--json", str(report)])
    printed = capsys.readouterr().out
    assert code == 0 and "policy_compliance" in printed and "ROUGE-L" in printed
    assert 0 <= json.loads(report.read_text())["policy_compliance"] <= 1  # the run remembers its task's metrics


def test_tasks_without_task_metrics_keep_their_compare_fingerprint(task_dir):
    """Earlier compare folders stay resumable: a task that names no metrics plans exactly the spec it planned before."""
    from tasktune.compare import plan_methods
    from tasktune.config import TrainConfig

    task = load_task(task_dir / "task.yaml")
    specs, _ = plan_methods(task_dir / "task.yaml", task, CompareConfig(methods=["instruction"]), TrainConfig(), 16)
    assert "metrics" not in specs["instruction"]["task"]
    task.metrics = ["summary_words"]
    specs2, _ = plan_methods(task_dir / "task.yaml", task, CompareConfig(methods=["instruction"]), TrainConfig(), 16)
    assert specs2["instruction"]["task"]["metrics"] == ["summary_words"]
    assert specs2["instruction"]["fingerprint"] != specs["instruction"]["fingerprint"]
