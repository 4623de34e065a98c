"""`tasktune tune`: the study resumes without repeating trials, respects its time budget, prunes through
on_validation, and leaves an ordinary run folder per trial (one test trains the tiny model for real)."""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasktune import tune as tune_mod
from tasktune.cli import main
from tasktune.config import TrainConfig, build, load_task, merge_overrides
from tasktune.durations import budget_seconds
from tasktune.errors import ConfigError
from tasktune.train import train
from tasktune.tune import TuneConfig, trial_time_budget, tune


@dataclass
class FakeResult:
    run_dir: str
    best_metric: float | None
    best_step: int | None
    stopped_early: bool
    metric: str = "field_accuracy"


class FakeTrain:
    """Stands in for tasktune.train.train: writes a run folder, plays a planted validation curve through
    on_validation (stopping when it returns True), and records every call's settings."""

    def __init__(self, curve=None, every: int = 2, on_call=None):
        self.calls: list[TrainConfig] = []
        self.validations: list[int] = []  # validations played per call
        self.curve = curve or _score_by_learning_rate
        self.every = every
        self.on_call = on_call

    def __call__(self, task, cfg, out, *, on_validation=None, **kwargs):
        self.calls.append(cfg)
        if self.on_call:
            self.on_call(len(self.calls), cfg)
        out = Path(out)
        out.mkdir(parents=True)  # like train: a new folder each time (it refuses a non-empty one)
        (out / "run.json").write_text("{}", encoding="utf-8")
        best, best_step, stopped, played = None, None, False, 0
        for i, score in enumerate(self.curve(len(self.calls), cfg), start=1):
            step, played = i * self.every, i
            if best is None or score > best:
                best, best_step = score, step
            if on_validation is not None and on_validation(step, score):
                stopped = True
                break
        self.validations.append(played)
        return FakeResult(str(out), best, best_step, stopped)


def _score_by_learning_rate(call: int, cfg: TrainConfig) -> list[float]:
    """Best near lr 1e-3 (LoRA): a smooth curve the sampler can climb; the defaults (2e-4) score 0.5-ish."""
    lr = cfg.resolved_learning_rate()
    peak = max(0.0, 1 - abs(math.log10(lr) + 3) / 3)
    return [peak * f for f in (0.5, 0.8, 0.9, 1.0)]


FINISHED = ("complete", "pruned")


def _overrides(tiny_model) -> dict:
    return {"model": str(tiny_model), "max_steps": 4}


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_a_tune_writes_a_run_folder_per_trial_and_the_report(tiny_model, task_dir):
    fake = FakeTrain()
    out = task_dir / "tune"
    result = tune(task_dir / "task.yaml", TuneConfig(trials=3), out, _overrides(tiny_model), train_fn=fake)
    assert len(fake.calls) == 3 and result.finished == 3 and result.stopped_by == "trials"
    data = _results(out)
    assert [t["number"] for t in data["trials"]] == [0, 1, 2]
    assert data["trials"][0]["state"] == "complete" and all(t["state"] in FINISHED for t in data["trials"])
    for t in data["trials"]:
        assert (out / t["run_dir"] / "run.json").is_file()
        assert t["value"] is not None and t["best_step"] is not None and t["curve"]
    # trial 0 is the defaults: the task's and command line's settings, nothing sampled
    assert data["trials"][0]["defaults"] and not any(t["defaults"] for t in data["trials"][1:])
    assert fake.calls[0].model_dump(exclude_unset=True) == {"model": str(tiny_model), "max_steps": 4}
    for cfg in fake.calls[1:]:
        assert cfg.method in ("lora", "full") and cfg.max_steps == 4  # the fixed flag stays fixed
        assert "learning_rate" in cfg.model_fields_set
    # the best is the highest score, never worse than the defaults, and DIR/best points at its run folder
    best = max(data["trials"], key=lambda t: (t["value"], -t["number"]))
    assert data["best"]["number"] == best["number"] and best["value"] >= data["defaults"]["value"]
    assert (out / "best").resolve() == (out / best["run_dir"]).resolve()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 2 and "optimisation history" in html
    md = (out / "results.md").read_text(encoding="utf-8")
    assert md.count("\n| ") >= 4 and "(defaults)" in md and "field_accuracy" in md


