"""What the tuned model does with held-out inputs and with unrelated requests: stopping, format, copying, forgetting.

Every function here takes plain values (texts, flags, counts) and returns (findings, figures), so each rule can be
tested on its own. Rates are shares of the held-out generations; a rate is an error from 20% and a warning from 5%.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from tasktune.diagnose.findings import Finding
from tasktune.diagnose.memorisation import Match, canonical
from tasktune.metrics import normalise

ERROR_RATE, WARNING_RATE = 0.20, 0.05
# dataset-doctor codes (`tasktune check`) that explain each output symptom
LINKS = {
    "no-stop": ("early-eos", "eos-mismatch", "template-mismatch", "too-long"),
    "runs-past-answer": ("invalid-json-answer", "early-eos", "template-mismatch"),
    "invalid-output": ("invalid-json-answer", "schema-violation", "too-long", "early-eos", "conflicting-answers"),
    "memorisation": ("duplicate-exact", "duplicate-near", "too-few-rows"),
}


def _severity(rate: float) -> str | None:
    return "error" if rate >= ERROR_RATE else "warning" if rate >= WARNING_RATE else None


def _linked(finding_id: str, data_codes: dict) -> list[str]:
    return [c for c in LINKS.get(finding_id, ()) if c in data_codes]


def _data_note(codes: list[str], data_codes: dict) -> str:
    if not codes:
        return ""
    found = ", ".join(f"{c} ({data_codes[c]['count']} row(s))" for c in codes)
    return f" The dataset doctor found {found} in this run's data: `tasktune check --task TASK.yaml` lists them."


def continues_past_end(output: str, reference: str | None, kind: str) -> bool:
    """The answer is complete and then goes on: valid JSON followed by more text, or the reference plus more."""
    text = output.strip()
    if kind == "json":
        if not text or text[0] not in "{[":
            return False
        try:
            _, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError:
            return False
        return bool(text[end:].strip())
    if not reference:
        return False
    ref, out = normalise(reference), normalise(output)
    return out.startswith(ref) and len(out) - len(ref) >= max(10, 0.2 * len(ref))


def stopping_findings(outputs: list[str], stopped: list[bool], refs: list[str | None], ref_tokens: list[int],
                      kind: str, cap: int, end_text: str, data_codes: dict):  # fmt: skip
    """Answers that run into max_new_tokens instead of ending with the end-of-turn token, and answers that go on
    after a complete answer."""
    n = len(outputs)
    hits = [i for i in range(n) if not stopped[i]]
    past = [i for i in range(n) if continues_past_end(outputs[i], refs[i], kind)]
    long_refs = [i for i in hits if ref_tokens[i] + 1 > cap]
    figures = {"n": n, "max_new_tokens": cap, "hit_max_new_tokens": len(hits), "hit_rate": len(hits) / n if n else 0,
               "continued_past_answer": len(past), "stopped_rate": 1 - len(hits) / n if n else 0}  # fmt: skip
    findings = []
    sev = _severity(figures["hit_rate"])
    if sev:
        complete = len(set(hits) & set(past))
        links = _linked("no-stop", data_codes)
        if len(long_refs) * 2 >= len(hits):
            remedy = (f"raise max_new_tokens above {max(ref_tokens) + 1} (predict/eval --max-new-tokens, or"
                      f" max_new_tokens in RUN/run.json): {len(long_refs)} of these references are longer than the"
                      f" cap of {cap} themselves")  # fmt: skip
        else:
            remedy = (f"the model has not learned to end its answer with {end_text!r}: that token must be supervised"
                      " in the labels (tasktune's training supervises it; labels that mask it, e.g. a collator that"
                      " masks the pad id where pad == EOS as in SmolLM2, teach the model never to stop); retrain"
                      " with tasktune, or with more steps if the loss is still high")  # fmt: skip
        findings.append(Finding(
            "no-stop", sev,
            f"{len(hits)} of {n} held-out answers ({figures['hit_rate']:.0%}) ran into max_new_tokens={cap} instead"
            f" of ending with {end_text!r}; {complete} of them held a complete answer first",
            remedy + _data_note(links, data_codes),
            {"n": n, "hit_max_new_tokens": len(hits), "rate": figures["hit_rate"], "max_new_tokens": cap,
             "complete_answer_then_more": complete, "references_longer_than_cap": len(long_refs)},
            linked=links,
        ))  # fmt: skip
    # answers that stopped, but only after more text: the cap is not the problem, the answer's end is
    past_stopped = [i for i in past if stopped[i]]
    sev = _severity(len(past_stopped) / n) if n else None
    if sev:
        links = _linked("runs-past-answer", data_codes)
        findings.append(Finding(
            "runs-past-answer", sev,
            f"{len(past_stopped)} of {n} held-out answers ({len(past_stopped) / n:.0%}) go on after a complete"
            + (" JSON value" if kind == "json" else " answer") + f", e.g. {outputs[past_stopped[0]][:120]!r}",
            "the training answers should end exactly where the answer ends: look for text after the answer in the"
            " training rows (trailing notes, a second answer); then retrain. Until then, read answers with"
            " tasktune.metrics.extract_json rather than strictly" + _data_note(links, data_codes),
            {"n": n, "continued": len(past_stopped), "rate": len(past_stopped) / n}, linked=links,
        ))  # fmt: skip
    return findings, figures


def json_validity_findings(outputs: list[str], stopped: list[bool], schema_errors, data_codes: dict,
                           best_step: int | None = None):  # fmt: skip
    """Outputs of a JSON task that are not valid JSON, or break the schema; counted among the answers that stopped
    (an answer cut by max_new_tokens is broken because of the cap: no-stop reports those). `best_step`: the step of
    the lowest eval loss when the run is overfit."""
    done = [o for o, s in zip(outputs, stopped, strict=True) if s]
    invalid, off_schema = 0, 0
    for o in done:
        try:
            value = json.loads(o)
        except json.JSONDecodeError:
            invalid += 1
            continue
        off_schema += bool(schema_errors(value))
    figures = {"answers_stopped": len(done), "invalid_json": invalid, "schema_invalid": off_schema}
    if not done:
        return [], figures
    rate = (invalid + off_schema) / len(done)
    sev = _severity(rate)
    if not sev:
        return [], figures
    links = _linked("invalid-output", data_codes)
    bad_data = [c for c in links if c in ("invalid-json-answer", "schema-violation")]
    if bad_data:
        remedy = (f"the training data has answers that are broken the same way ({', '.join(bad_data)}): the model"
                  " learned them. `tasktune check --task TASK.yaml --fix OUT` writes a copy without those rows;"
                  " retrain on OUT/task.yaml")  # fmt: skip
    elif best_step is not None:  # an overfit run: more steps would make it worse
        remedy = (f"the run is overfit (see overfitting): retrain with --max-steps {best_step}, where the eval loss"
                  " was lowest, and with more varied rows")  # fmt: skip
    else:
        remedy = ("the model has not learned the answer format yet: train more steps (or with more rows), and check"
                  " a few training answers with `tasktune check --show 3`")  # fmt: skip
    return [Finding(
        "invalid-output", sev,
        f"{invalid} of {len(done)} finished held-out answers are not valid JSON and {off_schema} more break the"
        f" schema ({rate:.0%})",
        remedy + _data_note(links, data_codes),
        {"answers": len(done), "invalid_json": invalid, "schema_invalid": off_schema, "rate": rate},
        linked=links,
    )], figures  # fmt: skip


# The membership test flags a run whose training rows are recognisable by their loss alone; a ratio of 5x with
# AUC 0.9 already means that most training rows are far likelier to the model than any row it has not seen.
MEMBERSHIP_WARN = {"auc": 0.9, "loss_ratio": 5.0}
MEMBERSHIP_ERROR = {"auc": 0.97, "loss_ratio": 20.0}


def _beyond(m: dict, limits: dict) -> bool:
    return bool(m) and all(m[k] >= v for k, v in limits.items())


def memorisation_findings(outputs: list[str], refs: list[str], out_m: list[Match], ref_m: list[Match],
                          train_where: list[str], data_codes: dict, member: dict | None = None):  # fmt: skip
    """Outputs that copy training answers, against the references' own rate of doing so (the control), and
    training rows the model recognises by their loss (`member`: memorisation.membership's figures, or None)."""
    n = len(outputs)
    member = member or {}
    if not n and not member:
        return [], {}
    out_copy = sum(m.copied for m in out_m) / n if n else 0.0
    ref_copy = sum(m.copied for m in ref_m) / n if n else 0.0
    wrong = [i for i in range(n) if out_m[i].copied and canonical(outputs[i]) != canonical(refs[i])]
    out_ngram = sum(m.ngram_overlap for m in out_m) / n if n else 0.0
    ref_ngram = sum(m.ngram_overlap for m in ref_m) / n if n else 0.0
    figures = {"n": n, "output_copy_rate": out_copy, "reference_copy_rate": ref_copy,
               "wrong_copy_rate": len(wrong) / max(n, 1), "output_ngram_overlap": out_ngram,
               "reference_ngram_overlap": ref_ngram, "membership": member}  # fmt: skip
    excess, excess_ngram = out_copy - ref_copy, out_ngram - ref_ngram
    copying = (excess >= 0.1 and len(wrong) / max(n, 1) >= 0.1) or excess_ngram >= 0.2
    recognised = _beyond(member, MEMBERSHIP_WARN)
    if not copying and not recognised:
        return [], figures
    copy_error = excess >= 0.2 or excess_ngram >= 0.4
    sev = "error" if copy_error or _beyond(member, MEMBERSHIP_ERROR) else "warning"
    links = _linked("memorisation", data_codes)
    parts = []
    if recognised:
        parts.append(
            f"the model knows its training rows by heart: their answers cost it {member['loss_ratio']:.0f}x less"
            f" loss than unseen rows of the same data (median {member['train_loss_median']:.4f} against"
            f" {member['unseen_loss_median']:.4f}), and a training row has the lower loss in"
            f" {member['auc']:.0%} of training/unseen pairs (membership AUC {member['auc']:.2f})"
        )
    if n:
        example = ""
        if wrong:
            i = wrong[0]
            example = f"; e.g. {outputs[i][:100]!r} is the answer of {train_where[out_m[i].train_index]}"
        parts.append(
            f"{out_copy:.0%} of held-out answers equal a training answer (near-)verbatim, against {ref_copy:.0%} of"
            f" their references; {len(wrong) / n:.0%} copy a wrong one; {out_ngram:.0%} of their word 5-grams come"
            f" from training answers, against {ref_ngram:.0%} for the references{example}"
        )
    if recognised and not copying and n:
        parts[-1] += " (so it still reads new inputs: the answers are not copied yet)"
    return [Finding(
        "memorisation", sev, "; ".join(parts),
        "the model recalls training rows instead of learning the task: train fewer steps (see overfitting),"
        " add more varied rows, remove repeated rows (`tasktune check --fix`), or lower the capacity (--lora-r 8)"
        + _data_note(links, data_codes),
        figures | {"wrong_copies": len(wrong)}, linked=links,
    )], figures  # fmt: skip


# A word is part of a text task's template when at least MARKER_SHARE of the training answers contain it and at most
# MARKER_BASE_SHARE of the base model's own probe answers do; a template needs MIN_MARKERS such words.
MARKER_SHARE, MARKER_BASE_SHARE, MIN_MARKERS = 0.5, 0.1, 2


def _marker_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z][a-z'-]*:?", text.lower()) if len(w.rstrip(":")) >= 3}


def template_markers(train_answers: list[str], base_answers: list[str]) -> list[str]:
    """The words of a text task's answer template: labels like "Problem:" and "Tried:", or a fixed opening, that most
    training answers contain and the base model's answers to unrelated questions rarely do.

    Written by hand because a summary template shares its labels with an answer, not its 5-grams: "Problem: the
    calculation is ambiguous. Tried: reordering the numbers." has no 5-gram in common with any ticket summary, yet
    it is plainly a ticket summary. Words common to all English ("the", "you") are in the base answers too and drop
    out; a task whose answers share no template has no markers (fewer than MIN_MARKERS) and this check stays off."""
    train_sets = [_marker_words(a) for a in train_answers if a]
    if not train_sets or not base_answers:
        return []
    in_train = Counter(w for words in train_sets for w in words)
    in_base = Counter(w for a in base_answers for w in _marker_words(a))
    common, rare = MARKER_SHARE * len(train_sets), MARKER_BASE_SHARE * len(base_answers)
    markers = sorted(w for w, c in in_train.items() if c >= common and in_base[w] <= rare)
    return markers if len(markers) >= MIN_MARKERS else []


def follows_template(answer: str, markers: list[str]) -> bool:
    """At least half the template's marker words are in the answer."""
    return bool(markers) and len(_marker_words(answer) & set(markers)) >= 0.5 * len(markers)


def probe_findings(probes, base: list[tuple[str, bool]], tuned: list[tuple[str, bool]], in_format):
    """Forgetting (score drop from base to tuned) and format drift (probe answers in the task's format).

    `base`/`tuned`: (answer, stopped) per probe; `in_format(answer, stopped)` says whether an answer has the task's
    shape."""
    n = len(probes)
    base_ok = [p.passes(a) for p, (a, _) in zip(probes, base, strict=True)]
    tuned_ok = [p.passes(a) for p, (a, _) in zip(probes, tuned, strict=True)]
    base_fmt = [in_format(a, s) for a, s in base]
    tuned_fmt = [in_format(a, s) for a, s in tuned]
    cats = sorted({p.category for p in probes})
    figures = {
        "n": n,
        "base_score": sum(base_ok) / n, "tuned_score": sum(tuned_ok) / n,
        "base_in_task_format": sum(base_fmt) / n, "tuned_in_task_format": sum(tuned_fmt) / n,
        "by_category": {c: {"n": sum(p.category == c for p in probes),
                            "base": sum(ok for p, ok in zip(probes, base_ok, strict=True) if p.category == c),
                            "tuned": sum(ok for p, ok in zip(probes, tuned_ok, strict=True) if p.category == c)}
                        for c in cats},
        "answers": [{"id": p.id, "prompt": p.prompt, "base": b[0], "base_ok": bo, "tuned": t[0], "tuned_ok": to,
                     "tuned_in_task_format": tf}
                    for p, b, bo, t, to, tf in zip(probes, base, base_ok, tuned, tuned_ok, tuned_fmt, strict=True)],
    }  # fmt: skip
    findings = []
    drop = figures["base_score"] - figures["tuned_score"]
    if drop >= 0.15 and sum(base_ok) - sum(tuned_ok) >= 3:
        lost = [c for c, v in figures["by_category"].items() if v["tuned"] < v["base"]]
        findings.append(Finding(
            "forgetting", "warning",
            f"general-ability probes: the tuned model answers {sum(tuned_ok)} of {n} correctly, the base model"
            f" {sum(base_ok)} ({drop:.0%} lower; lost in: {', '.join(lost)})",
            "if the model must keep answering general requests, mix general rows into training (10-20% of the rows,"
            " answered by the base model itself), train fewer steps, or lower the learning rate or --lora-r;"
            " if it will only ever receive task inputs, this costs nothing",
            {"base_score": figures["base_score"], "tuned_score": figures["tuned_score"], "drop": drop, "n": n},
        ))  # fmt: skip
    shift = figures["tuned_in_task_format"] - figures["base_in_task_format"]
    if figures["tuned_in_task_format"] >= 0.3 and shift >= 0.2:
        example = next((t[0] for t, tf in zip(tuned, tuned_fmt, strict=True) if tf), "")
        findings.append(Finding(
            "format-drift", "warning",
            f"{sum(tuned_fmt)} of {n} unrelated probe questions ({figures['tuned_in_task_format']:.0%}) are answered"
            f" in the task's format (base model: {figures['base_in_task_format']:.0%}), e.g. {example[:100]!r}",
            "the model answers every request as if it were a task input: send it only task inputs, or, if it must"
            " also answer other requests, mix general rows into training (10-20% of the rows, answered by the base"
            " model itself) and train fewer steps",
            {"tuned_in_task_format": figures["tuned_in_task_format"],
             "base_in_task_format": figures["base_in_task_format"], "n": n},
        ))  # fmt: skip
    return findings, figures
