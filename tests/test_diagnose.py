"""The run doctor: each planted defect in a tiny run produces its own diagnosis, and a healthy run gets no error.

Runs train the tiny model for real (seeded; fp32 so that bf16 support on the machine changes nothing) through the
library or the CLI, then diagnose them. Findings are checked by id, their evidence by number.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from tasktune.cli import main
from tasktune.config import load_task, merge_overrides
from tasktune.diagnose import DiagnoseConfig, diagnose
from tasktune.diagnose.curves import curve_findings
from tasktune.diagnose.findings import Finding, demote_consequences
from tasktune.diagnose.memorisation import TrainingAnswers, membership
from tasktune.diagnose.outputs import (
    continues_past_end,
    follows_template,
    json_validity_findings,
    memorisation_findings,
    probe_findings,
    stopping_findings,
    template_markers,
)
from tasktune.diagnose.probes import Probe, load_probes
from tasktune.train import train
from tests.tiny import WORDS, make_rows, write_jsonl

# A run that learns the tiny JSON task: valid JSON, stops at <|im_end|>. The EOS test changes only the labels.
HEALTHY = {"method": "full", "learning_rate": 2e-2, "max_steps": 50, "batch_size": 8, "eval_every": 10}
FAST = DiagnoseConfig(limit=8, precision="fp32", probes=False)


def _task(folder: Path, train_rows, eval_rows, test_rows, kind: str = "json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("eval", eval_rows), ("test", test_rows)):
        write_jsonl(folder / f"{name}.jsonl", rows)
    (folder / "task.yaml").write_text(
        f"name: tiny\noutput: {{kind: {kind}}}\ndata: {{train: train.jsonl, eval: eval.jsonl, test: test.jsonl}}\n"
    )
    return folder / "task.yaml"


def _train(task_file: Path, tiny_model: Path, out: Path, **settings) -> Path:
    task = load_task(task_file)
    cfg = merge_overrides(task.train, {"model": str(tiny_model), "precision": "fp32", **settings})
    train(task, cfg, out, force=True)
    return out


def _json_task(folder: Path) -> Path:
    return _task(folder, make_rows(48, seed=1), make_rows(8, seed=2), make_rows(8, seed=3))


@pytest.fixture(scope="module")
def healthy_run(tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("healthy")
    return _train(_json_task(root / "data"), tiny_model, root / "run", **HEALTHY)


@pytest.fixture(scope="module")
def healthy(healthy_run):
    return diagnose(healthy_run, DiagnoseConfig(limit=8, precision="fp32", probe_max_new_tokens=16))


# --- planted defects on real tiny runs ----------------------------------------------------------------------------
def test_healthy_run_has_no_error_finding(healthy):
    assert healthy.errors == [], [f.message for f in healthy.errors]
    assert healthy.heldout["stopped_rate"] == 1.0
    assert healthy.heldout["invalid_json"] == 0
    # the tiny task's answers repeat (8 distinct), so copying them is what the references do too: no memorisation
    assert healthy.memorisation["reference_copy_rate"] == 1.0
    assert "memorisation" not in healthy.codes()
    member = healthy.memorisation["membership"]  # training rows are no likelier to the model than unseen ones
    assert member["n_train"] == member["n_unseen"] == 8
    assert member["auc"] < 0.9 and member["loss_ratio"] < 5, member


def test_format_drift_when_general_questions_meet_a_json_only_model(healthy):
    drift = healthy.get("format-drift")
    assert drift is not None and drift.severity == "warning"
    # most general questions get JSON back (77-80% in seeded runs), far above the finding's 30% threshold
    assert drift.evidence["tuned_in_task_format"] >= 0.6
    assert drift.evidence["base_in_task_format"] <= 0.1  # the untrained tiny model does not write JSON
    assert healthy.probes["n"] == len(load_probes())


def test_learning_rate_far_too_high_diverges(tiny_model, tmp_path):
    run = _train(
        _json_task(tmp_path / "data"),
        tiny_model,
        tmp_path / "run",
        **(HEALTHY | {"learning_rate": 1.0, "max_steps": 30}),
    )
    d = diagnose(run, FAST)
    assert d.codes("error") == {"loss-diverged"}
    f = d.get("loss-diverged")
    assert f.evidence["peak_loss"] > 1.5 * f.evidence["start_loss"]
    assert "--learning-rate 0.1 " in f.remedy
    # what the broken model then writes is reported as the consequence, not as a second cause
    assert all(x.cause == "loss-diverged" for x in d.findings if x.code in ("invalid-output", "no-stop"))


def test_learning_rate_far_too_low_does_not_learn_through_the_cli(tiny_model, tmp_path, capsys):
    task_file = _json_task(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["train", "--task", str(task_file), "--model", str(tiny_model), "--out", str(run), "--precision", "fp32",
            "--method", "full", "--learning-rate", "1e-7", "--max-steps", "20", "--batch-size", "8"]  # fmt: skip
    assert main(argv) == 0  # training itself succeeded; the diagnosis says it learned nothing
    out = capsys.readouterr().out
    assert "loss-flat" in out and "fix loss-flat: multiply the learning rate by 10: --learning-rate 1e-06" in out
    saved = json.loads((run / "diagnosis.json").read_text())
    assert {f["code"] for f in saved["findings"] if f["severity"] == "error"} == {"loss-flat"}
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "loss-flat" in html
    # the command on its own: exit 1 on an error finding, the result also where --json says
    assert main(["diagnose", str(run), "--limit", "4", "--no-probes", "--json", str(tmp_path / "d.json")]) == 1
    assert json.loads((tmp_path / "d.json").read_text())["summary"]["error"] == 1


def test_train_no_diagnose_flag(tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--task", str(_json_task(tmp_path / "data")), "--model", str(tiny_model), "--out", str(run),
            "--precision", "fp32", "--max-steps", "1", "--no-diagnose"]  # fmt: skip
    assert main(argv) == 0
    assert "tasktune diagnose" not in capsys.readouterr().out
    assert not (run / "diagnosis.json").exists() and not (run / "report.html").exists()


def _memorable_rows(n: int, seed: int, distinct: bool) -> list[dict]:
    """Inputs of random words; answers of 8 words that have nothing to do with the input. With `distinct`, row i's
    answer draws on its own 3 words, so each training answer is recognisable from any of its words (a model that
    recalls one recalls it whole); held-out answers draw on every word and are new."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pool = WORDS[3 * i : 3 * i + 3] if distinct else WORDS
        rows.append({"input": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9))),
                     "output": " ".join(rng.choice(pool) for _ in range(8))})  # fmt: skip
    return rows


