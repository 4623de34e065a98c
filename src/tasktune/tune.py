"""tasktune tune: search the training settings for the best validation score, in the time there is.

    tasktune tune --task task.yaml --out DIR --trials 8 --time-budget 60m [--methods lora,full] [train flags]

Trial 0 trains with the defaults: what `tasktune train` would do with the same task file and flags (the recipe's
choice from the data). Later trials let optuna's TPE sampler choose the method, the learning rate, the length
(epochs, or steps when the task sets max_steps), and for LoRA the rank and the share of layers adapted; a median
pruner stops a trial whose validation score falls behind the finished trials' at the same validation. Trials are
ranked by the task's own metric on the validation rows, which the training seed draws, so every trial is scored on
the same rows, and the best is at least as good as trial 0.

Every trial is an ordinary run folder, DIR/trials/trial-NNN, ready for predict, serve, export and diagnose.
DIR/study.db (optuna's SQLite storage) holds the study: the same command again resumes it, keeping finished trials;
--trials and --time-budget are totals for the study, so a resumed study runs only what is missing. The report:
DIR/results.json, DIR/results.md, DIR/report.html, and DIR/best, a link to the best trial's run folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasktune.config import TaskConfig, TrainConfig, load_task, merge_overrides
from tasktune.durations import budget_seconds, validate_budget
from tasktune.errors import ConfigError, TaskTuneError, TrainingStopped
from tasktune.fsio import atomic_write_json, atomic_write_text, ensure_writable_dir
from tasktune.pages import figures, page
from tasktune.plots import png
from tasktune.rundir import file_fingerprint, read_config
from tasktune.runtime import progress_enabled
from tasktune.train import train

METHODS = ("lora", "full")
# Peak learning rates searched, log-uniform, per method: a decade and more either side of the defaults (LoRA: the
# recipe's LoRA+ 5e-4 and plain 2e-4; full: 5e-5), since the best rate moves with the data and the length.
LEARNING_RATE_RANGES = {"lora": (5e-5, 3e-3), "full": (5e-6, 3e-4)}
LORA_RANKS = (4, 8, 16, 32, 64)
# Share of the model's layers (the top ones) that get adapters; 1.0 = all. Fewer layers: shorter backward passes, so a
# time-bound trial sees more rows, at less capacity (config.LoraSettings.top_layers).
LORA_LAYER_SHARES = (1.0, 0.75, 0.5, 0.25)
# Lengths searched: from a third of the default length to twice it, log-uniform.
LENGTH_RANGE = (1 / 3, 2.0)
STUDY_NAME = "tasktune-tune"
TRIALS_DIR = "trials"

TrainFn = Callable[..., Any]
# The clock of the study's time budget (a test moves it on by hand).
_clock = time.monotonic


class TuneConfig(BaseModel):
    """How to search. Training settings come from the task file and the command line, as for `tasktune train`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    trials: int = Field(
        8, ge=1, description="finished trials (complete or pruned) the study should hold; a rerun adds the missing ones"
    )
    time_budget: str | None = Field(
        None,
        description="wall-clock budget of the whole study, like 60m or 2h: no trial starts once it is spent, and a"
        " trial still running then ends with its best checkpoint (finished trials' time counts on resume)",
    )
    methods: list[Literal["lora", "full"]] = Field(
        default_factory=lambda: list(METHODS), description="methods the search chooses among"
    )
    sampler_seed: int = Field(
        0, description="seed of the TPE sampler (the training seed, which draws the validation rows, is `seed`)"
    )
    pruning: bool = Field(
        True, description="stop trials whose validation score falls below the median of the finished trials'"
    )

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        return validate_budget(value)

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError(f"no methods given; choose among: {', '.join(METHODS)}")
        if len(set(methods)) < len(methods):
            raise ValueError("a method is listed twice")
        return methods


