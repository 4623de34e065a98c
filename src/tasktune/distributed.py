"""Several processes, one run: the `--processes N` launcher for one machine, and what each engine allows.

`tasktune train --processes N ...` starts itself again under `torch.distributed.run` (torchrun): N data-parallel
processes on this machine (gloo on CPU, NCCL on GPUs), whose environment `accelerate.Accelerator` picks up. On
several machines, or with FSDP/DeepSpeed, use `accelerate launch --config_file configs/accelerate/X.yaml -m tasktune
train ...` (README: "Several GPUs or machines").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tasktune.config import TrainConfig
from tasktune.errors import ConfigError


def launched() -> bool:
    """True inside a process started by torchrun / accelerate launch (or any launcher that sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ


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

    A SIGTERM sent to this process is passed on to the launcher, which passes it to every worker (they finish the
    step, save a checkpoint and exit). A Ctrl-C reaches the workers from the terminal itself, so here it is ignored
    rather than forwarded a second time."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {"OMP_NUM_THREADS": str(threads), **os.environ}  # torchrun would otherwise set 1 and warn
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    cmd += ["-m", "tasktune", *argv]
    print(f"tasktune: starting {processes} processes on this machine: {' '.join(cmd[1:])}", flush=True)
    child = subprocess.Popen(cmd, env=env)
    got: list[int] = []

    def forward(signum, frame):
        got.append(signum)
        if signum == signal.SIGTERM:
            child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:  # the launcher reports the workers' signal exit as a failure: say plainly what happened instead
        print(f"tasktune: stopped by {signal.Signals(got[0]).name}; see the resume command above", file=sys.stderr)
        return 128 + got[0]
    return code


def check_engine(accelerator, cfg: TrainConfig, resume: bool) -> None:
    """Refuse, before any work, settings that the distributed engine in use cannot honour."""
    from tasktune.checkpoint import unsupported_reason

    reason = unsupported_reason(accelerator)
    if reason and (cfg.save_every or resume):
        raise ConfigError(
            f"--save-every / --resume: {reason}",
            "use configs/accelerate/ddp.yaml (LoRA fits every GPU with DDP), or train without --save-every",
        )
    if str(accelerator.distributed_type).endswith("DEEPSPEED") and cfg.grad_accum > 1:
        # accelerator.backward steps the DeepSpeed engine after every micro-batch unless accelerate's own
        # accumulation drives it; our loop accumulates by hand, so it would step grad_accum times per step.
        raise ConfigError(
            f"grad_accum={cfg.grad_accum} under DeepSpeed",
            "use --grad-accum 1 and raise --batch-size or the process count for a larger global batch",
        )
