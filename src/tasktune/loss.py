"""Next-token loss over the supervised (answer) tokens only: per batch, per held-out set, per row."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasktune.batching import collate
from tasktune.render import IGNORE, Encoded


def supervised_logits(
    model, batch: dict[str, torch.Tensor], supervised_only: bool = True, prepended: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the supervised positions (one row per predicted token), their targets, and the boolean mask of
    those positions in the batch (row-major, so `keep.nonzero()[:, 0]` says which example each token belongs to).

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
    return logits, targets, keep


def token_loss(
    model, batch: dict[str, torch.Tensor], supervised_only: bool = True, prepended: int = 0
) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over supervised positions, and their count (see `supervised_logits`)."""
    logits, targets, _ = supervised_logits(model, batch, supervised_only, prepended)
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


@torch.no_grad()
def row_losses(model, rows: list[Encoded], pad_id: int, batch_size: int = 8, prepended: int = 0) -> list[float]:
    """Mean answer-token loss of each row, teacher-forced, in the order given (the run doctor's membership test)."""
    model.eval()
    device = next(model.parameters()).device
    out = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    for j in range(0, len(order), batch_size):
        idx = order[j : j + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx], pad_id).items()}
        logits, targets, keep = supervised_logits(model, batch, prepended=prepended)
        per_token = F.cross_entropy(logits.float(), targets, reduction="none")
        which = keep.nonzero()[:, 0]
        sums = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, which.cpu(), per_token.double().cpu())
        counts = torch.bincount(which.cpu(), minlength=len(idx)).clamp(min=1)
        for k, i in enumerate(idx):
            out[i] = float(sums[k] / counts[k])
    return out
