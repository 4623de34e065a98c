"""Rows to token ids and batches: encoding, the held-out split, epoch order, padding, and the answer cap they imply.

Shared by training, the run doctor, compare and the benchmarks, so each gets the same rows in the same batches.
"""

from __future__ import annotations

import math
import random

import torch

from tasktune.data import Example
from tasktune.models import resolve_model
from tasktune.render import IGNORE, ChatFormat, Encoded
from tasktune.runtime import PAD_MULTIPLE, padded_width


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


def shuffled_batches(lengths: list[int], batch_size: int, rng: random.Random, group_by_length: bool) -> list[list[int]]:
    """One epoch's batches of row indices, in a seeded random order.

    Plain: shuffle, then cut into batches, so every batch is a random draw (as TRL and the HF Trainer do).
    `group_by_length`: shuffle, sort within mega-chunks of 32 batches by length, cut, shuffle the batches: each batch
    holds rows of one length, so less padding, but also one writing style per batch, which costs eval loss against
    random batches (docs/benchmarks.md, "Figures behind the code's choices"); so it is opt-in, for data whose lengths
    vary widely."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[j : j + batch_size] for j in range(0, len(order), batch_size)]
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


def split_eval(rows: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out `share` of the rows (at most 500) as the eval split, seeded; none from fewer than 10 rows."""
    if share <= 0 or len(rows) < 10:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, min(int(len(rows) * share), 500))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def suggest_max_new_tokens(rows: list[Encoded]) -> int:
    """Room for the longest training answer and half again: generous enough, yet a runaway answer stops early."""
    return answer_cap(max((r.n_supervised for r in rows), default=128))


def answer_cap(longest: int) -> int:
    return int(min(2048, math.ceil(longest * 1.5) + 16))


def suggest_max_new_tokens_for_answers(model_spec: str, answers: list[str]) -> int:
    """The same cap for an untuned model, from the task's training answers (so both sides of a comparison match)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(model_spec).path)
    return answer_cap(max((len(tok.encode(a, add_special_tokens=False)) + 1 for a in answers[:5000]), default=128))