# --- the search space ---------------------------------------------------------------------------------------------
@dataclass
class SearchSpace:
    """What the sampler may change. Keys given on the command line stay fixed (the task file's are trial 0's)."""

    methods: list[str]
    fixed: set[str]  # train keys the user fixed: not sampled
    length_key: str | None  # "epochs" or "max_steps"; None when the length is fixed
    length_range: tuple[float, float]
    model_layers: int | None  # for lora.top_layers; None: unknown, all layers


def search_space(task: TaskConfig, base: TrainConfig, overrides: dict, cfg: TuneConfig) -> SearchSpace:
    fixed = set(overrides)
    length_key, length_range = None, (1.0, 1.0)
    if not fixed & {"epochs", "max_steps"}:
        if base.max_steps is not None:  # the task file counts steps: search steps around them
            length_key, centre = "max_steps", float(base.max_steps)
        else:
            length_key, centre = "epochs", _default_epochs(task, base)
        low = max(1.0, centre * LENGTH_RANGE[0])
        length_range = (low, max(low + 1, centre * LENGTH_RANGE[1]))
    layers = _model_layers(base.model) if "lora" in cfg.methods and "lora.top_layers" not in fixed else None
    return SearchSpace(list(cfg.methods), fixed, length_key, length_range, layers)


def _default_epochs(task: TaskConfig, base: TrainConfig) -> float:
    """The epochs trial 0 gets: the task's, or the recipe's choice from the row count."""
    if base.recipe == "off" or "epochs" in base.model_fields_set:
        return base.epochs
    from tasktune.data import read_examples
    from tasktune.recipe import planned_epochs

    return planned_epochs(len(read_examples(task.data_path("train"))))[0]


def _model_layers(model: str) -> int | None:
    from tasktune.models import resolve_model

    try:
        config = json.loads((resolve_model(model).path / "config.json").read_text(encoding="utf-8"))
        return int(config["num_hidden_layers"])
    except (OSError, KeyError, ValueError, TypeError, TaskTuneError):
        return None  # a model train can load anyway: search no layer counts, adapt all


def sample_settings(trial, space: SearchSpace) -> dict[str, Any]:
    """One trial's training settings, as dotted override keys (merge_overrides)."""
    method = trial.suggest_categorical("method", space.methods)
    settings: dict[str, Any] = {"method": method}
    if "learning_rate" not in space.fixed:
        low, high = LEARNING_RATE_RANGES[method]
        settings["learning_rate"] = trial.suggest_float(f"learning_rate_{method}", low, high, log=True)
    if space.length_key == "epochs":
        epochs = trial.suggest_float("epochs", *space.length_range, log=True)
        settings |= {"epochs": round(epochs, 2), "max_steps": None}  # an explicit None: the recipe sets no steps
    elif space.length_key == "max_steps":
        low, high = space.length_range
        settings["max_steps"] = trial.suggest_int("max_steps", int(low), math.ceil(high), log=True)
    if method == "lora":
        if "lora.r" not in space.fixed:
            r = trial.suggest_categorical("lora_r", LORA_RANKS)
            settings["lora.r"] = r
            if "lora.alpha" not in space.fixed:
                # alpha / r stays at the default's 2 (32 / 16): the rank changes capacity, not the update's scale
                settings["lora.alpha"] = 2.0 * r
        if space.model_layers is not None:
            share = trial.suggest_categorical("lora_layers", LORA_LAYER_SHARES)
            settings["lora.top_layers"] = None if share == 1.0 else max(1, math.ceil(space.model_layers * share))
    return settings


def _check_overrides(overrides: dict) -> None:
    if "method" in overrides:
        raise ConfigError("tune chooses the method per trial", "drop --method; pass --methods lora (or lora,full)")
    if "time_budget" in overrides:
        raise ConfigError(
            "tune sets each trial's time_budget from the study's", "give the study's budget as TuneConfig.time_budget"
        )