def test_a_resumed_tune_does_not_repeat_finished_trials(tiny_model, task_dir):
    out, fake = task_dir / "tune", FakeTrain()
    tune(task_dir / "task.yaml", TuneConfig(trials=2), out, _overrides(tiny_model), train_fn=fake)
    assert len(fake.calls) == 2
    result = tune(task_dir / "task.yaml", TuneConfig(trials=3), out, _overrides(tiny_model), train_fn=fake)
    assert len(fake.calls) == 3  # one new trial, not three
    assert result.reused == 2 and result.finished == 3
    assert "learning_rate" in fake.calls[2].model_fields_set  # the defaults ran once, in the first run
    assert sum(t["defaults"] for t in _results(out)["trials"]) == 1
    tune(task_dir / "task.yaml", TuneConfig(trials=3), out, _overrides(tiny_model), train_fn=fake)
    assert len(fake.calls) == 3  # all there: the report is written again, nothing trains
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial-000", "trial-001", "trial-002"]


def test_a_tune_killed_in_a_trial_resumes_with_a_fresh_trial(tiny_model, task_dir):
    def kill_second(call, cfg):
        if call == 2:
            raise KeyboardInterrupt

    out, fake = task_dir / "tune", FakeTrain(on_call=kill_second)
    with pytest.raises(KeyboardInterrupt):
        tune(task_dir / "task.yaml", TuneConfig(trials=3), out, _overrides(tiny_model), train_fn=fake)
    assert len(fake.calls) == 2
    result = tune(task_dir / "task.yaml", TuneConfig(trials=3), out, _overrides(tiny_model), train_fn=fake)
    assert len(fake.calls) == 4  # trial 0 kept; the killed trial 1 does not count: two new ones
    assert [t["state"] in FINISHED for t in result.trials] == [True, False, True, True]
    assert result.trials[1]["state"] == "failed" and result.finished == 3
    assert not (out / "trials" / "trial-001").exists()


