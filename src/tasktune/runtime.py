"""Device, precision and thread choices, decided once per process."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def bf16_supported() -> bool:
    """Whether bf16 matmuls beat fp32 here: on recent GPUs, and on CPUs with AMX tiles.

    AVX512-BF16 alone is not enough: where a hypervisor hides AMX, oneDNN's avx512_core_bf16 kernels run matmuls,
    training steps and generation slower in bf16 than in fp32; with AMX, bf16 is the faster (docs/benchmarks.md,
    "Figures behind the code's choices"). The rule reads CPU flags, not a timing, so one machine always makes the
    same choice (and a resumed run continues in the precision it started with).
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_amx_tile_supported()) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str) -> str:
    """'auto' → 'bf16' where it is fast, else 'fp32'. Weights stay fp32; bf16 is applied by autocast."""
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return precision


def describe_precision(precision: str) -> str:
    """The resolved precision, and for 'auto' why (printed when training starts)."""
    resolved = resolve_precision(precision)
    if precision != "auto":
        return resolved
    if torch.cuda.is_available():
        return f"{resolved} (auto: {'a GPU with' if resolved == 'bf16' else 'a GPU without'} bf16)"
    why = "this CPU has AMX" if resolved == "bf16" else "this CPU has no AMX tiles, and fp32 is faster there"
    return f"{resolved} (auto: {why}; set --precision to choose)"


def cast_for_inference(model, precision: str) -> str:
    """Store `model`'s weights in bf16 where `precision` resolves to bf16 (in place; LoRA adapters too, inference
    only reads them) and return the resolved precision. Casting fp32 weights under autocast on every decoding step
    costs more than the matmuls of a 135M model."""
    resolved = resolve_precision(precision)
    if resolved == "bf16":
        model.to(torch.bfloat16)
    return resolved


def mixed_precision_flag(precision: str) -> str:
    return "bf16" if resolve_precision(precision) == "bf16" else "no"


def progress_enabled() -> bool:
    return os.environ.get("TASKTUNE_NO_PROGRESS", "") in ("", "0")


def make_accelerator(precision: str, log_with: list[str] | None = None, project_dir: str | Path | None = None):
    """An Accelerator for this run's precision; `log_with`: accelerate's experiment trackers (tensorboard, ...),
    writing under `project_dir`.

    accelerate keeps its state in a process-wide singleton and refuses a second Accelerator with another precision;
    a library that trains several runs in one process (compare, tests) must reset that part of the state first. The
    process group (PartialState) is kept, so this is safe under torchrun/accelerate launch too.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    trackers = {"log_with": list(log_with), "project_dir": str(project_dir)} if log_with else {}
    return Accelerator(mixed_precision=mixed_precision_flag(precision), cpu=not torch.cuda.is_available(), **trackers)


# Batch widths are rounded up to a multiple of this. On CPU each new (batch, width) shape grows per-shape caches
# (oneDNN kernels, allocator pools) and slows every later step while memory grows; widths in steps of 32 keep the
# speed and the memory flat (docs/benchmarks.md, "Figures behind the code's choices"; benchmarks/padding_buckets.py).
PAD_MULTIPLE = 32


def padded_width(width: int, multiple: int = PAD_MULTIPLE) -> int:
    return -(-width // multiple) * multiple


def quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' loading bars and deprecation chatter do not."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
