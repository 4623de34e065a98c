"""tasktune train: fine-tune a base model so that it does the task from the bare input.

    tasktune train --task task.yaml --out runs/my-run [--method lora|full] [--max-steps N] ...

One explicit loop (`fit`): forward → loss over supervised tokens → backward → accumulate → clip → step → schedule →
log → eval. Strategies (strategies.py) only change how the model is prepared and saved.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tasktune.batching import collate, encode_rows, shuffled_batches, split_eval, suggest_max_new_tokens
from tasktune.checkpoint import (
    Checkpointing,
    StopOnSignal,
    TrainState,
    find_checkpoint,
    load_checkpoint,
    stopped,
    unsupported_reason,
)
from tasktune.config import TaskConfig, TrainConfig
from tasktune.constrain import task_labels, task_schema
from tasktune.data import read_examples
from tasktune.distributed import check_engine, quiet_unless_main
from tasktune.durations import budget_seconds
from tasktune.errors import ConfigError, DataError, TaskTuneError
from tasktune.fsio import atomic_dir, atomic_write_json, ensure_writable_dir
from tasktune.loss import evaluate_loss, token_loss
from tasktune.models import load_base, load_tokenizer, resolve_model
from tasktune.recipe import DataFacts, choose_recipe
from tasktune.render import IGNORE, ChatFormat, Encoded
from tasktune.rundir import MetricsLog, RunInfo, write_config, write_env
from tasktune.runtime import (
    describe_precision,
    make_accelerator,
    progress_enabled,
    resolve_precision,
)
from tasktune.strategies import count_parameters, get_strategy, save_trained
from tasktune.validation import BestWeights, Validator

VALIDATIONS_PER_RUN = 8  # validations by the task's metric in a run whose validate_every is left to the default
# Under a time budget, validations may take at most this share of it (between MIN_VALIDATIONS and
# VALIDATIONS_PER_RUN of them): generating long answers for held-out rows costs as much as many training steps, and
# every second spent on it is a second of training lost.
VALIDATION_SHARE = 0.15
MIN_VALIDATIONS = 3


@dataclass
class TrainResult:
    run_dir: str
    method: str
    steps: int
    train_loss: float
    eval_loss: float | None
    best_eval_loss: float | None
    seconds: float
    eval_seconds: float
    tokens_per_s: float
    supervised_tokens_per_s: float
    train_rows: int
    skipped_rows: int
    trainable_params: int
    total_params: int
    metric: str | None = None  # the task metric that selected the weights (None: validation was off)
    best_metric: float | None = None
    best_step: int | None = None
    stopped_early: bool = False  # ended before its planned steps: no longer improving, out of time, or pruned
    planned_steps: int | None = None
    recipe: dict = field(default_factory=dict)  # what the recipe chose from the data, and why

    def to_dict(self) -> dict:
        return asdict(self)


def frozen_linears_to_bf16(model) -> None:
    """Store the Linear weights of a base that stays frozen in bf16 (not the tied embeddings).

    Frozen matmul weights need no fp32 master copy: stored in bf16 they skip autocast's per-step casts and halve
    their memory. Embeddings and norms stay fp32, so the residual stream stays fp32 too (a whole-bf16 model ran its
    element-wise ops in bf16 and was slower, at the same eval loss). peft keeps the
    trained adapter weights in fp32 (autocast_adapter_dtype)."""
    embeddings = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not embeddings:
            module.to(torch.bfloat16)


# --- the loop -----------------------------------------------------------------------------------------------------
def plan_steps(n_rows: int, cfg: TrainConfig, world: int = 1) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = math.ceil(n_rows / (cfg.batch_size * cfg.grad_accum * world))
    return max(1, math.ceil(per_epoch * cfg.epochs))


def iter_micro_batches(
    rows: list[Encoded], cfg: TrainConfig, pad_id: int, rank: int = 0, world: int = 1, start: tuple[int, int] = (0, 0)
):
    """Endless (epoch, index, micro-batch), epoch after epoch, reshuffled per epoch from the seed.

    Process `rank` of `world` takes every world-th batch, and every process the same number per epoch: the last
    len % world batches of an epoch (a different few each epoch, after the reshuffle) are left out, so that all
    processes run the same steps within the same epoch. `start`: the (epoch, index) to continue from on resume."""
    lengths = [len(r.input_ids) for r in rows]
    epoch, index = start
    while True:
        rng = random.Random(cfg.seed * 100_003 + epoch)
        batches = shuffled_batches(lengths, cfg.batch_size, rng, cfg.group_by_length)
        per_process = len(batches) // world
        if per_process == 0:
            raise DataError(
                f"{len(rows)} training rows make {len(batches)} batch(es) of {cfg.batch_size}, fewer than the"
                f" {world} processes",
                "lower --batch-size, add rows, or use fewer processes",
            )
        mine = batches[rank : per_process * world : world]
        for i in range(index, per_process):
            yield epoch, i, collate([rows[j] for j in mine[i]], pad_id)
        epoch, index = epoch + 1, 0


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; with `lora.plus_lr_ratio` > 1, peft's LoRA+ groups (B at ratio x lr)."""
    lr = cfg.resolved_learning_rate()
    if cfg.method == "lora" and cfg.lora.plus_lr_ratio != 1:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=cfg.lora.plus_lr_ratio,
            loraplus_weight_decay=cfg.weight_decay,
        )  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