def test_many_epochs_on_a_dozen_rows_overfit_and_memorise(tiny_model, tmp_path):
    task_file = _task(tmp_path / "data", _memorable_rows(12, 1, True), _memorable_rows(8, 2, False),
                      _memorable_rows(8, 3, False),
                      kind="text")  # fmt: skip
    run = _train(
        task_file,
        tiny_model,
        tmp_path / "run",
        method="full",
        learning_rate=2e-2,
        max_steps=100,
        batch_size=12,
        eval_every=10,
    )  # 100 epochs of 12 rows
    d = diagnose(run, FAST)
    assert d.codes("error") == {"overfitting", "memorisation"}
    over = d.get("overfitting").evidence
    assert over["best_eval_step"] < 100 and over["final_eval_loss"] > 1.2 * over["best_eval_loss"]
    assert over["checkpoint_at_best"] is None
    assert f"--max-steps {over['best_eval_step']}" in d.get("overfitting").remedy
    mem = d.get("memorisation").evidence
    assert mem["reference_copy_rate"] == 0.0  # the control: new inputs have new answers
    assert mem["output_copy_rate"] >= 0.5 and mem["wrong_copies"] >= 4
    assert mem["membership"]["auc"] >= 0.97 and mem["membership"]["loss_ratio"] >= 20, mem["membership"]
    assert "knows its training rows by heart" in d.get("memorisation").message
    assert "generalisation-gap" in d.codes("warning")