# --- the time budget ------------------------------------------------------------------------------------------------
def _own_budget(cfg: TrainConfig) -> float | None:
    """The time limit a trial has on its own: its time_budget, else the one the recipe gives it."""
    if "time_budget" in cfg.model_fields_set:
        return budget_seconds(cfg.time_budget)
    import torch

    from tasktune.recipe import recipe_time_budget

    return budget_seconds(recipe_time_budget(cfg, "cuda" if torch.cuda.is_available() else "cpu"))


def trial_time_budget(cfg: TrainConfig, left: float | None) -> str | None:
    """The trial's time_budget: the study's time left, when that is shorter than the trial's own limit (so a trial
    runs as `tasktune train` would, and ends with its best checkpoint when the study's time is up). None: keep it."""
    if left is None:
        return None
    own = _own_budget(cfg)
    if own is not None and own <= left:
        return None
    return f"{max(1, int(left))}s"


# --- the study ------------------------------------------------------------------------------------------------------
@dataclass
class TuneResult:
    out: str
    task: str
    metric: str | None
    trials: list[dict]  # every trial, failed ones too (see _trial_row)
    best: dict | None  # the finished trial with the highest score (ties: the earlier one, so trial 0 wins ties)
    defaults: dict | None  # trial 0: the defaults
    finished: int
    target_trials: int
    stopped_by: str  # "trials": all finished; "time_budget": the study's time was spent first
    time_budget_s: float | None
    spent_s: float  # time of the finished trials, this run and earlier ones
    seconds: float  # this run
    reused: int = 0  # finished trials found from an earlier run
    interrupted: list[int] = field(default_factory=list)  # trials found left running by a killed run

    def to_dict(self) -> dict:
        return asdict(self)