@contextlib.contextmanager
def neftune(model, alpha: float | None, accelerator):
    """NEFTune noise on the input embeddings for the duration of the block (transformers' hook, as TRL uses it);
    the hook only acts in train mode and is removed afterwards, so eval loss, saving and generation see no noise."""
    if alpha is None:
        yield
        return
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    handle = activate_neftune(model, alpha, accelerator)
    try:
        yield
    finally:
        deactivate_neftune(model, handle, accelerator)


def cosine_schedule(optimizer, cfg: TrainConfig, total_steps: int, done: int = 0):
    """Linear warm-up over `warmup_ratio` of the steps, then cosine decay to zero at `total_steps`; `done`: steps
    already taken (a time budget re-plans the total after the first steps, a resumed run continues)."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps, last_epoch=done - 1
    )


@dataclass
class Budget:
    """A wall-clock limit on the loop. After PROBE steps the total is planned from the measured seconds per step (the
    first step is left out: it builds kernels and caches), keeping 15% of the time for validations and saves; then,
    RECHECKS times over the run, it is planned again from the average time per step since the probe, validations
    included, so a run whose steps grow slower still ends its schedule inside the budget, and one whose early
    validations came closer together than the later ones (their cadence is set once the first is timed) gets the
    steps back, up to the total the data asked for. No step starts that would end past the limit."""

    seconds: float | None
    PROBE = 6
    RECHECKS = 10
    per_step: float | None = None
    probe_end: tuple[int, float] | None = None  # (step, elapsed seconds) when the probe ended
    ceiling: int | None = None  # the total before the probe (from the epochs): re-plans stay at or under it

    def replan(self, step: int, start: int, since_probe: float, elapsed: float, planned: int) -> int | None:
        """The new total steps, or None if the plan stands."""
        if self.seconds is None:
            return None
        if step == start + self.PROBE:
            self.per_step = since_probe / (self.PROBE - 1)
            self.probe_end = (step, elapsed)
            self.ceiling = planned
            return max(step, min(planned, step + int(0.85 * (self.seconds - elapsed) / self.per_step)))
        if self.probe_end is None or step <= self.probe_end[0] or step >= planned:
            return None
        done = step - self.probe_end[0]
        if done % max(1, (planned - self.probe_end[0]) // self.RECHECKS):
            return None
        rate = (elapsed - self.probe_end[1]) / done
        fits = max(step, min(self.ceiling, step + int(0.95 * (self.seconds - elapsed) / rate)))
        return fits if fits != planned else None

    def out_of_time(self, elapsed: float) -> bool:
        return self.seconds is not None and self.per_step is not None and elapsed + self.per_step > self.seconds


def fit(
    model,
    train_rows: list[Encoded],
    eval_rows: list[Encoded],
    cfg: TrainConfig,
    accelerator,
    pad_id: int,
    log: MetricsLog,
    ckpt: Checkpointing | None = None,
    validator: Validator | None = None,
    best: BestWeights | None = None,
    on_validation: Callable[[int, float], bool] | None = None,
) -> dict:
    """Train `model` in place; returns the final figures. Metrics go to `log` (main process only).

    With `ckpt`, checkpoints are written as it says (and resumed from `ckpt.resume_from`); SIGINT/SIGTERM stop the loop
    after the current step, with a checkpoint, by raising TrainingStopped. With `validator`, the task's own metric is
    measured every `validate_every` steps; the best-scoring weights are restored at the end (kept in `best`), and the
    run stops after `patience` validations without improvement, or when `on_validation(step, score)` returns True.
    `cfg.time_budget` bounds the wall-clock time of the loop (class Budget)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    prepended = get_strategy(cfg.method).prepended_tokens(cfg)
    optimizer = make_optimizer(model, cfg)
    total_steps = plan_steps(len(train_rows), cfg, world)
    scheduler = cosine_schedule(optimizer, cfg, total_steps)
    resume = ckpt and ckpt.resume_from and load_checkpoint(ckpt.resume_from, model, optimizer, scheduler, accelerator)
    start = resume.step if resume else 0
    totals = resume.figures if resume else {}  # a resumed run carries on its totals
    if totals.get("planned_steps", total_steps) != total_steps:  # a time budget had re-planned the run
        total_steps = totals["planned_steps"]
        scheduler = cosine_schedule(optimizer, cfg, total_steps, done=start)
    if start >= total_steps or totals.get("stopped_early"):
        raise TaskTuneError(f"the run already finished ({start} steps)", "to train more, start a new run")
    model, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]  # prepare may replace them (FSDP2 shards them)
    micro_batches = iter_micro_batches(
        train_rows, cfg, pad_id, rank, world, (resume.epoch, resume.batch) if resume else (0, 0)
    )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=start,
        desc="train",
        unit="step",
        disable=not (accelerator.is_main_process and progress_enabled()),
    )
    t0 = time.perf_counter() - totals.get("seconds", 0.0)
    eval_seconds = totals.get("eval_seconds", 0.0)  # kept out of the throughput figures
    seen_tokens, seen_sup = totals.get("seen_tokens", 0), totals.get("seen_sup", 0)
    train_loss, eval_loss, best_eval = totals.get("train_loss"), totals.get("eval_loss"), totals.get("best_eval")
    best_score, best_step, stale = totals.get("best_score"), totals.get("best_step"), totals.get("stale", 0)
    if validator and best is not None and best_step is not None and not best.load():
        best_score, best_step = None, None  # the best weights' file is gone: select again from here on
    budget = Budget(budget_seconds(cfg.time_budget))
    val_seconds, val_count = totals.get("val_seconds", 0.0), totals.get("val_count", 0)

    def cadence() -> int:
        """Steps between validations: as set, or VALIDATIONS_PER_RUN in the run, fewer when they would take more
        than VALIDATION_SHARE of a time budget (known once one has been timed)."""
        if cfg.validate_every is not None:
            return cfg.validate_every
        n = VALIDATIONS_PER_RUN
        if budget.seconds and val_count:
            fit_in = int(VALIDATION_SHARE * budget.seconds / (val_seconds / val_count))
            n = max(MIN_VALIDATIONS, min(n, fit_in))
        return max(1, math.ceil(total_steps / n))

    validate_every = cadence()
    step, t_probe = start, time.perf_counter()
    model.train()
    with StopOnSignal() as stop, neftune(model, cfg.neftune_noise_alpha, accelerator):
        for step in range(start + 1, total_steps + 1):
            if step == start + 2:
                t_probe = time.perf_counter()
            window = [next(micro_batches) for _ in range(cfg.grad_accum)]
            epoch, index, _ = window[-1]
            batches = [{k: v.to(accelerator.device) for k, v in b.items()} for _, _, b in window]
            # Normalise by the supervised tokens of the whole accumulation window, across all processes, so that the
            # gradient equals that of one big batch however it is split (the classic grad-accumulation loss bug).
            local_sup = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
            window_sup = int(accelerator.reduce(torch.tensor(local_sup, device=accelerator.device), "sum"))
            loss_sum, local_tokens = 0.0, 0
            for i, batch in enumerate(batches):
                sync = accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext()
                with sync, accelerator.autocast():
                    s, _ = token_loss(model, batch, cfg.supervised_logits_only, prepended)
                    # DDP averages gradients over processes; scaling by `world` turns that average back into a sum.
                    accelerator.backward(s * world / max(window_sup, 1))
                loss_sum += s.item()
                local_tokens += int(batch["attention_mask"].sum())
            grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            reduced = accelerator.reduce(
                torch.tensor([loss_sum, local_tokens], dtype=torch.float64, device=accelerator.device)
            )
            train_loss = float(reduced[0]) / max(window_sup, 1)
            seen_tokens += int(reduced[1])
            seen_sup += window_sup
            elapsed = time.perf_counter() - t0 - eval_seconds
            replanned = budget.replan(step, start, time.perf_counter() - t_probe, time.perf_counter() - t0, total_steps)
            if replanned is not None and replanned != total_steps:
                total_steps = replanned
                scheduler = cosine_schedule(optimizer, cfg, total_steps, done=step)
                validate_every = cadence()
                bar.total = total_steps
                if accelerator.is_main_process:
                    tqdm.write(f"tasktune: time budget {cfg.time_budget}: {total_steps} steps in all, from the"
                               f" time per step so far")  # fmt: skip
            out_of_time = budget.out_of_time(time.perf_counter() - t0) and step < total_steps
            last = step == total_steps or out_of_time
            record = {
                "step": step,
                "epoch": epoch,
                "train/loss": train_loss,
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": float(grad_norm),
                "train/tokens_per_s": seen_tokens / elapsed,
                "train/supervised_tokens": seen_sup,
                "train/tokens": seen_tokens,  # every token the run has seen (OpenAI's jobs report it)
                "elapsed_s": elapsed,
            }
            validating = bool(validator and validate_every and (step % validate_every == 0 or last))
            t_val = time.perf_counter()  # a validation's cost includes an eval loss measured with it
            if (step % cfg.eval_every == 0 if cfg.eval_every else validating) or last:
                t_eval = time.perf_counter()
                eval_loss = evaluate_loss(model, eval_rows, pad_id, cfg.batch_size, accelerator, prepended)
                eval_seconds += time.perf_counter() - t_eval
                if eval_loss is not None:
                    record["eval/loss"] = eval_loss
                    best_eval = eval_loss if best_eval is None else min(best_eval, eval_loss)
            if validating:
                t_score = time.perf_counter()
                with accelerator.autocast():
                    score = validator.score(accelerator.unwrap_model(model))
                stale = 0 if best_score is None or score > best_score else stale + 1
                if best_score is None or score >= best_score:  # a tie goes to the later, longer-trained weights
                    best_score, best_step = score, step
                    if best is not None:
                        best.save(accelerator.unwrap_model(model))
                val_seconds, val_count = val_seconds + time.perf_counter() - t_val, val_count + 1
                eval_seconds += time.perf_counter() - t_score
                validate_every = cadence()
                record |= {f"val/{validator.metric}": score, "val/best": best_score, "val/best_step": best_step}
                # Stop early only in the second half of the run (the rate is still high before) and once the model
                # has scored at all: a run still at zero has not learned the answer's format yet.
                no_better = cfg.patience and stale >= cfg.patience and best_score > 0 and step >= total_steps / 2
                if no_better or (on_validation and on_validation(step, score)):
                    last = True
            if accelerator.is_main_process and (step % cfg.log_every == 0 or "eval/loss" in record or last
                                                or any(k.startswith("val/") for k in record)):  # fmt: skip
                log.write(record)
                accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)
            bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{record['train/tokens_per_s']:.0f}", refresh=False)
            bar.update(1)
            signum, saved = stop.requested(accelerator), None
            if ckpt and (ckpt.due(step, total_steps, signum) or last):
                t_save = time.perf_counter()
                totals = dict(
                    seconds=t_save - t0,
                    eval_seconds=eval_seconds,
                    seen_tokens=seen_tokens,
                    seen_sup=seen_sup,
                    train_loss=train_loss,
                    eval_loss=eval_loss,
                    best_eval=best_eval,
                    planned_steps=total_steps,
                    best_score=best_score,
                    best_step=best_step,
                    stale=stale,
                    val_seconds=val_seconds,
                    val_count=val_count,
                    stopped_early=last and step < total_steps,
                )
                state = TrainState(step, epoch, index + 1, world, totals)
                saved = ckpt.save(state, model, optimizer, scheduler, accelerator)
                t0 += time.perf_counter() - t_save  # saving is not training: kept out of the time and throughput
            if signum:
                bar.close()
                raise stopped(signum, step, total_steps, saved, world)
            if last:
                break
    bar.close()
    if best is not None and best_step is not None and best_step != step:
        best.restore(accelerator.unwrap_model(model))  # the run's weights are those of its best validation
    train_seconds = time.perf_counter() - t0 - eval_seconds
    return {
        "steps": step,
        "train_loss": train_loss,
        "eval_loss": eval_loss,
        "best_eval_loss": best_eval,
        "seconds": train_seconds + eval_seconds,
        "eval_seconds": eval_seconds,
        "tokens_per_s": seen_tokens / max(train_seconds, 1e-9),
        "supervised_tokens_per_s": seen_sup / max(train_seconds, 1e-9),
        "metric": validator.metric if validator else None,
        "best_metric": best_score,
        "best_step": best_step,
        "stopped_early": step < total_steps,  # no longer improving, out of time, or stopped by the caller
        "planned_steps": total_steps,
    }


