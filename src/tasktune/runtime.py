"""Device, precision and thread choices, decided once per process."""

from __future__ import annotations

import os

import torch


def bf16_supported() -> bool:
    """bf16 matmuls are fast on CPUs with AVX512-BF16 or AMX, and on recent GPUs; elsewhere they are emulated."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str) -> str:
    """'auto' → 'bf16' where it is fast, else 'fp32'. Weights stay fp32; bf16 is applied by autocast."""
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return precision


def mixed_precision_flag(precision: str) -> str:
    return "bf16" if resolve_precision(precision) == "bf16" else "no"


def progress_enabled() -> bool:
    return os.environ.get("TASKTUNE_NO_PROGRESS", "") in ("", "0")


def make_accelerator(precision: str):
    """An Accelerator for this run's precision.

    accelerate keeps its state in a process-wide singleton and refuses a second Accelerator with another precision;
    a library that trains several runs in one process (compare, tests) must reset that part of the state first. The
    process group (PartialState) is kept, so this is safe under torchrun/accelerate launch too.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision_flag(precision), cpu=not torch.cuda.is_available())