def tune(
    task: str | Path | TaskConfig,
    cfg: TuneConfig,
    out: str | Path,
    train_overrides: dict | None = None,
    *,
    train_fn: TrainFn | None = None,
    force: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> TuneResult:
    """Run (or resume) the study in `out`; write results.json, results.md, report.html and the `best` link there.

    `train_overrides`: training settings fixed for every trial (dotted keys, as `tasktune train`'s flags); the
    sampler leaves those alone. `train_fn`: called as `tasktune.train.train` (the default) is, with `on_validation`."""
    import optuna
    from tqdm.auto import tqdm

    t0 = _clock()
    train_fn = train_fn or train
    task = task if isinstance(task, TaskConfig) else load_task(task)
    overrides = dict(train_overrides or {})
    _check_overrides(overrides)
    base = merge_overrides(task.train, overrides)
    if base.validate_every == 0:
        raise ConfigError(
            "tune ranks trials by the validation score, but validate_every is 0 (no validation)",
            "drop --validate-every 0 (the default validates 8 times per run)",
        )
    if task.data_path("train") is None:
        raise ConfigError("the task has no training data (data.train)", "set data.train in the task file")
    space = search_space(task, base, overrides, cfg)
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / "study.db").is_file():
        raise TaskTuneError(f"{out} is not empty and holds no study (study.db)", "choose a new --out folder")
    out = ensure_writable_dir(out, what="tune folder")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happened
    budget = budget_seconds(cfg.time_budget, "time_budget")
    trust = {"force": force, "allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}

    with _only_tune_in(out):
        study, storage = _open_study(out, cfg, _study_spec(task, base))
        interrupted = _retire_interrupted(study, storage, out)
        finished = _finished(study)
        reused = len(finished)
        spent_before = sum(t.user_attrs.get("seconds", 0.0) for t in finished)
        deadline = None if budget is None else t0 + budget - spent_before
        if reused:
            print(f"tasktune tune: resuming {out}: {reused} finished trial(s) kept")
        bar = tqdm(total=cfg.trials, initial=min(reused, cfg.trials), desc="tune", unit="trial",
                   disable=not progress_enabled())  # fmt: skip
        while True:
            left = None if deadline is None else deadline - _clock()
            if len(_finished(study)) >= cfg.trials:
                stopped_by = "trials"
                break
            if left is not None and left < 1:
                stopped_by = "time_budget"
                break
            row = _run_trial(study, task, overrides, space, cfg, out, left, train_fn, trust)
            bar.update(1)
            bar.write(f"tasktune tune: {_trial_line(row)}")
        bar.close()
        result = _collect(study, task, out, cfg, budget, stopped_by, _clock() - t0, reused, interrupted)
        write_report(result, out)
        _link_best(result, out)
    return result


@contextlib.contextmanager
def _only_tune_in(out: Path) -> Iterator[None]:
    """One tune per folder at a time: a trial left RUNNING in the study then can only be one whose process died."""
    import fcntl

    with open(out / ".tune.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TaskTuneError(
                f"another `tasktune tune` is running in {out}", "wait for it, or pick another --out"
            ) from None
        yield  # the lock goes with the file descriptor, also when the process is killed


def _study_spec(task: TaskConfig, base: TrainConfig) -> dict:
    """What makes trials comparable: the task, its data and the fixed training settings (not the search's size)."""
    return {
        "task": task.model_dump(mode="json", by_alias=True, exclude={"base_dir", "train"}),
        "data_sha256": {k: file_fingerprint(p) for k in ("train", "eval") if (p := task.data_path(k))},
        "train": base.model_dump(mode="json", exclude_unset=True),
    }


def _open_study(out: Path, cfg: TuneConfig, spec: dict):
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}")
    earlier = 0
    if STUDY_NAME in optuna.get_all_study_names(storage):
        earlier = len(storage.get_all_trials(storage.get_study_id_from_name(STUDY_NAME), deepcopy=False))
    # Seeded with the trials so far: a resumed study draws new settings, not the first run's again.
    startup = min(10, max(3, cfg.trials // 2))  # random trials before TPE models the scores
    sampler = optuna.samplers.TPESampler(seed=cfg.sampler_seed + earlier, n_startup_trials=startup)
    # The pruner's steps are validations (1st, 2nd, ...): trials of different lengths are compared at the same share
    # of their runs. Never at the first validation, which is mostly noise.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if not cfg.pruning:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)  # fmt: skip
    old = study.user_attrs.get("spec")
    if old is None:
        study.set_user_attr("spec", spec)
    elif old != spec:
        changed = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
        raise ConfigError(
            f"{out} holds a study of other settings (changed: {', '.join(changed)}); its trials would not compare",
            "run with the settings it was started with, or choose a new --out folder",
        )
    return study, storage


def _retire_interrupted(study, storage, out: Path) -> list[int]:
    """Trials a killed run left RUNNING are marked failed (a fresh trial takes their place), and failed trials' run
    folders are removed: they hold no result."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(STUDY_NAME)
    interrupted = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        interrupted.append(t.number)
        print(f"tasktune tune: trial {t.number} was interrupted; it is marked failed and a fresh trial replaces it")
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        shutil.rmtree(out / _trial_dir(t.number), ignore_errors=True)
    return interrupted


def _finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _trial_dir(number: int) -> str:
    return f"{TRIALS_DIR}/trial-{number:03d}"


def _run_trial(study, task, overrides, space, cfg, out, left, train_fn, trust) -> dict:
    """Ask the sampler for settings, train one run folder, and tell the study its score."""
    from optuna.trial import TrialState

    defaults = not any(t.user_attrs.get("defaults") for t in _finished(study))
    trial = study.ask()
    sampled = {} if defaults else sample_settings(trial, space)
    settings = overrides | sampled
    tcfg = merge_overrides(task.train, settings, source=f"trial {trial.number}")
    # The defaults trial runs as `tasktune train` would (its own budget); the others share the study's time left
    # equally, so that the trials asked for fit in it (a pruned trial's unused time goes to the ones after it).
    allowed = left if defaults or left is None else left / max(1, cfg.trials - len(_finished(study)))
    if (budget := trial_time_budget(tcfg, allowed)) is not None:
        tcfg = merge_overrides(tcfg, {"time_budget": budget}, source=f"trial {trial.number}")
    run_dir = out / _trial_dir(trial.number)
    shutil.rmtree(run_dir, ignore_errors=True)
    for key, value in {"defaults": defaults, "sampled": sampled, "run_dir": _trial_dir(trial.number),
                       "time_budget": tcfg.time_budget}.items():  # fmt: skip
        trial.set_user_attr(key, value)
    curve: list[list] = []
    pruned_at: list[int] = []

    def on_validation(step: int, score: float) -> bool:
        curve.append([step, score])
        trial.report(score, len(curve))
        # trial 0 runs to its end whatever the others did: the best trial is then at least as good as the defaults
        if cfg.pruning and not defaults and not pruned_at and trial.should_prune():
            pruned_at.append(step)
        return bool(pruned_at)

    start = _clock()
    try:
        res = train_fn(task, tcfg, run_dir, on_validation=on_validation, **trust)
    except TrainingStopped as e:
        study.tell(trial, state=TrialState.FAIL)
        raise TrainingStopped(f"tune stopped in trial {trial.number}: {e.message}",
                              "run the same command again: finished trials are kept and the study goes on",
                              e.exit_code - 128) from None  # fmt: skip
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)  # its folder is kept to look at, and removed by the next run
        raise
    attrs = {
        "seconds": _clock() - start,
        "metric": res.metric,
        "best_metric": res.best_metric,
        "best_step": res.best_step,
        "stopped_early": res.stopped_early,
        "curve": curve,
        "pruned_at_step": pruned_at[0] if pruned_at else None,
        "settings": _resolved_settings(run_dir, tcfg),
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if res.best_metric is None:
        study.tell(trial, state=TrialState.FAIL)
        if left is not None and attrs["seconds"] >= left - 1:  # cut short by the study's time: not counted
            return _trial_row(study.trials[trial.number])
        raise TaskTuneError(
            f"trial {trial.number} ({run_dir}) measured no validation score, so it cannot be ranked",
            "tune ranks trials by the task's metric on held-out rows: leave validate_every unset (or > 0), and give"
            " the task an eval file or 10+ training rows to hold some out",
        )
    if pruned_at:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, res.best_metric)
    return _trial_row(study.trials[trial.number])


def _resolved_settings(run_dir: Path, cfg: TrainConfig) -> dict:
    """The searched settings as the run trained them (its config.yaml, after the recipe), else as tune set them."""
    saved = read_config(run_dir).get("train") or {}
    data = cfg.model_dump(mode="json") | saved
    lora = data.get("lora") or {}
    lr = data.get("learning_rate")
    return {
        "method": data.get("method"),
        "learning_rate": lr if lr is not None else cfg.resolved_learning_rate(),
        "epochs": None if data.get("max_steps") else data.get("epochs"),  # max_steps overrides epochs
        "max_steps": data.get("max_steps"),
        "lora.r": lora.get("r") if data.get("method") == "lora" else None,
        "lora.top_layers": lora.get("top_layers") if data.get("method") == "lora" else None,
        "time_budget": data.get("time_budget"),
    }


# --- results ------------------------------------------------------------------------------------------------------
_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def _trial_row(t) -> dict:
    a = t.user_attrs
    return {
        "number": t.number,
        "state": _STATES.get(t.state.name, t.state.name.lower()),
        "defaults": bool(a.get("defaults")),
        "interrupted": bool(a.get("interrupted")),
        "value": a.get("best_metric"),
        "metric": a.get("metric"),
        "best_step": a.get("best_step"),
        "pruned_at_step": a.get("pruned_at_step"),
        "stopped_early": a.get("stopped_early"),
        "seconds": a.get("seconds"),
        "run_dir": a.get("run_dir") if t.state.name in ("COMPLETE", "PRUNED") else None,
        "settings": a.get("settings") or a.get("sampled") or {},
        "params": dict(t.params),
        "curve": a.get("curve", []),
    }


def _collect(study, task, out, cfg, budget, stopped_by, seconds, reused, interrupted) -> TuneResult:
    rows = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    done = [r for r in rows if r["state"] in ("complete", "pruned") and r["value"] is not None]
    best = max(done, key=lambda r: (r["value"], -r["number"]), default=None)
    return TuneResult(
        out=str(out),
        task=task.name,
        metric=next((r["metric"] for r in done if r["metric"]), None),
        trials=rows,
        best=best,
        defaults=next((r for r in done if r["defaults"]), None),
        finished=len(done),
        target_trials=cfg.trials,
        stopped_by=stopped_by,
        time_budget_s=budget,
        spent_s=sum(r["seconds"] or 0.0 for r in done),
        seconds=seconds,
        reused=reused,
        interrupted=interrupted,
    )


def _link_best(result: TuneResult, out: Path) -> None:
    """DIR/best: a relative symlink to the best trial's run folder (a text file naming it where links fail)."""
    link = out / "best"
    if result.best is None:
        return
    target = result.best["run_dir"]
    tmp = out / ".best.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        atomic_write_text(link, f"{out / target}\n")


# --- the report -----------------------------------------------------------------------------------------------------
def _fmt_lr(v) -> str:
    return "–" if v is None else f"{v:.1e}"


def _length(s: dict) -> str:
    if s.get("max_steps"):
        return f"{s['max_steps']} steps"
    return "–" if s.get("epochs") is None else f"{s['epochs']:.3g} ep"


def table_rows(result: TuneResult) -> tuple[list[str], list[list[str]]]:
    metric = result.metric or "score"
    header = ["trial", "state", "method", "lr", "length", "lora r", "layers", metric, "best step", "minutes"]
    best = result.best["number"] if result.best else None
    body = []
    for r in result.trials:
        s = r["settings"]
        name = f"{r['number']}" + (" (defaults)" if r["defaults"] else "") + (" *" if r["number"] == best else "")
        state = r["state"] + (f" at {r['pruned_at_step']}" if r["pruned_at_step"] is not None else "")
        layers = s.get("lora.top_layers")
        body.append([
            name, state, s.get("method") or "–", _fmt_lr(s.get("learning_rate")), _length(s),
            "–" if s.get("lora.r") is None else str(s["lora.r"]),
            "–" if s.get("method") != "lora" else ("all" if layers is None else f"top {layers}"),
            "–" if r["value"] is None else f"{r['value']:.4f}",
            "–" if r["best_step"] is None else str(r["best_step"]),
            "–" if r["seconds"] is None else f"{r['seconds'] / 60:.1f}",
        ])  # fmt: skip
    return header, body


def format_table(result: TuneResult) -> str:
    header, body = table_rows(result)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths, strict=True))) for row in [header, *body])  # fmt: skip