def test_eos_masked_in_labels_never_stops(tiny_model, tmp_path, monkeypatch, healthy):
    """The same run as the healthy one, but the end-of-turn token's label is masked (the pad == EOS collator bug)."""
    from tasktune.render import IGNORE, ChatFormat, Encoded

    encode = ChatFormat.encode_example

    def without_eos(self, messages):
        enc = encode(self, messages)
        n = len(self.end_ids)
        return Encoded(enc.input_ids, enc.labels[:-n] + [IGNORE] * n)

    monkeypatch.setattr(ChatFormat, "encode_example", without_eos)
    run = _train(_json_task(tmp_path / "data"), tiny_model, tmp_path / "run", **HEALTHY)
    d = diagnose(run, FAST)
    assert d.codes("error") == {"no-stop"}
    f = d.get("no-stop")
    assert f.evidence["rate"] == 1.0 and "<|im_end|>" in f.message
    assert f.evidence["complete_answer_then_more"] >= 2  # some write a whole JSON value, then go on
    assert "must be supervised" in f.remedy
    assert "no-stop" not in healthy.codes()  # the only difference to the healthy run is the mask


def test_diagnose_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a tasktune run" in err and "Traceback" not in err
    assert main(["diagnose", str(tmp_path), "--limit", "0"]) == 2
    assert "limit" in capsys.readouterr().err


# --- each rule on its own ----------------------------------------------------------------------------------------
def _records(losses, evals=None, grad=1.0):
    evals = evals or {}
    return [{"step": i + 1, "train/loss": v, "train/grad_norm": grad} | ({"eval/loss": evals[i + 1]} if i + 1 in evals
            else {}) for i, v in enumerate(losses)]  # fmt: skip


TRAIN = {"learning_rate": 2e-4, "batch_size": 4, "grad_accum": 1, "eval_every": 10}


def test_curves_nan_is_reported_with_its_step(tmp_path):
    found, _ = curve_findings(_records([2.0, 1.5, 1.2, math.nan, math.nan]), TRAIN, tmp_path)
    assert [f.code for f in found] == ["loss-not-finite"]
    assert found[0].evidence["step"] == 4 and "--learning-rate 2e-05" in found[0].remedy


def test_curves_a_spike_that_recovers_is_a_warning(tmp_path):
    losses = [3.0 - 0.05 * i for i in range(30)]
    losses[20] = 6.0
    found, _ = curve_findings(_records(losses), TRAIN, tmp_path)
    assert [(f.code, f.severity) for f in found] == [("loss-spikes", "warning")]
    assert found[0].evidence["worst_step"] == 21


def test_curves_zero_gradient_means_nothing_trainable(tmp_path):
    found, _ = curve_findings(_records([2.0] * 20, grad=0.0), TRAIN, tmp_path)
    assert [f.code for f in found] == ["loss-flat"] and "nothing is trainable" in found[0].remedy


def test_curves_overfitting_names_an_existing_checkpoint(tmp_path):
    (tmp_path / "checkpoints" / "step-20").mkdir(parents=True)
    losses = [2.0 * 0.9**i for i in range(60)]
    found, figures = curve_findings(_records(losses, {10: 1.5, 20: 1.2, 40: 1.6, 60: 2.0}), TRAIN, tmp_path, 40)
    over = next(f for f in found if f.code == "overfitting")
    assert over.severity == "error" and over.evidence["best_eval_step"] == 20
    assert over.evidence["checkpoint_at_best"].endswith("step-20") and "use it" in over.remedy
    assert over.evidence["epochs_at_best"] == 2.0  # 20 steps x 4 rows / 40 rows
    assert figures["best_eval_loss"] == 1.2


