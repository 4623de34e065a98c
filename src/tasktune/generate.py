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
    constraint=None,
    inputs: list[str] | None = None,
) -> list[Generation]:
    """`constraint` (a constrain.Constraint) decodes every answer under its grammar; `inputs`, the requests' bare
    inputs, feed its copy fields."""
    from tqdm.auto import tqdm

    tok = fmt.tok
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else fmt.stop_ids[0]
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="ex", disable=not progress_enabled() or len(prompts) < 2)
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=fmt.stop_ids, pad_token_id=pad_id)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_left([prompts[i] for i in idx], pad_id)
        t0 = time.perf_counter()
        extra = {}
        if constraint is not None:
            from transformers import LogitsProcessorList

            rows = [inputs[i] if inputs else "" for i in idx]
            extra["logits_processor"] = LogitsProcessorList([constraint.processor(rows, max_new_tokens)])
        out = new_tokens(model, ids.to(device), mask.to(device), **settings, **extra)
        latency = time.perf_counter() - t0
        for row, i in enumerate(idx):
            new = out[row].tolist()
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


def new_tokens(model, ids: torch.Tensor, mask: torch.Tensor, **settings) -> torch.Tensor:
    """`model.generate` on a left-padded batch, returning only the new tokens; prompt- and prefix-tuned models go
    through `_generate_after_virtual_tokens`. Used by predict/eval and by the server."""
    virtual = _virtual_token_method(model)
    if virtual is not None:
        return _generate_after_virtual_tokens(model, virtual, ids, mask, settings)
    return model.generate(input_ids=ids, attention_mask=mask, **settings)[:, ids.shape[1] :]


def _virtual_token_method(model) -> str | None:
    """'PROMPT_TUNING' or 'PREFIX_TUNING' for a peft model with virtual tokens, else None."""
    config = getattr(model, "active_peft_config", None)
    kind = getattr(config, "peft_type", None)
    return kind.value if kind is not None and kind.value in ("PROMPT_TUNING", "PREFIX_TUNING") else None


def _generate_after_virtual_tokens(model, kind: str, ids: torch.Tensor, mask: torch.Tensor, settings: dict):
    """Greedy decoding of a prompt- or prefix-tuned model through the base model's own generate(); new tokens only.

    Written by hand because peft's generate() gets left-padded batches wrong: it drops the position ids that left
    padding needs, so a padded prompt's answer changed with the batch it was in (a test pins this); and for prompt
    tuning it decoded an order of magnitude slower than the base model. Here the n
    virtual tokens come first, then the left-padded prompt, as in training: positions count unmasked tokens only, so
    a prompt starts at position n however much padding its batch needs, and the KV cache works as for any prompt."""
    base = model.get_base_model()
    batch, n = ids.shape[0], model.active_peft_config.num_virtual_tokens
    mask = torch.cat([torch.ones((batch, n), dtype=mask.dtype, device=mask.device), mask], dim=1)
    if kind == "PROMPT_TUNING":  # trained embeddings in front of the prompt's
        embeds = base.get_input_embeddings()(ids)
        virtual = model.get_prompt(batch_size=1).to(embeds.dtype).expand(batch, -1, -1)
        return base.generate(inputs_embeds=torch.cat([virtual, embeds], dim=1), attention_mask=mask, **settings)
    # Prefix tuning: trained keys and values fill the cache's first n slots; placeholder ids stand for them.
    filler = torch.full((batch, n), settings["pad_token_id"], dtype=ids.dtype, device=ids.device)
    cache = model.get_prompt(batch_size=batch)
    out = base.generate(
        input_ids=torch.cat([filler, ids], dim=1), attention_mask=mask, past_key_values=cache, **settings
    )
    return out[:, n + ids.shape[1] :]