def format_best(result: TuneResult) -> str:
    """The best trial, what the defaults scored, and how to use the best run."""
    if result.best is None:
        return "tasktune tune: no trial finished with a validation score yet; run the same command again"
    b, d = result.best, result.defaults
    run = Path(result.out) / b["run_dir"]
    lines = [f"best: {run} ({result.metric} {b['value']:.4f}) — try: tasktune predict {run} --input ..."]
    if d is not None and d["number"] != b["number"]:
        lines.append(f"defaults (trial {d['number']}): {result.metric} {d['value']:.4f}")
    lines.append(f"also: {Path(result.out) / 'best'} links to it; serve or export it like any run folder")
    return "\n".join(lines)


def _trial_line(row: dict) -> str:
    score = "no score" if row["value"] is None else f"{row['metric']} {row['value']:.4f}"
    shown = (f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["settings"].items() if v)
    what = "defaults" if row["defaults"] else ", ".join(shown)
    return f"trial {row['number']} {row['state']}: {score} ({what})"


def _notes(result: TuneResult) -> list[str]:
    used = f"{result.spent_s / 60:.1f} min of trials"
    budget = "" if result.time_budget_s is None else f" of a {result.time_budget_s / 60:.0f} min budget"
    why = "all trials finished" if result.stopped_by == "trials" else "the time budget was spent"
    notes = [
        f"Task {result.task}: {result.finished} of {result.target_trials} trials finished ({why}); {used}{budget}.",
        f"Score: {result.metric} on the validation rows (drawn from the training data by the seed; the same rows"
        " for every trial), at the run's best step; higher is better. * marks the best trial.",
        "Trial 0 trains with the defaults (as `tasktune train` would); pruned trials stopped at the validation step"
        " shown, below the median of the finished trials there, and keep their best checkpoint.",
        "Resume or extend: run the same command again (raise --trials or --time-budget to search more).",
    ]
    if result.best is not None:
        notes.append(format_best(result).replace("\n", "; "))
    return notes


