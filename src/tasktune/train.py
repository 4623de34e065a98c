"""tasktune train: fine-tune a base model so that it does the task from the bare input.

    tasktune train --task task.yaml --out runs/my-run [--method lora|full] [--max-steps N] ...

One explicit loop (`fit`): forward → loss over supervised tokens → backward → accumulate → clip → step → schedule →
log → eval. Strategies (strategies.py) only change how the model is prepared and saved.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tasktune.config import TaskConfig, TrainConfig
from tasktune.data import Example, read_examples
from tasktune.errors import ConfigError, DataError
from tasktune.fsio import atomic_dir, ensure_writable_dir
from tasktune.models import load_base, resolve_model
from tasktune.render import IGNORE, ChatFormat, Encoded
from tasktune.rundir import MetricsLog, RunInfo, write_config, write_env
from tasktune.runtime import PAD_MULTIPLE, make_accelerator, padded_width, progress_enabled, resolve_precision
from tasktune.strategies import count_parameters, get_strategy, save_trained


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

    def to_dict(self) -> dict:
        return asdict(self)


# --- data ---------------------------------------------------------------------------------------------------------
def encode_rows(fmt: ChatFormat, rows: list[Example], instruction: str | None, max_length: int):
    """Encode rows; rows longer than max_length are skipped (truncating would cut the answer and its EOS)."""
    kept, skipped = [], []
    for ex in rows:
        enc = fmt.encode_example(fmt.with_instruction(ex.messages, instruction))
        if len(enc.input_ids) <= max_length:
            kept.append(enc)
        else:
            skipped.append(ex)
    return kept, skipped


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort within mega-chunks by length so that each batch carries little padding; shuffle batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 32
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i], reverse=True)
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(rows: list[Encoded], pad_id: int, multiple: int = PAD_MULTIPLE) -> dict[str, torch.Tensor]:
    """Right-pad; labels of padding are IGNORE by construction, not by comparing ids with pad (pad may equal EOS)."""
    width = padded_width(max(len(r.input_ids) for r in rows), multiple)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --- loss ---------------------------------------------------------------------------------------------------------
def token_loss(
    model, batch: dict[str, torch.Tensor], supervised_only: bool = True, prepended: int = 0
) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over supervised positions, and their count.

    With `supervised_only`, the output projection runs only where a label is supervised (transformers'
    `logits_to_keep` boolean mask): a 49k-wide vocabulary matmul per prompt token is the largest waste in SFT.
    `prepended`: positions the model puts before the input ids (prompt tuning's soft prompt, see
    `Strategy.prepended_tokens`); its logits run that much longer, so the mask gets as many False columns in front.
    """
    targets_all = batch["labels"][:, 1:]
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = targets_all != IGNORE
    targets = targets_all[targets_all != IGNORE]
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if supervised_only:
        model_keep = F.pad(keep, (prepended, 0), value=False) if prepended else keep
        logits = model(**kwargs, logits_to_keep=model_keep).logits
    else:
        logits = model(**kwargs).logits
    if logits.dim() == 3:  # full logits (plain path, or a model without boolean logits_to_keep)
        logits = logits[:, -keep.shape[1] :][keep]  # the last positions are the input ids' own
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss_sum, int(targets.numel())