def test_curves_overfitting_severity_and_wobble(tmp_path):
    losses = [1.0 - 0.02 * i for i in range(40)]  # the train loss more than halves after the best eval
    mild = {10: 1.0, 20: 0.9, 30: 0.93, 40: 0.94}
    found, _ = curve_findings(_records(losses, mild), TRAIN, tmp_path)
    assert {(f.code, f.severity) for f in found} == {("overfitting", "warning"), ("generalisation-gap", "warning")}
    wobble = {10: 1.0, 20: 0.9, 30: 0.905, 40: 0.91}  # +1%: not a trend
    found, _ = curve_findings(_records(losses, wobble), TRAIN, tmp_path)
    assert "overfitting" not in {f.code for f in found}
    # a small rise while the train loss fell 10x: the model fits the rows, not the task
    steep = [0.85**i for i in range(40)]
    found, _ = curve_findings(_records(steep, mild), TRAIN, tmp_path)
    over = next(f for f in found if f.code == "overfitting")
    assert over.severity == "error" and over.evidence["train_loss_fall"] >= 10


def test_curves_healthy_and_sparse_eval(tmp_path):
    losses = [2.0 * 0.97**i for i in range(50)]
    found, _ = curve_findings(_records(losses, {50: 0.5}), TRAIN, tmp_path)
    assert [f.code for f in found] == ["eval-sparse"] and "--eval-every 5" in found[0].remedy


def test_probe_rules():
    p = {x.id: x for x in load_probes()}
    assert len(p) >= 36 and len({x.category for x in p.values()}) >= 6
    assert p["add-7-5"].passes("7 + 5 = 12") and not p["add-7-5"].passes("7 + 5")
    assert p["g-in-kg"].passes("There are 1,000 grams in a kilogram.")
    assert p["capital-france"].passes("The capital of France is Paris.") and not p["capital-france"].passes("Parisian")
    assert p["sun-star"].passes("Yes, it is.") and not p["sun-star"].passes("No.")
    assert p["sky-colour"].passes("Blue.") and not p["sky-colour"].passes("The sky is blue.")
    assert p["upper-hello"].passes("HELLO") and not p["upper-hello"].passes("hello")
    assert not p["capital-france"].passes('{"kind": "bug", "urgent": false}')


def test_forgetting_and_format_drift_rules():
    probes = [Probe(f"p{i}", "c", f"What is {i + 10} + 1?", "number", value=i + 11) for i in range(10)]
    base = [(f"It is {i + 11}.", True) for i in range(10)]
    tuned = [('{"kind": "bug"}', True)] * 8 + [("It is 19.", True), ("It is 20.", True)]
    found, figures = probe_findings(probes, base, tuned, lambda a, s: a.startswith("{"))
    assert {f.code for f in found} == {"forgetting", "format-drift"}
    assert figures["base_score"] == 1.0 and figures["tuned_score"] == 0.2
    assert figures["tuned_in_task_format"] == 0.8 and figures["base_in_task_format"] == 0.0
    found, _ = probe_findings(probes, base, base, lambda a, s: a.startswith("{"))
    assert found == []


