"""Batched greedy generation with a KV cache, for predict, eval and serve.

Prompts are sorted by length and left-padded in batches, so one forward pass serves many requests with little
padding; each answer stops at the template's end-of-turn token (or EOS).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tasktune.render import ChatFormat
from tasktune.runtime import padded_width, progress_enabled


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    generated_tokens: int
    stopped: bool  # ended on a stop token rather than at max_new_tokens
    latency_s: float  # wall time of the batch this request was in: what its caller waited


def pad_left(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask for a batch, left-padded (answers start in one column) to a bucketed width."""
    width = padded_width(max(len(p) for p in prompts))  # few distinct shapes: see runtime.PAD_MULTIPLE
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def generate(
    model,
    fmt: ChatFormat,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    desc: str = "generate",
) -> list[Generation]:
    from tqdm.auto import tqdm

    tok = fmt.tok
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else fmt.stop_ids[0]
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="ex", disable=not progress_enabled() or len(prompts) < 2)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_left([prompts[i] for i in idx], pad_id)
        width = ids.shape[1]
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=fmt.stop_ids,
            pad_token_id=pad_id,
        )
        latency = time.perf_counter() - t0
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            stop_at = next((j for j, t in enumerate(new) if t in fmt.stop_ids), None)
            answer_ids = new if stop_at is None else new[:stop_at]
            results[i] = Generation(
                text=tok.decode(answer_ids, skip_special_tokens=True).strip(),
                prompt_tokens=len(prompts[i]),
                generated_tokens=len(answer_ids) + (0 if stop_at is None else 1),
                stopped=stop_at is not None,
                latency_s=latency,
            )
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return results  # type: ignore[return-value]