# --- the command --------------------------------------------------------------------------------------------------
def _validator(task, cfg, fmt, instruction, eval_examples, train_rows, train_examples, accelerator):
    """The task-metric validator on the first `validate_rows` held-out rows, or None when validation is off."""
    if cfg.validate_every == 0 or not eval_examples:
        return None
    if accelerator.num_processes > 1:  # generation on sharded or replicated weights is not wired up
        if accelerator.is_main_process:
            print("tasktune: validation by the task metric is off with several processes; the last step is kept")
        return None
    answers = [ex.answer for ex in train_examples[:5000]]
    return Validator.for_task(task, eval_examples[: cfg.validate_rows], fmt, instruction,
                              suggest_max_new_tokens(train_rows), answers)  # fmt: skip


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested settings as flat scalar keys (`lora.r`), the shape trackers take as hyper-parameters."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def train(
    task: TaskConfig,
    cfg: TrainConfig,
    out: str | Path,
    *,
    force: bool = False,
    resume: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    on_validation: Callable[[int, float], bool] | None = None,
) -> TrainResult:
    """Fine-tune `cfg.model` on the task's training rows and write a run directory to `out`.

    Settings left unset are chosen from the data (tasktune.recipe) unless `cfg.recipe` is "off". The task's own
    metric is measured on held-out rows as training goes; the run keeps its best-scoring weights (see `fit`), and
    `on_validation(step, score)` returning True stops it early (a search prunes trials that way).

    The data check (`tasktune check`, tokenizer only) runs first; its errors stop training unless `force`.
    `resume`: `out` is this run's folder; continue from its newest complete checkpoint (see `resume_run`).
    `allow_pickle`, `trust_remote_code`: see models.load_base (both off: weights are read from safetensors only)."""
    from accelerate.utils import set_seed

    from tasktune.check import check_for_training

    train_path = task.data_path("train")
    if train_path is None:
        raise ConfigError(
            "the task has no training data (data.train)", "set data.train in the task file or pass --data"
        )
    if not resume:
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=True) if trust_remote_code else None
        with quiet_unless_main():  # every process checks (and stops on errors); one prints
            check_for_training(task, cfg, force=force, tokenizer=tokenizer)
    rows = read_examples(train_path)
    eval_path = task.data_path("eval")
    if eval_path is not None:
        eval_examples = read_examples(eval_path)
    else:
        rows, eval_examples = split_eval(rows, cfg.eval_split, cfg.seed)

    out = Path(out)
    accelerator = make_accelerator(cfg.precision, cfg.report_to, out)
    check_engine(accelerator, cfg, resume)
    if accelerator.is_main_process:
        ensure_writable_dir(out, must_be_empty=not resume, what="run folder")
    ckpt = Checkpointing(out, cfg.save_every, cfg.keep_checkpoints) if unsupported_reason(accelerator) is None else None
    if resume:
        ckpt.resume_from = _resume_point(out, accelerator)
    ref = resolve_model(cfg.model)
    set_seed(cfg.seed)
    model, tok = load_base(ref.path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    fmt = ChatFormat(tok, cfg.system_prompt)
    # The run's tokenizer is saved with the template its rows were rendered with (a system_prompt is part of it), so
    # predict, serve, export and any outside client that applies the template build the prompts of training.
    tok.chat_template = fmt.template
    instruction = task.instruction if task.train_with_instruction else None
    train_rows, skipped = encode_rows(fmt, rows, instruction, cfg.max_length)
    if not train_rows:
        raise DataError(f"every training row is longer than max_length={cfg.max_length} tokens", "raise --max-length")
    if skipped and accelerator.is_main_process:
        print(
            f"tasktune: skipped {len(skipped)} row(s) longer than max_length={cfg.max_length}"
            f" (first: {skipped[0].where}); raise --max-length to keep them"
        )

    facts = DataFacts(
        train_rows=len(train_rows),
        answer_tokens_mean=sum(r.n_supervised for r in train_rows) / len(train_rows),
        device="cuda" if accelerator.device.type == "cuda" else "cpu",
    )
    cfg, recipe = choose_recipe(cfg, facts)
    if accelerator.is_main_process and not resume:
        print(recipe.format())
    # Encoded after the recipe, which may choose eval_max_rows.
    eval_rows, _ = encode_rows(fmt, eval_examples[: cfg.eval_max_rows], instruction, cfg.max_length)
    strategy = get_strategy(cfg.method)
    validator = _validator(task, cfg, fmt, instruction, eval_examples, train_rows, rows, accelerator)
    best = BestWeights(out if accelerator.is_main_process and ckpt else None) if validator else None

    precision = resolve_precision(cfg.precision)
    if strategy.frozen_base and precision == "bf16":
        frozen_linears_to_bf16(model)
    set_seed(cfg.seed)
    model = strategy.prepare(model, cfg)
    trainable, total = count_parameters(model)
    if accelerator.is_main_process and not resume:
        config = task.to_yaml_dict()
        # Self-describing: the schema inline and data paths absolute, so eval and diagnose need nothing else.
        config["output"]["schema"] = task.json_schema()
        config["data"] = {k: str(p.resolve()) if (p := task.data_path(k)) else None for k in ("train", "eval", "test")}
        config["train"] = cfg.model_dump(mode="json") | {"learning_rate": cfg.resolved_learning_rate()}
        write_config(out, config)
        atomic_write_json(out / "recipe.json", recipe.to_dict())
        write_env(out, seed=cfg.seed, precision=precision, data_files={"train": train_path, "eval": eval_path})
    if accelerator.is_main_process:
        world = accelerator.num_processes
        print(
            f"tasktune: {cfg.method} on {cfg.model}: {trainable:,} of {total:,} parameters trainable;"
            f" {len(train_rows)} training rows, {len(eval_rows)} eval rows, {describe_precision(cfg.precision)}\n"
            f"tasktune: effective batch {cfg.batch_size * cfg.grad_accum * world} rows per step"
            f" ({cfg.batch_size} per micro-batch x {cfg.grad_accum} accumulated x {world} process(es))"
        )
    log = MetricsLog(out / "metrics.jsonl" if accelerator.is_main_process else None)
    if cfg.report_to:
        accelerator.init_trackers(task.name, config=_flat(cfg.model_dump(mode="json")))
    figures = fit(model, train_rows, eval_rows, cfg, accelerator, tok.pad_token_id, log, ckpt, validator, best,
                  on_validation)  # fmt: skip
    if figures["metric"] and accelerator.is_main_process:
        print(f"tasktune: best {figures['metric']} {figures['best_metric']:.4f} on {len(validator.examples)} held-out"
              f" rows at step {figures['best_step']} of {figures['steps']}: the run keeps those weights"
              + (" (stopped early)" if figures["stopped_early"] else ""))  # fmt: skip

    # Under FSDP / DeepSpeed ZeRO-3 the weights are sharded: get_state_dict gathers them (every process must call it).
    weights = accelerator.get_state_dict(model) if ckpt is None else None
    if accelerator.is_main_process:
        with atomic_dir(out / strategy.weights_dir) as tmp:
            save_trained(accelerator.unwrap_model(model), tok, tmp, state_dict=weights)
        schema, schema_source = task_schema(task, rows)
        labels = task_labels(task, rows)
        RunInfo(
            method=cfg.method,
            base_model=cfg.model,
            base_model_path=str(ref.path),
            weights_dir=strategy.weights_dir,
            task_name=task.name,
            output_kind=task.output.kind,
            instruction=task.instruction,
            instruction_in_prompt=task.train_with_instruction,
            max_new_tokens=suggest_max_new_tokens(train_rows),
            precision=precision,
            schema=schema,
            schema_source=schema_source,
            copy_fields=task.output.copy_fields,
            labels=labels,
        ).save(out)
    if best is not None:
        best.discard()
    for tracker in accelerator.trackers:  # not end_training(): that also ends the process group a caller may reuse
        tracker.finish()
    accelerator.wait_for_everyone()
    return TrainResult(
        run_dir=str(out),
        recipe=recipe.to_dict(),
        method=cfg.method,
        train_rows=len(train_rows),
        skipped_rows=len(skipped),
        trainable_params=trainable,
        total_params=total,
        **figures,
    )


# --- resume -------------------------------------------------------------------------------------------------------
# Settings a resumed run may change: they decide when to evaluate, log and save, never what the weights become.
RESUMABLE_OVERRIDES = {"save_every", "keep_checkpoints", "log_every", "eval_every", "eval_max_rows"}


def resume_run(run: str | Path, overrides: dict | None = None, **kwargs) -> TrainResult:
    """Continue the run in `run` from its newest complete checkpoint, with the settings it was started with.

    Overrides that would change the training trajectory (learning rate, batch, steps, seed, ...) are refused: the
    result would be neither the old run nor a clean new one. kwargs go to `train` (allow_pickle, trust_remote_code)."""
    from tasktune.config import build, merge_overrides
    from tasktune.rundir import file_fingerprint, load_run_task, read_config

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} is not a tasktune run (no config.yaml)", "pass the --out folder of `tasktune train`")
    task = load_run_task(run)
    saved = build(TrainConfig, read_config(run)["train"], str(run / "config.yaml"))
    cfg = merge_overrides(saved, overrides or {})
    changed = [k for k in (overrides or {}) if k not in RESUMABLE_OVERRIDES and _get(cfg, k) != _get(saved, k)]
    if changed:
        flags = ", ".join(f"--{k.replace('.', '-').replace('_', '-')} (run: {_get(saved, k)!r})" for k in changed)
        raise ConfigError(
            f"{flags} would change the training trajectory of a resumed run",
            "resume without it (a resumed run keeps its settings; only "
            + ", ".join(f"--{k.replace('_', '-')}" for k in sorted(RESUMABLE_OVERRIDES))
            + " may change), or start a new run with --task/--out",
        )
    env = json.loads((run / "env.json").read_text(encoding="utf-8")) if (run / "env.json").is_file() else {}
    for split, info in env.get("data", {}).items():
        path = Path(info["path"])
        if not path.is_file() or file_fingerprint(path) != info["sha256"]:
            raise DataError(
                f"the {split} data {info['path']} is missing or changed since the run started",
                "restore the file the run was trained on, or start a new run",
            )
    if cfg.precision == "auto" and env.get("precision") in ("bf16", "fp32"):
        # 'auto' was resolved on the machine that started the run; a resumed run keeps that choice on any machine,
        # since bf16 and fp32 steps give different weights.
        cfg = cfg.model_copy(update={"precision": env["precision"]})
    return train(task, cfg, run, resume=True, **kwargs)


def _get(cfg: TrainConfig, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _resume_point(run: Path, accelerator) -> Path | None:
    """The newest complete checkpoint (the main process reports skipped ones); the metrics log is cut back to it."""
    from tasktune.rundir import truncate_metrics

    found = find_checkpoint(run, tidy=False)  # every process reads the same folder first, then the main one tidies
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        find_checkpoint(run)
        for path, why in found.skipped:
            print(f"tasktune: skipped checkpoint {path.name}: {why}")
        step = found.state.step if found.state else 0
        truncate_metrics(run, step)
        where = f"step {step} ({found.path})" if found.path else "the start: no complete checkpoint was found"
        print(f"tasktune: resuming {run} from {where}")
    accelerator.wait_for_everyone()
    return found.path