def test_a_trial_left_running_by_a_killed_process_is_not_counted(tiny_model, task_dir):
    import optuna

    out, fake = task_dir / "tune", FakeTrain()
    tune(task_dir / "task.yaml", TuneConfig(trials=1), out, _overrides(tiny_model), train_fn=fake)
    # what a SIGKILL mid-trial leaves: a RUNNING trial in the study and its half-written run folder
    study = optuna.load_study(study_name=tune_mod.STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    left = study.ask()
    (out / "trials" / f"trial-{left.number:03d}").mkdir()
    (out / "trials" / f"trial-{left.number:03d}" / "checkpoint-1").mkdir()
    result = tune(task_dir / "task.yaml", TuneConfig(trials=2), out, _overrides(tiny_model), train_fn=fake)
    assert len(fake.calls) == 2  # one new trial: the running one counted as neither done nor to be waited for
    assert result.interrupted == [left.number] and result.finished == 2
    row = next(t for t in result.trials if t["number"] == left.number)
    assert row["state"] == "failed" and row["interrupted"] and row["run_dir"] is None
    assert not (out / "trials" / f"trial-{left.number:03d}").exists()


def test_the_study_time_budget_stops_new_trials_and_caps_each_trial(tiny_model, task_dir, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(tune_mod, "_clock", lambda: now[0])

    def forty_seconds(call, cfg):
        now[0] += 40

    out, fake = task_dir / "tune", FakeTrain(on_call=forty_seconds)
    cfg = TuneConfig(trials=10, time_budget="100s")
    result = tune(task_dir / "task.yaml", cfg, out, _overrides(tiny_model), train_fn=fake)
    # trials start at 0, 40 and 80 s; at 120 s the budget is spent. The defaults trial may use all the time left;
    # the others get an equal share of it between the trials still to run (60 s for 9, 20 s for 8).
    assert len(fake.calls) == 3 and result.stopped_by == "time_budget"
    assert [c.time_budget for c in fake.calls] == ["100s", "6s", "2s"]
    assert result.spent_s == pytest.approx(120)
    # the budget is the study's: a rerun finds it spent (raising it would search on)
    tune(task_dir / "task.yaml", cfg, out, _overrides(tiny_model), train_fn=fake)
    assert len(fake.calls) == 3
    tune(task_dir / "task.yaml", TuneConfig(trials=10, time_budget="150s"), out, _overrides(tiny_model), train_fn=fake)
    assert len(fake.calls) == 4 and fake.calls[-1].time_budget == "4s"  # 30 s left for 7 trials


def test_a_trial_keeps_its_own_time_limit_when_the_study_has_more_time():
    own = TrainConfig(time_budget="5m")
    assert trial_time_budget(own, 3600) is None  # runs as `tasktune train` would
    assert trial_time_budget(own, 60) == "60s"
    assert trial_time_budget(TrainConfig(max_steps=3), None) is None  # no study budget: nothing changes


def test_pruning_stops_trials_that_fall_behind_through_on_validation(tiny_model, task_dir):
    def curve(call, cfg):  # two good trials, then trials far behind at every validation
        return [0.5, 0.6, 0.7, 0.8] if call <= 2 else [0.1, 0.1, 0.1, 0.2]

    out, fake = task_dir / "tune", FakeTrain(curve=curve)
    result = tune(task_dir / "task.yaml", TuneConfig(trials=4), out, _overrides(tiny_model), train_fn=fake)
    states = [t["state"] for t in result.trials]
    assert states == ["complete", "complete", "pruned", "pruned"]
    # the pruner is asked from the 2nd validation on (the 1st is noise); the run stops there, keeping its best
    assert fake.validations == [4, 4, 2, 2]
    assert [t["pruned_at_step"] for t in result.trials[2:]] == [4, 4]
    assert all(t["value"] == pytest.approx(0.1) and t["run_dir"] for t in result.trials[2:])
    assert result.best["number"] in (0, 1)

    fake = FakeTrain(curve=curve)
    result = tune(task_dir / "task.yaml", TuneConfig(trials=4, pruning=False), task_dir / "no-pruning",
                  _overrides(tiny_model), train_fn=fake)  # fmt: skip
    assert [t["state"] for t in result.trials] == ["complete"] * 4 and fake.validations == [4] * 4


def test_the_defaults_trial_is_never_pruned(tiny_model, task_dir, monkeypatch):
    import optuna

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    fake = FakeTrain()
    result = tune(task_dir / "task.yaml", TuneConfig(trials=2), task_dir / "tune", _overrides(tiny_model),
                  train_fn=fake)  # fmt: skip
    assert [t["state"] for t in result.trials] == ["complete", "pruned"]
    assert result.best["number"] == 0 and result.defaults["number"] == 0


def test_bad_settings_are_plain_errors(tiny_model, task_dir):
    for settings, words in (({"time_budget": "an hour"}, "time_budget"), ({"methods": ["prefix"]}, "methods"),
                            ({"methods": []}, "no methods"), ({"trials": 0}, "trials")):  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            build(TuneConfig, settings, "command line")
    task = task_dir / "task.yaml"
    with pytest.raises(ConfigError, match="--methods"):
        tune(task, TuneConfig(trials=1), task_dir / "t1", _overrides(tiny_model) | {"method": "full"},
             train_fn=FakeTrain())  # fmt: skip
    with pytest.raises(ConfigError, match="validate_every"):
        tune(task, TuneConfig(trials=1), task_dir / "t2", _overrides(tiny_model) | {"validate_every": 0},
             train_fn=FakeTrain())  # fmt: skip
    fake = FakeTrain()
    tune(task, TuneConfig(trials=1), task_dir / "t3", _overrides(tiny_model), train_fn=fake)
    with pytest.raises(ConfigError, match="other settings"):  # trials of another seed would not compare
        tune(task, TuneConfig(trials=2), task_dir / "t3", _overrides(tiny_model) | {"seed": 1}, train_fn=fake)
    assert len(fake.calls) == 1


def test_cli_tune_passes_its_flags_and_the_training_flags(tiny_model, task_dir, monkeypatch, capsys):
    fake = FakeTrain()
    monkeypatch.setattr(tune_mod, "train", fake)
    out = task_dir / "tune"
    args = ["tune", "--task", str(task_dir / "task.yaml"), "--out", str(out), "--trials", "3", "--methods", "full",
            "--time-budget", "1h", "--model", str(tiny_model), "--max-steps", "3", "--no-pruning"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "best: " in printed and "tasktune predict" in printed and "report.html" in printed
    assert len(fake.calls) == 3 and all(c.max_steps == 3 for c in fake.calls)
    assert [c.method for c in fake.calls[1:]] == ["full", "full"]
    assert 3500 < budget_seconds(fake.calls[0].time_budget) <= 3600  # the study's budget, not a training flag
    assert main(["tune", "--task", str(task_dir / "task.yaml"), "--out", str(out), "--time-budget", "soon"]) == 2
    assert "time_budget" in capsys.readouterr().err


@pytest.mark.skipif(
    "on_validation" not in inspect.signature(train).parameters, reason="train() has no on_validation yet"
)
def test_tune_on_the_tiny_model_leaves_runs_that_predict(tiny_model, task_dir):
    from tasktune.predict import Predictor

    overrides = {"model": str(tiny_model), "max_steps": 4, "validate_every": 2, "validate_rows": 4, "batch_size": 8,
                 "precision": "fp32", "save_every": 0}  # fmt: skip
    out = task_dir / "tune"
    result = tune(load_task(task_dir / "task.yaml"), TuneConfig(trials=3), out, overrides)
    assert result.finished == 3 and result.metric == "field_accuracy"
    for t in result.trials:
        assert t["state"] in ("complete", "pruned") and t["value"] is not None
        predictor = Predictor.from_run(out / t["run_dir"], precision="fp32")
        assert len(predictor.predict(["refund please"], max_new_tokens=4)) == 1
    assert result.best["value"] >= result.defaults["value"]
    assert (out / "best" / "run.json").is_file()


def test_a_trial_the_study_time_cut_before_any_validation_is_not_counted(tiny_model, task_dir, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(tune_mod, "_clock", lambda: now[0])

    def curve(call, cfg):
        now[0] += 60
        return [0.5] if call == 1 else []  # trial 1 runs out of the study's time before its first validation

    fake = FakeTrain(curve=curve)
    result = tune(task_dir / "task.yaml", TuneConfig(trials=3, time_budget="100s"), task_dir / "tune",
                  _overrides(tiny_model), train_fn=fake)  # fmt: skip
    assert [t["state"] for t in result.trials] == ["complete", "failed"]
    assert result.finished == 1 and result.stopped_by == "time_budget" and result.best["number"] == 0


def test_a_run_without_validation_cannot_be_ranked(tiny_model, task_dir):
    from tasktune.errors import TaskTuneError

    with pytest.raises(TaskTuneError, match="no validation score"):
        tune(task_dir / "task.yaml", TuneConfig(trials=2), task_dir / "tune", _overrides(tiny_model),
             train_fn=FakeTrain(curve=lambda call, cfg: []))  # fmt: skip


def test_the_search_space(tiny_model, task_dir):
    import optuna

    task = load_task(task_dir / "task.yaml")
    base = TrainConfig(model=str(tiny_model))
    space = tune_mod.search_space(task, base, {"model": str(tiny_model)}, TuneConfig())
    assert space.length_key == "epochs" and space.model_layers == 2  # the tiny model's depth
    low, high = space.length_range  # around the recipe's epochs for 48 rows (capped at its maximum)
    assert low >= 1 and high > low
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        s = tune_mod.sample_settings(study.ask(), space)
        seen.add(s["method"])
        lr_low, lr_high = tune_mod.LEARNING_RATE_RANGES[s["method"]]
        assert lr_low <= s["learning_rate"] <= lr_high and low <= s["epochs"] <= high + 0.01
        assert s["max_steps"] is None  # explicit: the length is the sampled epochs
        if s["method"] == "lora":
            assert s["lora.r"] in tune_mod.LORA_RANKS and s["lora.alpha"] == 2 * s["lora.r"]
            assert s["lora.top_layers"] in (None, 1, 2)
        else:
            assert not any(k.startswith("lora.") for k in s)
        assert merge_overrides(base, s).method == s["method"]  # valid overrides
    assert seen == {"lora", "full"}
    # flags given on the command line are not searched; a task counting steps is searched in steps
    fixed = tune_mod.search_space(task, base, {"learning_rate": 1e-4, "lora.r": 8, "epochs": 2}, TuneConfig())
    s = tune_mod.sample_settings(study.ask(), fixed)
    assert not {"learning_rate", "lora.r", "lora.alpha", "epochs", "max_steps"} & set(s)
    steps = tune_mod.search_space(task, TrainConfig(model=str(tiny_model), max_steps=30), {}, TuneConfig())
    assert steps.length_key == "max_steps" and steps.length_range == (10.0, 60.0)
