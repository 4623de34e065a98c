"""Selection by the task's own metric: the best validated weights are kept, the run stops when the score stops
improving, a caller can stop it, and a time budget is honoured. Planted metric curves make the outcome known."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import load_file

from tasktune.config import TrainConfig, load_task
from tasktune.rundir import read_metrics
from tasktune.train import train
from tasktune.validation import BEST_FILE, Validator


def _cfg(tiny_model, **kw) -> TrainConfig:
    settings = dict(model=str(tiny_model), method="lora", max_steps=12, batch_size=4, learning_rate=5e-3,
                    precision="fp32", seed=1, validate_every=2, validate_rows=4, save_every=0)  # fmt: skip
    return TrainConfig(**(settings | kw))


def _plant(monkeypatch, curve: list[float]) -> list[dict[str, torch.Tensor]]:
    """Validator.score returns the planted curve, one value per call, and records the adapter at each call."""
    seen: list[dict[str, torch.Tensor]] = []

    def score(self, model):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return curve[len(seen) - 1]

    monkeypatch.setattr(Validator, "score", score)
    return seen


def _adapter(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _same_as(saved: dict[str, torch.Tensor], snapshot: dict[str, torch.Tensor]) -> bool:
    """peft saves `base_model.model.X.lora_A.weight` for the parameter `base_model.model.X.lora_A.default.weight`."""
    named = {k.replace(".default.", "."): v for k, v in snapshot.items()}
    return saved.keys() == named.keys() and all(torch.equal(saved[k], named[k]) for k in saved)


def test_the_best_validation_is_kept_and_the_run_stops_when_it_stops_improving(tiny_model, task_dir, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    seen = _plant(monkeypatch, [0.2, 0.6, 0.5, 0.4, 0.3, 0.9])
    out = tmp_path / "run"
    result = train(load_task(task_dir / "task.yaml"), _cfg(tiny_model, patience=3), out)
    # validations at steps 2, 4, ...: the best (0.6) at step 4, then three without improvement -> stop at step 10
    assert (result.best_metric, result.best_step, result.steps, result.stopped_early) == (0.6, 4, 10, True)
    assert len(seen) == 5  # the planted 0.9 at step 12 was never reached
    assert _same_as(_adapter(out), seen[1])  # the saved adapter is the one validated at step 4
    assert not _same_as(_adapter(out), seen[4])  # ... not the last one (the weights did move after step 4)
    curve = [(r["step"], r["val/field_accuracy"]) for r in read_metrics(out) if "val/field_accuracy" in r]
    assert curve == [(2, 0.2), (4, 0.6), (6, 0.5), (8, 0.4), (10, 0.3)]
    assert not (out / BEST_FILE).exists()  # the working copy of the best weights is tidied away


def test_patience_zero_runs_every_step_and_still_keeps_the_best(tiny_model, task_dir, tmp_path, monkeypatch):
    seen = _plant(monkeypatch, [0.1, 0.3, 0.2, 0.2, 0.2, 0.25])
    out = tmp_path / "run"
    result = train(load_task(task_dir / "task.yaml"), _cfg(tiny_model, patience=0), out)
    assert (result.steps, result.best_step, result.stopped_early) == (12, 4, False)
    assert _same_as(_adapter(out), seen[1])


def test_the_last_step_is_kept_when_it_scores_best(tiny_model, task_dir, tmp_path, monkeypatch):
    seen = _plant(monkeypatch, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    out = tmp_path / "run"
    result = train(load_task(task_dir / "task.yaml"), _cfg(tiny_model), out)
    assert (result.steps, result.best_step) == (12, 12)
    assert _same_as(_adapter(out), seen[-1])


def test_a_caller_can_stop_the_run_at_a_validation(tiny_model, task_dir, tmp_path, monkeypatch):
    _plant(monkeypatch, [0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    calls = []

    def prune(step, score):
        calls.append((step, score))
        return step >= 4

    result = train(load_task(task_dir / "task.yaml"), _cfg(tiny_model, patience=0), tmp_path / "run",
                   on_validation=prune)  # fmt: skip
    assert calls == [(2, 0.5), (4, 0.1)]
    assert (result.steps, result.best_step, result.stopped_early) == (4, 2, True)


def test_validation_scores_real_answers_with_the_task_metric(tiny_model, task_dir, tmp_path):
    """No planted curve: the validator generates with the model in training and scores with field accuracy."""
    result = train(load_task(task_dir / "task.yaml"), _cfg(tiny_model, max_steps=4, patience=0), tmp_path / "run")
    assert result.metric == "field_accuracy" and 0.0 <= result.best_metric <= 1.0
    records = [r for r in read_metrics(tmp_path / "run") if "val/field_accuracy" in r]
    assert [r["step"] for r in records] == [2, 4]


def test_validate_every_zero_keeps_the_last_step(tiny_model, task_dir, tmp_path, monkeypatch):
    seen = _plant(monkeypatch, [1.0] * 6)
    result = train(load_task(task_dir / "task.yaml"), _cfg(tiny_model, validate_every=0), tmp_path / "run")
    assert not seen and result.metric is None and result.steps == 12


def test_a_time_budget_ends_the_run_within_it(tiny_model, task_dir, tmp_path, monkeypatch):
    """Each step is slowed to ~0.25 s, so a 3 s budget fits about 10 of the 1,000 planned steps: the run re-plans
    after its probe steps, ends inside the budget and says how many steps it planned."""
    import tasktune.train as train_module

    real = train_module.token_loss

    def slow(*args, **kwargs):
        time.sleep(0.25)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "token_loss", slow)
    cfg = _cfg(tiny_model, max_steps=1000, time_budget="3s", validate_every=0)
    t0 = time.perf_counter()
    result = train(load_task(task_dir / "task.yaml"), cfg, tmp_path / "run")
    loop_seconds = result.seconds
    assert loop_seconds <= 3.0 + 0.5, loop_seconds  # the budget bounds the loop (one step of slack at most)
    assert time.perf_counter() - t0 < 60
    assert 6 <= result.steps < 14 and result.planned_steps == result.steps
    lrs = [r["train/lr"] for r in read_metrics(tmp_path / "run")]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)  # the schedule was re-planned to end at the new last step


def test_costly_validations_take_a_bounded_share_of_a_time_budget(tiny_model, task_dir, tmp_path, monkeypatch):
    """Each validation is slowed to 0.5 s and each step to 0.05 s; in a 6 s budget, the default 8 validations would
    take 4 s of it. Once one has been timed the run spaces them out: at most VALIDATION_SHARE of the budget (and at
    least MIN_VALIDATIONS), and the eval loss (eval_every 0) is measured at those validations only."""
    import tasktune.train as train_module

    real = train_module.token_loss

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)

    def score(self, model):
        time.sleep(0.5)
        return 0.5

    monkeypatch.setattr(train_module, "token_loss", slow)
    monkeypatch.setattr(Validator, "score", score)
    cfg = _cfg(tiny_model, max_steps=10_000, time_budget="6s", validate_every=None, eval_every=0, patience=0)
    result = train(load_task(task_dir / "task.yaml"), cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    validated = [r["step"] for r in records if "val/field_accuracy" in r]
    assert train_module.MIN_VALIDATIONS <= len(validated) <= 4, validated  # 8 without the share
    assert [r["step"] for r in records if "eval/loss" in r] == validated
    assert validated[-1] == result.steps and result.steps > 20


def test_the_recipes_eval_loss_settings_reach_the_run(tiny_model, task_dir, tmp_path, monkeypatch):
    """The recipe's eval_max_rows and eval_every are chosen after the rows are read: the run must use them (as many
    as a validation, 64 of the 100 eval rows, at the validations only), not the defaults (256 rows every 50 steps)."""
    import tasktune.train as train_module
    from tests.tiny import make_rows, write_jsonl

    write_jsonl(task_dir / "eval.jsonl", make_rows(100, seed=2))
    sizes = []
    real = train_module.evaluate_loss

    def counting(model, rows, *args, **kwargs):
        sizes.append(len(rows))
        return real(model, rows, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_loss", counting)
    cfg = TrainConfig(model=str(tiny_model), max_steps=16, precision="fp32", save_every=0, validate_every=4)
    train(load_task(task_dir / "task.yaml"), cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert set(sizes) == {64}
    assert [r["step"] for r in records if "eval/loss" in r] == [r["step"] for r in records if "val/best" in r]


def test_the_metric_curve_reaches_the_report_and_a_tracker(tiny_model, task_dir, tmp_path, monkeypatch):
    """report.html shows the validation curve; --report-to tensorboard gets the same scalars through accelerate."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tasktune.diagnose import DiagnoseConfig, diagnose, save_diagnosis

    _plant(monkeypatch, [0.2, 0.6, 0.5, 0.7, 0.3, 0.1])
    out = tmp_path / "run"
    train(load_task(task_dir / "task.yaml"), _cfg(tiny_model, patience=0, report_to=["tensorboard"]), out)
    save_diagnosis(diagnose(out, DiagnoseConfig(probes=False, limit=4)), out)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'alt="validation metric" src="data:image/png;base64,' in html
    events = list(out.rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [(e.step, round(e.value, 3)) for e in acc.Scalars("val/field_accuracy")] == [
        (2, 0.2), (4, 0.6), (6, 0.5), (8, 0.7), (10, 0.3), (12, 0.1)]  # fmt: skip
    assert len(acc.Scalars("train/loss")) == 12


def test_the_budget_replans_when_steps_grow_slower():
    """Steps of 1 s in the probe, then 2 s (validations, longer rows): the plan shrinks so the run ends in time."""
    from tasktune.train import Budget

    budget, total, clock, step = Budget(100.0), 1000, 0.0, 0
    while step < total:
        step += 1
        clock += 1.0 if step <= 6 else 2.0
        new = budget.replan(step, 0, 5.0, clock, total)
        total = new if new is not None else total
        if budget.out_of_time(clock) and step < total:
            break
    assert step == total  # the schedule's last step was reached, not cut by the hard stop
    assert 90 <= clock <= 100 and 45 <= total <= 53
    assert Budget(None).replan(6, 0, 5.0, 6.0, 1000) is None


def test_the_budget_gives_steps_back_when_early_steps_were_slow_but_never_past_the_datas_plan():
    """Validations close together early (every 5th step costs 10 s more until step 30), then sparse: the first
    re-plans shrink the run, later ones let it grow again so the budget is used, and never past the 1,000 steps the
    epochs asked for (or 120 when the data asks for fewer)."""
    from tasktune.train import Budget

    def run(total: int) -> tuple[int, float, int]:
        budget, clock, step, smallest = Budget(300.0), 0.0, 0, total
        while step < total:
            step += 1
            clock += 1.0 + (10.0 if 6 < step <= 30 and step % 5 == 0 else 0.0)
            new = budget.replan(step, 0, 5.0, clock, total)
            total = new if new is not None else total
            smallest = min(smallest, total)
            if budget.out_of_time(clock) and step < total:
                break
        return step, clock, smallest

    step, clock, smallest = run(1000)
    assert smallest < step  # it did shrink first ...
    assert clock >= 270 and clock <= 300  # ... and then used the budget: 90% or more of it
    step, clock, _ = run(120)
    assert step == 120 and clock < 250  # the data's plan is a ceiling
