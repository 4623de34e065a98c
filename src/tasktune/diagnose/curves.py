"""Optimisation health from RUN/metrics.jsonl: divergence, no learning, spikes, overfitting, the train/eval gap.

Thresholds (all on the per-token cross-entropy in nats that `fit` logs):
  start loss     mean of the first steps (up to 5, a tenth of the run), before the model has learned much
  end loss       mean of the last tenth of the steps (one step's loss is one batch: noisy)
  diverged       the loss, smoothed over 3 steps, rose above 1.5x the start loss (and by 0.5 nats), or ended above it
  flat           the end loss is less than 5% below the start loss after at least 10 steps
  spike          one step above 2x the median of the 10 before it and 1 nat above it, in a run that recovered
  overfitting    after the lowest eval loss, at least 2 more measurements, on average 3% above it, while the train
                 loss at least halved; an error when the final eval loss is 20% above the lowest, or when the train
                 loss fell 10x meanwhile (it keeps fitting the training rows while unseen rows get worse). The eval
                 rows are the same at every measurement, so a rise is the model's, not sampling noise; relative, not
                 in nats, because a templated answer (JSON keys, punctuation) keeps the loss per token low
  gap            the final eval loss is more than 3x the end train loss and 0.05 nats above it
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

from tasktune.diagnose.findings import Finding

DIVERGE_FACTOR = 1.5
FLAT_DROP = 0.05
SPIKE_FACTOR, SPIKE_NATS = 2.0, 1.0
OVERFIT_RISE, OVERFIT_ERROR_RISE, OVERFIT_TRAIN_FALL = 0.03, 0.20, 10.0
GAP_FACTOR, GAP_NATS = 3.0, 0.05
MIN_STEPS = 10


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def checkpoint_for_step(run: Path, step: int) -> Path | None:
    """A saved checkpoint of `step`, if the run kept one (folders under RUN/checkpoints named by their step)."""
    folder = Path(run) / "checkpoints"
    if not folder.is_dir():
        return None
    for p in sorted(folder.iterdir()):
        numbers = re.findall(r"\d+", p.name)
        if p.is_dir() and numbers and int(numbers[-1]) == step:
            return p
    return None


def curve_findings(records: list[dict], train: dict, run: Path, rows_per_epoch: int | None = None):
    """(findings, figures) for a run's metrics records; `train` is the run's resolved training settings."""
    lr = float(train.get("learning_rate") or 0.0)
    steps = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    evals = [(r["step"], r["eval/loss"]) for r in records if "eval/loss" in r]
    figures: dict = {"steps": len(steps), "eval_points": len(evals), "learning_rate": lr}
    if not steps:
        return [Finding("no-metrics", "warning", "metrics.jsonl has no train/loss records: the loss curve cannot be"
                        " checked", "train with tasktune (it writes RUN/metrics.jsonl), or keep that file with the"
                        " run")], figures  # fmt: skip
    bad = _first_non_finite(records)
    if bad is not None:
        step, key = bad
        return [Finding("loss-not-finite", "error", f"{key} became NaN/inf at step {step} of {steps[-1][0]}",
                        _lower_lr(lr, "the updates overflowed: the learning rate is far too high for this model"),
                        {"step": step, "metric": key, "learning_rate": lr})], figures  # fmt: skip
    losses = [loss for _, loss in steps]
    n = len(losses)
    head = _mean(losses[: max(1, min(5, n // 10))])
    tail = _mean(losses[-max(1, n // 10) :])
    smooth = [statistics.median(losses[max(0, i - 1) : i + 2]) for i in range(n)]
    peak_i = max(range(n), key=lambda i: smooth[i])
    figures |= {"start_loss": head, "end_loss": tail, "peak_loss": smooth[peak_i], "peak_step": steps[peak_i][0],
                "grad_norm_median": _median_key(records, "train/grad_norm")}  # fmt: skip
    findings = []
    rose = smooth[peak_i] > DIVERGE_FACTOR * head and smooth[peak_i] - head > 0.5
    if rose or (n >= MIN_STEPS and tail > head):
        findings.append(Finding(
            "loss-diverged", "error",
            f"the training loss rose from {head:.3f} to {smooth[peak_i]:.3f} at step {steps[peak_i][0]}"
            f" ({smooth[peak_i] / head:.1f}x) and ended at {tail:.3f}",
            _lower_lr(lr, "each update overshoots, so the loss climbs instead of falling"),
            {"start_loss": head, "peak_loss": smooth[peak_i], "peak_step": steps[peak_i][0], "end_loss": tail,
             "learning_rate": lr},
        ))  # fmt: skip
    elif n >= MIN_STEPS and (head - tail) / head < FLAT_DROP:
        findings.append(_flat(head, tail, n, lr, figures["grad_norm_median"]))
    else:
        findings += _spikes(steps)
    findings += _overfitting(steps, evals, records, train, run, rows_per_epoch, tail, figures)
    return findings, figures


def _first_non_finite(records: list[dict]) -> tuple[int, str] | None:
    for r in records:
        for key in ("train/loss", "eval/loss", "train/grad_norm"):
            if key in r and not _finite(r[key]):
                return r["step"], key
    return None


def _median_key(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if _finite(r.get(key))]
    return statistics.median(values) if values else None


def _lower_lr(lr: float, why: str) -> str:
    return (f"divide the learning rate by 10: --learning-rate {lr / 10:g} (was {lr:g}); {why}. If it still rises,"
            " lengthen the warm-up (--warmup-ratio 0.1) or lower --max-grad-norm")  # fmt: skip


def _flat(head: float, tail: float, n: int, lr: float, grad_norm: float | None) -> Finding:
    no_grad = grad_norm is not None and grad_norm < 1e-8
    why = ("the gradient norm is zero: no parameter receives a gradient, so nothing is trainable (check the method and"
           " lora.target_modules)" if no_grad else
           f"multiply the learning rate by 10: --learning-rate {lr * 10:g} (was {lr:g}); steps this small leave the"
           " weights where they started. If the rate is already the method's default, check that parameters are"
           " trainable (the run prints 'N of M parameters trainable') and that the answers are supervised")  # fmt: skip
    return Finding(
        "loss-flat", "error",
        f"the training loss barely moved in {n} steps: {head:.3f} -> {tail:.3f} ({(head - tail) / head:.1%} lower)",
        why, {"start_loss": head, "end_loss": tail, "steps": n, "learning_rate": lr, "grad_norm_median": grad_norm},
    )  # fmt: skip


def _spikes(steps: list[tuple[int, float]]) -> list[Finding]:
    found = []
    for i in range(MIN_STEPS, len(steps)):
        before = statistics.median(loss for _, loss in steps[i - MIN_STEPS : i])
        step, loss = steps[i]
        if loss > SPIKE_FACTOR * before and loss - before > SPIKE_NATS:
            found.append((step, loss, before))
    if not found:
        return []
    worst = max(found, key=lambda s: s[1] / s[2])
    return [Finding(
        "loss-spikes", "warning",
        f"{len(found)} loss spike(s); the worst at step {worst[0]}: {worst[1]:.3f} against {worst[2]:.3f} just before",
        "halve the learning rate or lengthen the warm-up (--warmup-ratio 0.1): single batches push the weights too"
        " far; the run recovered, so this costs steps rather than the result",
        {"spikes": len(found), "steps": [s for s, _, _ in found[:20]], "worst_step": worst[0],
         "worst_ratio": worst[1] / worst[2]},
    )]  # fmt: skip


def _train_loss_near(steps: list[tuple[int, float]], step: int, width: int) -> float:
    window = [loss for s, loss in steps if abs(s - step) <= width]
    return _mean(window) if window else steps[-1][1]


def _overfitting(steps, evals, records, train, run, rows_per_epoch, tail, figures) -> list[Finding]:
    findings = []
    if not evals:
        return findings
    best_step, best = min(evals, key=lambda e: e[1])
    last_step, last = evals[-1]
    rows_per_step = int(train.get("batch_size", 1)) * int(train.get("grad_accum", 1))
    epochs = (lambda s: s * rows_per_step / rows_per_epoch) if rows_per_epoch else (lambda s: None)
    figures |= {"best_eval_step": best_step, "best_eval_loss": best, "final_eval_loss": last,
                "epochs": epochs(steps[-1][0]), "epochs_at_best": epochs(best_step)}  # fmt: skip
    if len(evals) < 3:
        findings.append(Finding(
            "eval-sparse", "info",
            f"eval loss was measured {len(evals)} time(s) in {steps[-1][0]} steps: whether it rose cannot be seen",
            f"set --eval-every to about a tenth of the steps (--eval-every {max(1, steps[-1][0] // 10)}) to see"
            " where the eval loss is lowest",
            {"eval_points": len(evals), "steps": steps[-1][0]},
        ))  # fmt: skip
    width = max(1, (evals[1][0] - evals[0][0] if len(evals) > 1 else steps[-1][0]) // 2)  # half the eval spacing
    train_at_best = _train_loss_near(steps, best_step, width)
    after = [loss for s, loss in evals if s > best_step]
    rise, mean_rise = (last / best - 1, _mean(after) / best - 1) if after and best > 0 else (0.0, 0.0)
    fell = train_at_best / max(tail, 1e-12)
    if len(after) >= 2 and mean_rise >= OVERFIT_RISE and fell >= 2:
        severe = rise >= OVERFIT_ERROR_RISE or (rise >= OVERFIT_RISE and fell >= OVERFIT_TRAIN_FALL)
        ckpt = checkpoint_for_step(run, best_step)
        ep = epochs(best_step)
        where = (f"the checkpoint {ckpt} holds that step: use it" if ckpt is not None else
                 f"no checkpoint from step {best_step} exists (this run saved none)")  # fmt: skip
        findings.append(Finding(
            "overfitting", "error" if severe else "warning",
            f"eval loss was lowest at step {best_step} ({best:.4f}) and {last:.4f} by step {last_step} (+{rise:.0%};"
            f" {len(after)} later measurements, +{mean_rise:.0%} on average) while the train loss fell"
            f" {fell:.0f}x, from {train_at_best:.4f} to {tail:.4f}",
            f"{where}; train for {best_step} steps instead of {steps[-1][0]} (--max-steps {best_step}"
            + (f", about {ep:.1f} epochs" if ep is not None else "") + "): past it the model learns the training"
            " rows rather than the task. More (and more varied) rows, a lower --lora-r or --weight-decay 0.01 also"
            " help",
            {"best_eval_step": best_step, "best_eval_loss": best, "final_eval_loss": last, "rise": rise,
             "mean_rise_after_best": mean_rise, "train_loss_fall": fell, "train_loss_at_best": train_at_best,
             "final_train_loss": tail, "epochs_at_best": ep,
             "checkpoint_at_best": str(ckpt) if ckpt else None},
        ))  # fmt: skip
    if last > GAP_FACTOR * tail and last - tail > GAP_NATS:
        ep = epochs(steps[-1][0])
        findings.append(Finding(
            "generalisation-gap", "warning",
            f"final eval loss {last:.4f} is {last / max(tail, 1e-9):.1f}x the final train loss {tail:.4f}"
            + (f" after {ep:.1f} epochs" if ep is not None else ""),
            "the model fits the training rows much better than unseen ones: add rows, train fewer epochs, or lower"
            " the capacity (--lora-r 8); a gap this size on the first epoch means the eval rows differ from the"
            " training rows",
            {"final_eval_loss": last, "final_train_loss": tail, "gap": last - tail, "epochs": ep},
        ))  # fmt: skip
    return findings