def test_text_format_drift_is_caught_by_the_answer_template_not_only_by_copied_text():
    """A summary model that answers "What is 7 + 5?" with "Problem: ... Tried: ..." shares labels with its training
    answers, not 5-grams: the template check must call that the task's format, and must find no template in prose."""
    topics = ["sync fails", "login loops", "export is blank", "search is slow", "billing twice", "reminders late"]
    tried, requested = ("a restart", "reinstalling", "nothing yet"), ("a fix", "a refund", "a call")
    train = [f"Problem: {t}. Tried: {u}. Requested: {r}. Urgency: {g}."
             for t in topics for u in tried for r in requested for g in ("high", "low", "medium")]  # fmt: skip
    base = ["It is 12.", "The capital of France is Paris.", "Yes, the sun is a star.", "A week has seven days.",
            "You should drink water and rest.", "Blue.", "HELLO", "There are 60 seconds in a minute.",
            "The problem is that the question is unclear.", "Paris is the capital."]  # fmt: skip
    markers = template_markers(train, base)
    assert markers == ["problem:", "requested:", "tried:", "urgency:"]  # "the", "a" and "problem" (no colon) drop out
    drifted = "Problem: the sum is ambiguous. Tried: reordering the numbers. Requested: an answer. Urgency: low."
    assert follows_template(drifted, markers) and not TrainingAnswers(train).ngram_overlap(drifted) >= 0.5
    assert not follows_template("It is 12, because 7 + 5 = 12.", markers)
    assert not follows_template("Problem: none.", markers)  # one label of four is not the template
    prose = ["Dark mode is under Settings > Appearance.", "The Pro plan costs 8 euros a month.",
             "Notes stay in the Trash for 30 days.", "You can share a notebook by right-clicking it.",
             "Sync works on up to five devices.", "Exports support PDF and Word.", "Reminders use the bell icon.",
             "We don't know that yet; please contact support.", "Offline search is not available."]  # fmt: skip
    assert template_markers(prose, base) == []  # answers without a shared frame: the check stays off
    frame = [f"I'm sorry about the {t}; our team will look at it and reply by email." for t in topics]
    assert {"sorry", "team", "reply", "email"} <= set(template_markers(frame, base))  # a fixed sentence is one
    assert template_markers(train, []) == [] and template_markers([], base) == []
    probes = [Probe(f"p{i}", "c", f"What is {i + 10} + 1?", "number", value=i + 11) for i in range(len(base))]
    tuned = [(drifted, True)] * 6 + [(a, True) for a in base[6:]]
    found, fig = probe_findings(probes, [(a, True) for a in base], tuned, lambda a, s: follows_template(a, markers))
    assert "format-drift" in {f.code for f in found} and fig["tuned_in_task_format"] == 0.6


def test_memorisation_is_measured_against_the_references():
    train_answers = [f"ticket {w} goes to the {v} team for review today" for w in WORDS[:10] for v in WORDS[10:12]]
    index = TrainingAnswers(train_answers)
    where = [f"train.jsonl:{i + 1}" for i in range(len(train_answers))]
    refs = [
        f"a brand new answer about {w} and {v} written for this input"
        for w, v in zip(WORDS[:10], WORDS[5:15], strict=True)
    ]
    copies = train_answers[:10]
    found, fig = memorisation_findings(copies, refs, index.match(copies), index.match(refs), where, {})
    assert [f.code for f in found] == ["memorisation"] and fig["output_copy_rate"] == 1.0
    assert "train.jsonl:1" in found[0].message
    # a task whose right answers repeat: the outputs copy training answers exactly as often as the references do
    found, fig = memorisation_findings(copies, copies, index.match(copies), index.match(copies), where, {})
    assert found == [] and fig["reference_copy_rate"] == 1.0
    # near-verbatim: in a longer answer, one word changed still counts as a copy
    long = [f"{a} and then {b}" for a, b in zip(train_answers, reversed(train_answers), strict=True)]
    near = TrainingAnswers(long).match([long[3].rsplit(" ", 1)[0] + " tomorrow"])[0]
    assert near.copied and near.train_index == 3 and 0.8 <= near.similarity < 1.0


