"""diagnose(): read a run directory, generate on held-out inputs and on the probes, and collect the findings."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from tasktune.config import StrictModel, TrainConfig
from tasktune.data import Example, read_examples
from tasktune.diagnose.curves import curve_findings
from tasktune.diagnose.findings import Diagnosis, Finding, demote_consequences
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
from tasktune.diagnose.probes import load_probes
from tasktune.metrics import schema_errors
from tasktune.rundir import RunInfo, load_run_task, read_config, read_metrics

# A text answer has the task's shape when at least half its word 5-grams are training-answer text, or when it follows
# the training answers' template (outputs.template_markers: labels like "Problem:" that 5-grams miss).
FORMAT_OVERLAP = 0.5


class DiagnoseConfig(StrictModel):
    limit: int = Field(32, ge=1, description="held-out inputs the tuned model answers (stopping, format, copying)")
    batch_size: int = Field(16, ge=1, description="requests per generation batch")
    probes: bool = Field(True, description="ask the general-ability probes of base and tuned model")
    probe_max_new_tokens: int = Field(48, ge=1, description="answer cap for the probes (short questions)")
    data_check: bool = Field(True, description="run the dataset doctor on the run's data and link its findings")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="inference precision")


def _exists(path: Path | None) -> bool:
    return path is not None and path.is_file()


def _splits(task, train: TrainConfig) -> tuple[list[Example], list[Example], str | None, list[Example]]:
    """(training rows as trained, held-out rows, where the held-out rows come from, unseen rows drawn like train):
    held-out rows are test, else eval, else the share of train that `train` held out for eval loss (same seed, same
    rows); the unseen rows for the membership test are eval (or that share), else test."""
    from tasktune.batching import split_eval

    train_path = task.data_path("train")
    rows = read_examples(train_path) if _exists(train_path) else []
    eval_path = task.data_path("eval")
    if not _exists(eval_path):
        rows, held = split_eval(rows, train.eval_split, train.seed)
    else:
        held = read_examples(eval_path)
    test_path = task.data_path("test")
    if _exists(test_path):
        test = read_examples(test_path)
        return rows, test, str(test_path), held or test
    if held:
        return rows, held, str(eval_path) if _exists(eval_path) else f"{train_path} (the eval share held out)", held
    return rows, [], None, []


def _spread(rows: list, n: int) -> list:
    """n rows spread evenly over the list (the whole list when it is shorter)."""
    if len(rows) <= n:
        return list(rows)
    return [rows[i * len(rows) // n] for i in range(n)]


def _membership(predictor, info: RunInfo, train: TrainConfig, train_rows, unseen, cfg: DiagnoseConfig) -> dict:
    """Teacher-forced answer losses of up to `cfg.limit` training rows and as many unseen ones (memorisation.py)."""
    from tasktune.batching import encode_rows
    from tasktune.loss import row_losses
    from tasktune.strategies import get_strategy

    if not train_rows or not unseen:
        return {}
    fmt = predictor.fmt
    pad_id = fmt.tok.pad_token_id if fmt.tok.pad_token_id is not None else fmt.stop_ids[0]
    prepended = get_strategy(info.method).prepended_tokens(train)
    losses = []
    for rows in (_spread(train_rows, cfg.limit), _spread(unseen, cfg.limit)):
        encoded, _ = encode_rows(fmt, [ex for ex in rows if ex.answer], predictor.instruction, train.max_length)
        losses.append(row_losses(predictor.model, encoded, pad_id, batch_size=8, prepended=prepended))
    return membership(*losses)


def _data_codes(task, train: TrainConfig, tokenizer) -> dict:
    """The dataset doctor's errors and warnings on the run's data, by code (counts summed over splits)."""
    from tasktune.check import CheckConfig, check_dataset, task_splits

    splits = {k: p for k, p in task_splits(task).items() if p.is_file()}
    if not splits:
        return {}
    report = check_dataset(splits, task=task, cfg=CheckConfig.for_training(task, train), tokenizer=tokenizer)
    codes: dict[str, dict] = {}
    for f in report.findings:
        if f.severity in ("error", "warning"):
            entry = codes.setdefault(f.code, {"severity": f.severity, "count": 0, "messages": []})
            entry["count"] += f.count
            entry["messages"].append(f.message)
    return codes


def _json_shaped(answer: str, stopped: bool) -> bool:
    text = answer.strip()
    if not text.startswith(("{", "[")):
        return False
    if not stopped:
        return True  # cut by the cap while writing JSON
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return continues_past_end(text, None, "json")


def diagnose(run: str | Path, cfg: DiagnoseConfig | None = None) -> Diagnosis:
    """Diagnose a finished run: its loss curves, its answers on held-out inputs, its answers to the probes."""
    from tasktune.predict import Predictor

    cfg = cfg or DiagnoseConfig()
    t0 = time.perf_counter()
    run = Path(run)
    info = RunInfo.load(run)
    task = load_run_task(run)
    train = TrainConfig.model_validate(read_config(run).get("train") or {})
    train_rows, heldout, source, unseen = _splits(task, train)
    heldout = heldout[: cfg.limit]
    train_settings = train.model_dump(mode="json") | {"learning_rate": train.resolved_learning_rate()}
    findings, curves = curve_findings(read_metrics(run), train_settings, run, len(train_rows) or None)

    # free decoding: the doctor looks at what the weights learnt, which the JSON constraint would hide (no stop, drift)
    predictor = Predictor.from_run(run, precision=cfg.precision, constrain=False)
    tok = predictor.fmt.tok
    data_codes = _data_codes(task, train, tok) if cfg.data_check else {}
    kind = info.output_kind
    member = _membership(predictor, info, train, train_rows, unseen, cfg)
    index = TrainingAnswers([ex.answer for ex in train_rows]) if train_rows else None
    held_fig, mem_fig, examples = {"source": source, "n": 0}, {}, []
    if heldout:
        preds = predictor.predict(heldout, batch_size=cfg.batch_size)
        outs, stopped = [p.output for p in preds], [p.stopped for p in preds]
        refs = [ex.answer or "" for ex in heldout]
        ref_tokens = [len(tok.encode(r, add_special_tokens=False)) for r in refs]
        found, held_fig = stopping_findings(outs, stopped, refs, ref_tokens, kind, predictor.max_new_tokens,
                                            predictor.fmt.end_text, data_codes)  # fmt: skip
        held_fig["source"] = source
        findings += found
        if kind == "json":
            schema = task.json_schema()
            overfit = next((f for f in findings if f.code == "overfitting"), None)
            best = overfit.evidence["best_eval_step"] if overfit else None
            found, fig = json_validity_findings(outs, stopped, lambda v: schema_errors(v, schema), data_codes, best)
            findings += found
            held_fig |= fig
        if index is not None:
            out_m, ref_m = index.match(outs), index.match(refs)
            where = [ex.where for ex in train_rows]
            found, mem_fig = memorisation_findings(outs, refs, out_m, ref_m, where, data_codes, member)
            findings += found
            examples = [{"where": ex.where, "input": ex.input_text, "output": p.output, "reference": ex.answer,
                         "stopped": p.stopped, "copies": where[m.train_index] if m.copied else None}
                        for ex, p, m in zip(heldout, preds, out_m, strict=True)]  # fmt: skip
    else:
        if member:
            found, mem_fig = memorisation_findings([], [], [], [], [], data_codes, member)
            findings += found
        findings.append(Finding("no-heldout", "info", "the run's task has no test or eval rows (and no eval share of"
                                " train): stopping, format and memorisation were not measured",
                                "add data.test to the task (rows never trained on)"))  # fmt: skip

    probe_fig: dict = {}
    if cfg.probes:
        probes = load_probes()
        prompts = [p.prompt for p in probes]
        tuned = [(p.output, p.stopped) for p in predictor.predict(prompts, batch_size=cfg.batch_size,
                                                                  max_new_tokens=cfg.probe_max_new_tokens)]  # fmt: skip
        del predictor
        base_spec = info.base_model_path if (Path(info.base_model_path) / "config.json").is_file() else info.base_model
        base_pred = Predictor.from_base(base_spec, instruction=None, output_kind=kind, constrain=False,
                                        max_new_tokens=cfg.probe_max_new_tokens, precision=cfg.precision)  # fmt: skip
        base = [(p.output, p.stopped) for p in base_pred.predict(prompts, batch_size=cfg.batch_size)]

        train_answers = [ex.answer or "" for ex in train_rows]
        markers = template_markers(train_answers, [a for a, _ in base]) if kind != "json" else []

        def in_format(answer: str, stopped: bool) -> bool:
            if kind == "json":
                return _json_shaped(answer, stopped)
            if not answer.strip():
                return False
            copied = index is not None and index.ngram_overlap(answer) >= FORMAT_OVERLAP
            return copied or follows_template(answer, markers)

        found, probe_fig = probe_findings(probes, base, tuned, in_format)
        probe_fig["template_markers"] = markers
        findings += found

    return Diagnosis(
        run=str(run), task=task.name, method=info.method, output_kind=kind,
        findings=demote_consequences(findings), curves=curves, heldout=held_fig, memorisation=mem_fig,
        probes=probe_fig, data_check=data_codes, seconds=time.perf_counter() - t0, examples=examples,
    )  # fmt: skip


def save_diagnosis(d: Diagnosis, run: str | Path) -> list[Path]:
    """RUN/diagnosis.json (every figure) and RUN/report.html (loss curves and findings), written atomically."""
    from tasktune.diagnose.report import render_html
    from tasktune.fsio import atomic_write_json, atomic_write_text

    run = Path(run)
    paths = [run / "diagnosis.json", run / "report.html"]
    atomic_write_json(paths[0], d.to_dict())
    atomic_write_text(paths[1], render_html(d, read_metrics(run)))
    return paths