def render_markdown(result: TuneResult) -> str:
    header, body = table_rows(result)
    lines = [f"# tasktune tune: {result.task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join([*lines, "", *(f"- {n}" for n in _notes(result)), ""])


def make_plots(result: TuneResult) -> dict[str, str]:
    """The optimisation history and each searched setting against the score, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result.metric or "score"
    scored = [r for r in result.trials if r["value"] is not None]
    colors = {"lora": "tab:blue", "full": "tab:orange"}
    plots = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in scored:
        marker = "*" if r["defaults"] else "x" if r["state"] == "pruned" else "o"
        ax.scatter(r["number"], r["value"], marker=marker, s=90 if r["defaults"] else 40,
                   color=colors.get(r["settings"].get("method"), "gray"))  # fmt: skip
    running, best = [], -math.inf
    for r in scored:
        best = max(best, r["value"])
        running.append((r["number"], best))
    if running:
        ax.step(*zip(*running, strict=True), where="post", color="black", alpha=0.5, label="best so far")
        ax.legend()
    ax.set(xlabel="trial (* defaults, x pruned; blue lora, orange full)", ylabel=metric, title="optimisation history")
    ax.grid(alpha=0.3)
    plots["optimisation_history"] = png(fig)

    panels = [("learning_rate", "learning rate", True), ("length", "length (epochs or steps)", False),
              ("lora.r", "LoRA rank", True)]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharey=True)
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        for r in scored:
            s = r["settings"]
            x = (s.get("max_steps") or s.get("epochs")) if key == "length" else s.get(key)
            if x is not None:
                ax.scatter(x, r["value"], marker="x" if r["state"] == "pruned" else "o",
                           color=colors.get(s.get("method"), "gray"))  # fmt: skip
        if key == "lora.r":
            ax.set_xscale("log", base=2)
            ax.set_xticks(LORA_RANKS, [str(r) for r in LORA_RANKS])
        elif log and ax.collections:
            ax.set_xscale("log")
        ax.set(xlabel=label, title=f"{metric} vs {label}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    plots["settings_vs_score"] = png(fig)
    return plots


def render_html(result: TuneResult) -> str:
    from html import escape

    header, body = table_rows(result)
    th = "".join(f"<th>{escape(h)}</th>" for h in header)
    best = result.best["number"] if result.best else None
    trs = "".join(f"<tr{' class=highlight' if r['number'] == best else ''}>"
                  + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                  for r, row in zip(result.trials, body, strict=True))  # fmt: skip
    notes = "".join(f"<li>{escape(n)}</li>" for n in _notes(result))
    body_html = f"""<table id="trials"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>
<ul>{notes}</ul>
<h2>Plots</h2>{figures(make_plots(result))}"""
    css = "#trials td { text-align: right; }\n#trials td:nth-child(-n+3) { text-align: left; }"
    return page(f"tasktune tune: {result.task}", body_html, css)


def write_report(result: TuneResult, out: Path) -> None:
    atomic_write_json(out / "results.json", result.to_dict())
    atomic_write_text(out / "results.md", render_markdown(result))
    atomic_write_text(out / "report.html", render_html(result))