@torch.no_grad()
def evaluate_loss(
    model, rows: list[Encoded], pad_id: int, batch_size: int, accelerator, prepended: int = 0
) -> float | None:
    if not rows:
        return None
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    for j in range(0, len(order), batch_size):
        batch = collate([rows[i] for i in order[j : j + batch_size]], pad_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            s, n = token_loss(model, batch, prepended=prepended)
        total += s.item()
        count += n
    model.train()
    return total / max(count, 1)


# --- the loop -----------------------------------------------------------------------------------------------------
def plan_steps(n_rows: int, cfg: TrainConfig, world: int = 1) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = math.ceil(n_rows / (cfg.batch_size * cfg.grad_accum * world))
    return max(1, math.ceil(per_epoch * cfg.epochs))


def iter_micro_batches(rows: list[Encoded], cfg: TrainConfig, pad_id: int, rank: int = 0, world: int = 1):
    """Endless micro-batches, epoch after epoch, reshuffled per epoch from the seed; each process takes its share."""
    lengths = [len(r.input_ids) for r in rows]
    epoch = 0
    while True:
        batches = length_grouped_batches(lengths, cfg.batch_size, random.Random(cfg.seed * 100_003 + epoch))
        for b in batches[rank::world]:
            yield epoch, collate([rows[i] for i in b], pad_id)
        epoch += 1


def fit(
    model,
    train_rows: list[Encoded],
    eval_rows: list[Encoded],
    cfg: TrainConfig,
    accelerator,
    pad_id: int,
    log: MetricsLog,
) -> dict:
    """Train `model` in place; returns the final figures. Metrics go to `log` (main process only)."""
    from transformers import get_cosine_schedule_with_warmup

    world, rank = accelerator.num_processes, accelerator.process_index
    total_steps = plan_steps(len(train_rows), cfg, world)
    prepended = get_strategy(cfg.method).prepended_tokens(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.resolved_learning_rate(), weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    micro_batches = iter_micro_batches(train_rows, cfg, pad_id, rank, world)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps, desc="train", unit="step", disable=not (accelerator.is_main_process and progress_enabled())
    )
    t0 = time.perf_counter()
    eval_seconds = 0.0  # kept out of the throughput figures
    seen_tokens = seen_sup = 0
    train_loss = eval_loss = best_eval = None
    model.train()
    for step in range(1, total_steps + 1):
        window = [next(micro_batches) for _ in range(cfg.grad_accum)]
        epoch = window[-1][0]
        batches = [{k: v.to(accelerator.device) for k, v in b.items()} for _, b in window]
        # Normalise by the supervised tokens of the whole accumulation window, across all processes, so that the
        # gradient equals that of one big batch however it is split (the classic grad-accumulation loss bug).
        local_sup = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        window_sup = int(accelerator.reduce(torch.tensor(local_sup, device=accelerator.device), "sum"))
        loss_sum = 0.0
        for i, batch in enumerate(batches):
            sync = accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext()
            with sync, accelerator.autocast():
                s, _ = token_loss(model, batch, cfg.supervised_logits_only, prepended)
                # DDP averages gradients over processes; scaling by `world` turns that average back into a sum.
                accelerator.backward(s * world / max(window_sup, 1))
            loss_sum += s.item()
            seen_tokens += int(batch["attention_mask"].sum())
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        total_loss = float(accelerator.reduce(torch.tensor(loss_sum, device=accelerator.device), "sum"))
        train_loss = total_loss / max(window_sup, 1)
        seen_sup += window_sup
        elapsed = time.perf_counter() - t0 - eval_seconds
        record = {
            "step": step,
            "epoch": epoch,
            "train/loss": train_loss,
            "train/lr": scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm),
            "train/tokens_per_s": seen_tokens * world / elapsed,
            "train/supervised_tokens": seen_sup,
            "elapsed_s": elapsed,
        }
        if step % cfg.eval_every == 0 or step == total_steps:
            t_eval = time.perf_counter()
            eval_loss = evaluate_loss(model, eval_rows, pad_id, cfg.batch_size, accelerator, prepended)
            eval_seconds += time.perf_counter() - t_eval
            if eval_loss is not None:
                record["eval/loss"] = eval_loss
                best_eval = eval_loss if best_eval is None else min(best_eval, eval_loss)
        if accelerator.is_main_process and (step % cfg.log_every == 0 or "eval/loss" in record or step == total_steps):
            log.write(record)
        bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{record['train/tokens_per_s']:.0f}", refresh=False)
        bar.update(1)
    bar.close()
    train_seconds = time.perf_counter() - t0 - eval_seconds
    return {
        "steps": total_steps,
        "train_loss": train_loss,
        "eval_loss": eval_loss,
        "best_eval_loss": best_eval,
        "seconds": train_seconds + eval_seconds,
        "eval_seconds": eval_seconds,
        "tokens_per_s": seen_tokens * world / train_seconds,
        "supervised_tokens_per_s": seen_sup / train_seconds,
    }


# --- the command --------------------------------------------------------------------------------------------------
def _split_eval(rows: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    if share <= 0 or len(rows) < 10:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, min(int(len(rows) * share), 500))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def suggest_max_new_tokens(rows: list[Encoded]) -> int:
    """Room for the longest training answer and half again: generous enough, yet a runaway answer stops early."""
    return _answer_cap(max((r.n_supervised for r in rows), default=128))


def _answer_cap(longest: int) -> int:
    return int(min(2048, math.ceil(longest * 1.5) + 16))


