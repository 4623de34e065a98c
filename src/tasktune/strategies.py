"""Adaptation strategies: how a base model is prepared for training and how the result is saved and reloaded.

Everything else (data, loop, eval) is shared: with `peft`, full fine-tuning and LoRA differ only here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tasktune.config import TrainConfig
from tasktune.errors import TaskTuneError


@dataclass(frozen=True)
class Strategy:
    name: str
    prepare: Callable  # (model, TrainConfig) -> model ready to train
    weights_dir: str  # sub-folder of the run that holds the trained weights
    mergeable: bool  # can the result be folded into plain model weights?
    description: str
    frozen_base: bool = False  # base weights are not trained: under bf16 they can be stored in bf16


def _prepare_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise TaskTuneError(
            f"lora.target_modules: {e}", "use 'all-linear' or names of the model's linear layers"
        ) from None


def _prepare_full(model, cfg: TrainConfig):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


STRATEGIES: dict[str, Strategy] = {
    "lora": Strategy(
        "lora", _prepare_lora, "adapter", True, "low-rank adapters on the linear layers (peft)", frozen_base=True
    ),
    "full": Strategy("full", _prepare_full, "model", True, "every weight of the model is trained"),
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise TaskTuneError(f"unknown method {name!r}", f"choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def save_trained(model, tokenizer, folder: Path) -> None:
    """Standard layouts: a PEFT adapter folder, or a full safetensors model folder; the tokenizer beside it."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def load_trained(strategy: Strategy, base_model, folder: Path):
    if strategy.weights_dir == "adapter":
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, folder)
    raise AssertionError("full runs are loaded from their own model folder")


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
