"""The ticket-summaries, product-support(-faq) and house-policy examples: deterministic, held-out test wording,
accepted by the dataset doctor, and labels that pass their own task metrics (while planted defects fail them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasktune.check import CheckConfig, check_dataset
from tasktune.config import load_task
from tasktune.data import read_examples
from tasktune.examples import get_example
from tasktune.examples import house_policy as hp
from tasktune.examples import product_support as ps
from tasktune.examples import ticket_summaries as ts
from tasktune.task_metrics import compute

SMALL = {"ticket-summaries": 300, "product-support": 300, "product-support-faq": 200, "house-policy": 300}


def _write(name: str, out: Path, seed: int = 0) -> Path:
    return get_example(name)(out, n=SMALL[name], seed=seed)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_deterministic_for_a_seed(name, tmp_path):
    a, b, c = _write(name, tmp_path / "a"), _write(name, tmp_path / "b"), _write(name, tmp_path / "c", seed=1)
    for f in ("train.jsonl", "eval.jsonl", "test.jsonl", "task.yaml"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_dataset_doctor_finds_no_errors_and_reads_meta(name, tmp_path, tiny_tokenizer):
    out = _write(name, tmp_path / "ex")
    task = load_task(out / "task.yaml")
    splits = {s: task.data_path(s) for s in ("train", "eval", "test")}
    report = check_dataset(splits, task=task, cfg=CheckConfig(max_length=4096), tokenizer=tiny_tokenizer)
    assert report.errors == [], [f.code for f in report.errors]
    test = read_examples(splits["test"])
    assert all(isinstance(ex.extra.get("meta"), dict) for ex in test)  # the reader keeps meta for the metrics


@pytest.mark.parametrize("name", sorted(SMALL))
def test_references_pass_their_own_metrics_and_planted_defects_fail(name, tmp_path):
    out = _write(name, tmp_path / "ex")
    task = load_task(out / "task.yaml")
    assert task.metrics
    for split in ("train", "test"):
        rows = _rows(out / f"{split}.jsonl")
        refs, metas = [r["output"] for r in rows], [r["meta"] for r in rows]
        scores = compute(task.metrics, refs, refs, metas)
        for m in ("key_fact_recall", "fact_accuracy", "abstention_rate", "policy_compliance"):
            if m in task.metrics and scores[f"{m}_n"]:
                assert scores[m] == 1.0, (split, m, scores)
        for m in ("invented_answer_rate", "false_abstention_rate"):
            if m in task.metrics and scores[f"{m}_n"]:
                assert scores[m] == 0.0, (split, m, scores)
    # Planted defects: answers that drop a fact, invent, or break the policy must be caught.
    rows = _rows(out / "test.jsonl")
    metas = [r["meta"] for r in rows]
    if "key_fact_recall" in task.metrics:
        truncated = [r["output"].split(". Tried:")[0] for r in rows]  # the problem only
        assert compute(["key_fact_recall"], truncated, truncated, metas)["key_fact_recall"] < 0.5
    if "invented_answer_rate" in task.metrics:
        made_up = ["Yes, that works on every plan at no extra cost." for _ in rows]
        s = compute(["invented_answer_rate", "fact_accuracy"], made_up, made_up, metas)
        assert s["invented_answer_rate"] == 1.0 and s["fact_accuracy"] == 0.0
    if "policy_compliance" in task.metrics:
        bad = ["I promise you'll get exactly what you want, it's your fault anyway." for _ in rows]
        assert compute(["policy_compliance"], bad, bad, metas)["policy_compliance"] == 0.0


def test_ticket_test_styles_and_phrasings_are_absent_from_train():
    train = "\n".join(r["input"] for r in ts.generate_rows(2000, seed=3, held_out=False))
    test_rows = ts.generate_rows(300, seed=4, held_out=True)
    assert "Forwarded message" not in train and "Call with " not in train
    assert {r["meta"]["style"] for r in test_rows} == set(ts.TEST_STYLES)
    held_out = [p for f in ts.PROBLEMS + ts.TRIED + ts.REQUESTS for p in f.test]
    held_out += [p for _, test in ts.URGENCY.values() for p in test if p]
    for phrase in held_out:
        assert phrase.lower() not in train.lower(), phrase
    test_text = "\n".join(r["input"] for r in test_rows).lower()
    assert sum(p.lower() in test_text for p in held_out) > len(held_out) * 0.8


def test_tickets_carry_real_noise_and_summaries_their_facts():
    rows = ts.generate_rows(500, seed=5, held_out=False)
    text = "\n".join(r["input"] for r in rows)
    assert "> On " in text and "Sent from my" in text and re.search(r"\[\d\d:\d\d\] ", text)  # quotes, phones, chats
    for r in rows:
        out = r["output"]
        assert out.startswith("Problem: ") and " Tried: " in out and " Urgency: " in out
        assert r["meta"]["urgency"] in out


def test_product_support_test_questions_are_paraphrases_never_trained():
    train = {r["input"].lower() for r in ps.generate_rows(600, seed=1, split="train")}
    train_text = "\n".join(train)
    test = ps.generate_rows(0, seed=3, split="test")
    assert len(test) == sum(len(f.test) for f in ps.FACTS) + len(ps.UNKNOWN_TEST)
    for q in [q for f in ps.FACTS for q in f.test] + list(ps.UNKNOWN_TEST):
        assert q.lower() not in train_text, q
    known = [r for r in test if r["meta"]["answerable"]]
    unknown = [r for r in test if not r["meta"]["answerable"]]
    assert known and unknown and all(r["output"] in ps.ABSTAIN_ANSWERS for r in unknown)
    sheet = ps.product_sheet().lower()
    assert all(q.lower().rstrip("?") not in sheet for q in ps.UNKNOWN_TEST)


def test_faq_variant_holds_out_questions_from_training_and_the_instruction(tmp_path, tiny_tokenizer):
    out = _write("product-support-faq", tmp_path / "faq")
    train = _rows(out / "train.jsonl")
    test = _rows(out / "test.jsonl")
    trained_ids = {r["meta"].get("id") for r in train}
    instruction = load_task(out / "task.yaml").instruction
    faq = {q["id"]: q for q in ps.load_faq()}
    for r in test:
        assert r["input"].lower() not in {t["input"].lower() for t in train}
        if r["meta"]["answerable"]:
            assert r["meta"]["id"] in trained_ids and r["input"] != faq[r["meta"]["id"]]["q"]  # a paraphrase
        else:
            assert r["meta"]["id"] not in trained_ids and faq[r["meta"]["id"]]["a"] not in instruction
    assert sum(r["meta"]["answerable"] for r in test) >= 10 and sum(not r["meta"]["answerable"] for r in test) >= 10
    credit = "Swedish Construction FAQ by Zaragoza AB, CC BY 4.0"
    assert credit in (out / "task.yaml").read_text() and credit in (out / "LICENSE-DATA.txt").read_text()


def test_faq_prompt_fits_the_models_context():
    """compare's `instruction` baseline puts the whole trained FAQ in the prompt: it must fit SmolLM2's 8k context."""
    from tasktune.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    known, _ = ps.faq_split(ps.load_faq(), seed=0)
    sheet = "\n".join(f"Q: {q['q']}\nA: {q['a']}" for q in known)
    n = len(tok(ps.FAQ_INSTRUCTION + sheet)["input_ids"])
    assert 2000 < n < 8192 - 512, n  # room left for the question and the answer


def test_faq_paraphrase_rules_and_number_facts():
    assert ps.paraphrase("What is a bygglov?") == "Could you explain what a bygglov is?"
    assert ps.paraphrase("Can I build a carport?") == "Am I allowed to build a carport?"
    facts = ps.number_facts("The fee is 25,000-50,000 SEK and takes 10 weeks; 50% of labour.")
    assert any(re.search(f[0], "about 25 000 kronor") for f in facts)
    assert not any(re.search(f[0], "150 SEK") for f in facts if "50" in f[0] and "000" not in f[0])


def test_house_policy_held_out_prompts_and_checks_per_category():
    train = "\n".join(r["input"] for r in hp.generate_rows(600, seed=1, held_out=False)).lower()
    test = hp.generate_rows(120, seed=3, held_out=True)
    for cat in hp.CATEGORIES:
        for template in cat.test:
            pattern = ".+?".join(re.escape(part.lower()) for part in re.split(r"\{\w+\}", template))
            assert not re.search(pattern, train), template
    assert all(name.lower() not in train for name in hp.TEST_NAMES)
    cats = {r["meta"]["category"] for r in test}
    assert cats == {c.name for c in hp.CATEGORIES} | {"howto"}
    escalation = next(r for r in test if r["meta"]["category"] == "security")
    assert "escalates" in escalation["meta"]["rules"].values()


def test_house_policy_states_every_fact_its_checks_ask_for():
    """The baselines get the policy as their instruction: a how-to check whose menu path the policy never states could
    only be passed by a model that was trained on the answers, which would make the comparison unfair."""
    for question, answer, pattern in hp.HOWTO + hp.TEST_HOWTO:
        assert re.search(pattern, answer, re.I), question
        assert re.search(pattern, hp.POLICY, re.I), f"the policy does not say how: {question}"