def test_membership_catches_rows_learnt_by_heart_while_answers_stay_right():
    """An extraction task copies from the input, so a model that memorised its rows can still answer new ones right:
    only the loss of training rows against unseen rows of the same data shows it (the real 50-report run did this)."""
    same = membership([0.5, 0.7, 0.9], [0.5, 0.7, 0.9])
    assert same["auc"] == 0.5 and same["loss_ratio"] == 1.0  # indistinguishable: ties count half
    apart = membership([0.001, 0.002, 0.003], [0.05, 0.08, 0.2])
    assert apart["auc"] == 1.0 and apart["loss_ratio"] == pytest.approx(40.0)
    mixed = membership([0.1, 0.3], [0.2, 0.4])  # pairs: 0.1<0.2, 0.1<0.4, 0.3>0.2, 0.3<0.4
    assert mixed["auc"] == 0.75

    answers = [f"ticket {w} goes to the {v} team" for w in WORDS[:6] for v in WORDS[6:8]]
    index, where = TrainingAnswers(answers), [f"train.jsonl:{i + 1}" for i in range(len(answers))]
    refs = [f"a brand new answer about {w} written for this input" for w in WORDS[:8]]
    outs = list(refs)  # right answers, nothing copied
    found, fig = memorisation_findings(outs, refs, index.match(outs), index.match(refs), where, {}, apart)
    assert [(f.code, f.severity) for f in found] == [("memorisation", "error")]
    assert "40x less loss" in found[0].message and "not copied yet" in found[0].message
    assert fig["membership"] == apart and fig["output_copy_rate"] == 0.0
    mild = membership([0.02] * 4, [0.12] * 4)  # 6x, AUC 1.0: a warning, not yet an error
    assert [f.severity for f in memorisation_findings(outs, refs, index.match(outs), index.match(refs), where, {},
                                                      mild)[0]] == ["warning"]  # fmt: skip
    for healthy in (same, mixed, membership([0.1] * 4, [0.9] * 4) | {"auc": 0.8}):  # each test alone is not enough
        assert memorisation_findings(outs, refs, index.match(outs), index.match(refs), where, {}, healthy)[0] == []
    # no held-out generations (no test split) still reports the membership test
    found, _ = memorisation_findings([], [], [], [], [], {}, apart)
    assert [f.code for f in found] == ["memorisation"] and "held-out answers" not in found[0].message
    assert "copied" not in found[0].message


def test_stopping_rules_and_links_to_the_data_check():
    outs = ['{"a": 1} and more', '{"a": 1', '{"a": 1}', "{'a': 1}"]
    stopped = [False, False, True, True]
    data = {"invalid-json-answer": {"severity": "error", "count": 7, "messages": []}}
    found, fig = stopping_findings(outs, stopped, ['{"a": 1}'] * 4, [5] * 4, "json", 40, "<|im_end|>", data)
    assert [f.code for f in found] == ["no-stop"] and fig["hit_rate"] == 0.5
    assert found[0].evidence["complete_answer_then_more"] == 1
    found, fig = stopping_findings(outs, stopped, ["x " * 50] * 4, [60] * 4, "json", 40, "<|im_end|>", {})
    assert "raise max_new_tokens above 61" in found[0].remedy
    found, _ = json_validity_findings(outs, stopped, lambda v: [], data)
    assert [f.code for f in found] == ["invalid-output"] and found[0].linked == ["invalid-json-answer"]
    assert "--fix OUT" in found[0].remedy and "invalid-json-answer (7 row(s))" in found[0].remedy
    found, _ = json_validity_findings(outs, stopped, lambda v: [], {}, best_step=65)
    assert "--max-steps 65" in found[0].remedy
    assert continues_past_end('{"a": 1}\nNote: done', None, "json")
    assert not continues_past_end('{"a": 1}', None, "json")
    assert continues_past_end("yes yes yes yes yes yes yes", "yes", "text")


def test_consequences_of_a_failed_optimisation_are_not_reported_as_causes():
    found = [Finding("no-stop", "error", "m", "r"), Finding("loss-flat", "error", "m", "r")]
    out = demote_consequences(found)
    assert [(f.code, f.severity) for f in out] == [("loss-flat", "error"), ("no-stop", "info")]
    assert out[1].cause == "loss-flat"


def test_a_run_whose_data_moved_is_still_diagnosed(healthy_run, tmp_path):
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(healthy_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = {k: str(tmp_path / "gone" / f"{k}.jsonl") for k in ("train", "eval", "test")}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    d = diagnose(run, FAST)
    assert d.codes() == {"no-heldout"}
    assert d.curves["steps"] == HEALTHY["max_steps"]  # the loss curves are still read
