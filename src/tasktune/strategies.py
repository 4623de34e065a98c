"""Adaptation strategies: how a base model is prepared for training and how the result is saved and reloaded.

Everything else (data, loop, eval) is shared: with `peft`, full fine-tuning, LoRA, prefix tuning and prompt tuning
differ only here. What a strategy cannot do (merge a prefix or a soft prompt into the weights) is refused here, with
a message that says what to do instead.
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
    # Positions the trained model puts before the input ids: prompt tuning prepends its soft prompt to the input
    # embeddings, so the logits come out that many positions longer than the labels (loss.token_loss aligns them).
    prepended_tokens: Callable[[TrainConfig], int] = lambda cfg: 0


def _prepare_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    target, layers = lora.target_modules, None
    if lora.top_layers is not None:
        # A slice, like layers[-top_layers:]: a task file written for a deep model still runs on a shallower one.
        n = model.config.get_text_config().num_hidden_layers
        layers = list(range(max(n - lora.top_layers, 0), n))
        if target == "all-linear":  # peft takes a layer subset only with module names: let peft name them
            target = _all_linear_names(model)
    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise TaskTuneError(
            f"lora.target_modules: {e}", "use 'all-linear' or names of the model's linear layers"
        ) from None


def _all_linear_names(model) -> list[str]:
    """The modules peft's 'all-linear' adapts (Linear and Conv1D layers but the output head), by peft's own rule:
    `get_peft_model` applies the same function when target_modules is the string."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    # Leaf names ("q_proj"): peft applies layers_to_transform to names matched by suffix, not to full paths.
    names = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear"), model).target_modules
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def _prepare_full(model, cfg: TrainConfig):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _prepare_prefix(model, cfg: TrainConfig):
    from peft import PrefixTuningConfig, get_peft_model

    # Trained key/value pairs for every layer, read from a cache-like object: with transformers 5 peft hands them to
    # the model as a DynamicCache, which is why `token_loss` passes use_cache=False (the prefix is not our cache).
    peft_cfg = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=cfg.prefix.num_virtual_tokens,
        prefix_projection=cfg.prefix.projection,
        encoder_hidden_size=model.config.hidden_size,
    )
    return get_peft_model(model, peft_cfg)


def _prepare_prompt(model, cfg: TrainConfig):
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    kwargs = {}
    if cfg.prompt.init_text:
        from tasktune.models import resolve_model

        kwargs = {
            "prompt_tuning_init": PromptTuningInit.TEXT,
            "prompt_tuning_init_text": cfg.prompt.init_text,
            "tokenizer_name_or_path": str(resolve_model(cfg.model).path),
        }
    peft_cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.prompt.num_virtual_tokens, **kwargs)
    return get_peft_model(model, peft_cfg)


STRATEGIES: dict[str, Strategy] = {
    "lora": Strategy(
        "lora", _prepare_lora, "adapter", True, "low-rank adapters on the linear layers (peft)", frozen_base=True
    ),
    "full": Strategy("full", _prepare_full, "model", True, "every weight of the model is trained"),
    "prefix": Strategy(
        "prefix",
        _prepare_prefix,
        "adapter",
        False,
        "trained key/value prefix in every attention layer (peft prefix tuning)",
        frozen_base=True,
    ),
    "prompt": Strategy(
        "prompt",
        _prepare_prompt,
        "adapter",
        False,
        "trained soft-prompt embeddings before every input (peft prompt tuning)",
        frozen_base=True,
        prepended_tokens=lambda cfg: cfg.prompt.num_virtual_tokens,
    ),
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise TaskTuneError(f"unknown method {name!r}", f"choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def save_trained(model, tokenizer, folder: Path, state_dict: dict | None = None) -> None:
    """Standard layouts: a PEFT adapter folder, or a full safetensors model folder; the tokenizer beside it.
    `state_dict`: the gathered weights where they are sharded (FSDP, DeepSpeed ZeRO-3)."""
    kwargs = {} if state_dict is None else {"state_dict": state_dict}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    tokenizer.save_pretrained(folder)


def load_trained(strategy: Strategy, base_model, folder: Path, *, allow_pickle: bool = False):
    if strategy.weights_dir == "adapter":
        from peft import PeftModel

        from tasktune.models import refuse_pickle

        refuse_pickle(folder, allow_pickle=allow_pickle, what="adapter")
        return PeftModel.from_pretrained(base_model, folder)
    raise AssertionError("full runs are loaded from their own model folder")


def merge_weights(strategy: Strategy, model):
    """Fold a trained adapter into plain model weights; refuses, with the alternative, where that is impossible."""
    if not strategy.mergeable:
        raise TaskTuneError(
            f"a {strategy.name} run cannot be merged into the model weights: its trained part is extra"
            f" {'key/value prefixes' if strategy.name == 'prefix' else 'input embeddings'} that every request"
            " needs, not a change of existing weights",
            "use the run as it is (predict, eval and serve load the adapter onto the base model), or train with"
            " --method lora or --method full if you need one merged model folder",
        )
    if strategy.weights_dir == "model":
        return model
    return model.merge_and_unload()


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