def suggest_max_new_tokens_for_answers(model_spec: str, answers: list[str]) -> int:
    """The same cap for an untuned model, from the task's training answers (so both sides of a comparison match)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(model_spec).path)
    return _answer_cap(max((len(tok.encode(a, add_special_tokens=False)) + 1 for a in answers[:5000]), default=128))


def train(task: TaskConfig, cfg: TrainConfig, out: str | Path, *, force: bool = False) -> TrainResult:
    """Fine-tune `cfg.model` on the task's training rows and write a run directory to `out`.

    The data check (`tasktune check`, tokenizer only) runs first; its errors stop training unless `force`."""
    from accelerate.utils import set_seed

    from tasktune.check import check_for_training

    strategy = get_strategy(cfg.method)
    train_path = task.data_path("train")
    if train_path is None:
        raise ConfigError(
            "the task has no training data (data.train)", "set data.train in the task file or pass --data"
        )
    check_for_training(task, cfg, force=force)
    rows = read_examples(train_path)
    eval_path = task.data_path("eval")
    if eval_path is not None:
        eval_examples = read_examples(eval_path)
    else:
        rows, eval_examples = _split_eval(rows, cfg.eval_split, cfg.seed)

    accelerator = make_accelerator(cfg.precision)
    out = Path(out)
    if accelerator.is_main_process:
        ensure_writable_dir(out, must_be_empty=True, what="run folder")
    ref = resolve_model(cfg.model)
    set_seed(cfg.seed)
    model, tok = load_base(ref.path)
    fmt = ChatFormat(tok)
    instruction = task.instruction if task.train_with_instruction else None
    train_rows, skipped = encode_rows(fmt, rows, instruction, cfg.max_length)
    if not train_rows:
        raise DataError(f"every training row is longer than max_length={cfg.max_length} tokens", "raise --max-length")
    if skipped:
        print(
            f"tasktune: skipped {len(skipped)} row(s) longer than max_length={cfg.max_length}"
            f" (first: {skipped[0].where}); raise --max-length to keep them"
        )
    eval_rows, _ = encode_rows(fmt, eval_examples[: cfg.eval_max_rows], instruction, cfg.max_length)

    precision = resolve_precision(cfg.precision)
    if strategy.frozen_base and precision == "bf16":
        # Frozen matmul weights need no fp32 master copy: stored in bf16 they skip autocast's per-step casts and halve
        # their memory. Embeddings and norms stay fp32, so the residual stream stays fp32 too (a whole-bf16 model ran
        # its element-wise ops in bf16 and was slower: 387-410 against 460 tokens/s for this, same eval loss).
        # peft keeps the trained adapter weights in fp32 (autocast_adapter_dtype).
        embeddings = model.get_input_embeddings().weight
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.weight is not embeddings:
                module.to(torch.bfloat16)
    set_seed(cfg.seed)
    model = strategy.prepare(model, cfg)
    trainable, total = count_parameters(model)
    if accelerator.is_main_process:
        config = task.to_yaml_dict()
        # Self-describing: the schema inline and data paths absolute, so eval and diagnose need nothing else.
        config["output"]["schema"] = task.json_schema()
        config["data"] = {k: str(p.resolve()) if (p := task.data_path(k)) else None for k in ("train", "eval", "test")}
        config["train"] = cfg.model_dump(mode="json") | {"learning_rate": cfg.resolved_learning_rate()}
        write_config(out, config)
        write_env(out, seed=cfg.seed, precision=precision, data_files={"train": train_path, "eval": eval_path})
        print(
            f"tasktune: {cfg.method} on {cfg.model}: {trainable:,} of {total:,} parameters trainable;"
            f" {len(train_rows)} training rows, {len(eval_rows)} eval rows, {precision}"
        )
    log = MetricsLog(out / "metrics.jsonl" if accelerator.is_main_process else None)
    figures = fit(model, train_rows, eval_rows, cfg, accelerator, tok.pad_token_id, log)

    if accelerator.is_main_process:
        with atomic_dir(out / strategy.weights_dir) as tmp:
            save_trained(accelerator.unwrap_model(model), tok, tmp)
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
        ).save(out)
    accelerator.wait_for_everyone()
    return TrainResult(
        run_dir=str(out),
        method=cfg.method,
        train_rows=len(train_rows),
        skipped_rows=len(skipped),
        trainable_params=trainable,
        total_params=total,
        **figures,
    )
