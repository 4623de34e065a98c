"""Several processes, one run: the `--processes N` launcher for one machine, and what each engine allows.

`tasktune train --processes N ...` starts itself again under `torch.distributed.run` (torchrun): N data-parallel
processes on this machine (gloo on CPU, NCCL on GPUs), whose environment `accelerate.Accelerator` picks up. On
several machines, or with FSDP/DeepSpeed, use `accelerate launch --config_file configs/accelerate/X.yaml -m tasktune
train ...` (README: "Several GPUs or machines").
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys

from tasktune.config import TrainConfig
from tasktune.errors import ConfigError


def launched() -> bool:
    """True inside a process started by torchrun / accelerate launch (or any launcher that sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ


def quiet_unless_main():
    """Silence stdout in every process but the main one (before the Accelerator exists: by the launcher's RANK)."""
    if os.environ.get("RANK", "0") == "0":
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(io.StringIO())


def without_processes_flag(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--processes":
            skip = True
        elif not a.startswith("--processes="):
            out.append(a)
    return out


def launch_local(argv: list[str], processes: int) -> int:
    """Run `tasktune ARGV` as `processes` data-parallel processes on this machine; returns their exit code.

    torchrun's launcher runs in this process (torch.distributed.run.run), so that a signal or a failed worker ends in
    one line of ours rather than the launcher's traceback. On SIGINT/SIGTERM the launcher passes the signal to every
    worker (they finish the step, save a checkpoint and say how to resume) and waits for them."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # Share the cores out (torchrun would set 1 thread per process and warn).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    args = ["--standalone", f"--nproc-per-node={processes}", "-m", "tasktune", *argv]
    print(f"tasktune: starting {processes} processes on this machine (torchrun {' '.join(args)})", flush=True)
    try:
        run(parse_args(args))
    except SignalException as e:
        print(f"tasktune: stopped by {signal.Signals(e.sigval).name}; see the resume command above", file=sys.stderr)
        return 128 + int(e.sigval)
    except ChildFailedError as e:  # each worker printed its own error; pass on the first exit code
        codes = [f.exitcode for f in e.failures.values()]
        return next((c for c in codes if c > 0), 1)
    return 0


def check_engine(accelerator, cfg: TrainConfig, resume: bool) -> None:
    """Refuse, before any work, settings that the distributed engine in use cannot honour."""
    from tasktune.checkpoint import unsupported_reason

    reason = unsupported_reason(accelerator)
    if reason and (cfg.save_every or resume):
        raise ConfigError(
            f"--save-every / --resume: {reason}",
            "use configs/accelerate/ddp.yaml (LoRA fits every GPU with DDP), or train without --save-every",
        )
    if not str(accelerator.distributed_type).endswith("DEEPSPEED"):
        return
    # DeepSpeed wants the micro-batch size; accelerate reads it from a prepared DataLoader, which this loop has not.
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    if ds_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    if cfg.grad_accum > 1:
        # accelerator.backward steps the DeepSpeed engine after every micro-batch unless accelerate's own
        # accumulation drives it; our loop accumulates by hand, so it would step grad_accum times per step.
        raise ConfigError(
            f"grad_accum={cfg.grad_accum} under DeepSpeed",
            "use --grad-accum 1 and raise --batch-size or the process count for a larger global batch",
        )
