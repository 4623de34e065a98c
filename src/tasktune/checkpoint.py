"""Checkpoints: everything a killed run needs to continue exactly where it stopped, and nothing it must trust.

RUN/checkpoints/step-00000040/
  trainable.safetensors   the trained weights by parameter name (the adapter, or every weight for full tuning)
  optimizer.safetensors   AdamW's per-parameter tensors (step, exp_avg, exp_avg_sq)
  rng.safetensors         torch's RNG state of every process (CPU, and CUDA where present)
  state.json              step, data position, scheduler, optimizer hyper-parameters, python/numpy RNG of every
                          process, the running figures, and the size and sha256 of each file above (written last)

Written by hand rather than with accelerate's save_state/load_state, because save_state writes straight into the
target folder (a kill mid-save leaves a half-written checkpoint that load_state reads without complaint), pickles the
optimizer, scheduler and RNG states (torch.save), and records a data position only for its own prepared DataLoaders,
not for our seeded batch iterator. Here a checkpoint is a temporary folder renamed into place
(fsio.atomic_dir), nothing is pickled, and every file's size and hash is checked before a checkpoint is used.
Checkpoints hold full (unsharded) states, so they are written under single-process and DDP training only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tasktune.errors import TaskTuneError, TrainingStopped
from tasktune.fsio import atomic_dir, atomic_write_json

FORMAT = 1
STEP_DIR = re.compile(r"^step-(\d{8})$")
FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors")


@dataclass
class TrainState:
    """Where the loop stands after `step`: the next micro-batch is number `batch` of epoch `epoch` (per process)."""

    step: int
    epoch: int
    batch: int
    world: int
    figures: dict = field(default_factory=dict)  # running totals the loop reports (tokens seen, best eval loss, ...)


@dataclass
class Found:
    """The newest usable checkpoint of a run (or None), and every checkpoint skipped on the way, with the reason."""

    path: Path | None
    state: TrainState | None
    skipped: list[tuple[Path, str]]


def checkpoint_dir(run: Path, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step-{step:08d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- state to plain data (safetensors + JSON, never pickle) -------------------------------------------------------
def _optimizer_to_flat(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> dict:
    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict, tensors: dict[str, torch.Tensor], rank: int) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors[f"torch.{rank}"])
    if torch.cuda.is_available() and f"cuda.{rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"cuda.{rank}"])


# --- save ---------------------------------------------------------------------------------------------------------
def unsupported_reason(accelerator) -> str | None:
    """Why this engine cannot checkpoint (sharded states), or None."""
    kind = str(accelerator.distributed_type).split(".")[-1]
    if kind in ("FSDP", "DEEPSPEED"):
        return f"checkpoints hold full optimizer states and are not written under {kind} (its states are sharded)"
    return None


def save_checkpoint(run: Path, state: TrainState, model, optimizer, scheduler, accelerator, keep: int) -> Path:
    """Write the checkpoint of `state.step` atomically, then keep only the newest `keep`. Every process calls this
    (RNG states are gathered); only the main process writes. A failed write leaves earlier checkpoints intact."""
    from accelerate.utils import gather_object

    rngs = gather_object([_rng_state()])  # every process's RNG, in rank order
    weights = accelerator.get_state_dict(model)
    trainable = [n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad]
    target = checkpoint_dir(run, state.step)
    if accelerator.is_main_process:
        try:
            with atomic_dir(target) as tmp:
                save_file({n: weights[n].detach().contiguous().cpu() for n in trainable}, tmp / FILES[0])
                opt_tensors, opt_meta = _optimizer_to_flat(optimizer.state_dict())
                save_file(opt_tensors, tmp / FILES[1])
                rng_tensors = {f"{k}.{r}": s[k] for r, s in enumerate(rngs) for k in ("torch", "cuda") if k in s}
                save_file(rng_tensors, tmp / FILES[2])
                body = {
                    "format": FORMAT,
                    **asdict(state),
                    "trainable": trainable,
                    "optimizer": opt_meta,
                    "scheduler": scheduler.state_dict(),
                    "rng": [{k: s[k] for k in ("python", "numpy")} for s in rngs],
                    "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)} for f in FILES},
                    "saved": time.time(),
                }
                atomic_write_json(tmp / "state.json", body)
        except (OSError, TaskTuneError) as e:
            raise _save_error(run, target, e) from None
        _prune(run, keep)
    accelerator.wait_for_everyone()
    return target


def _save_error(run: Path, target: Path, e: OSError | TaskTuneError) -> TaskTuneError:
    # OSError(errno.ENOSPC) with the number alone leaves .errno unset: read it from the arguments then.
    code = getattr(e, "errno", None) or next(iter(a for a in getattr(e, "args", ())[:1] if isinstance(a, int)), None)
    reason = e.message if isinstance(e, TaskTuneError) else e.strerror or (os.strerror(code) if code else str(e))
    earlier = find_checkpoint(run, tidy=False).path
    kept = f"the previous checkpoint {earlier} is intact" if earlier else "no earlier checkpoint exists"
    fix = "the disk is full: free space (or lower --keep-checkpoints)" if code == errno.ENOSPC else (
        "free disk space or fix the folder's permissions")  # fmt: skip
    return TaskTuneError(
        f"cannot write checkpoint {target}: {reason}; {kept}", f"{fix}, then: tasktune train --resume {run}"
    )


def _prune(run: Path, keep: int) -> None:
    steps = sorted(p for p in (Path(run) / "checkpoints").iterdir() if STEP_DIR.match(p.name))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# --- find and load ------------------------------------------------------------------------------------------------
def verify(path: Path) -> TrainState:
    """The checkpoint's state if every file is there with its recorded size and hash; ValueError says what is wrong."""
    try:
        body = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError("state.json is missing (the save did not finish)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"state.json is unreadable ({e})") from None
    if body.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {body.get('format')!r}, this tasktune reads {FORMAT}")
    for name, want in body["files"].items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{name} is missing")
        if f.stat().st_size != want["bytes"]:
            raise ValueError(f"{name} has {f.stat().st_size} bytes, {want['bytes']} were written (truncated?)")
        if _sha256(f) != want["sha256"]:
            raise ValueError(f"{name} does not match its recorded sha256 (damaged)")
    return TrainState(body["step"], body["epoch"], body["batch"], body["world"], body["figures"])


def find_checkpoint(run: Path, *, tidy: bool = True) -> Found:
    """The newest complete checkpoint, and the ones skipped on the way. With `tidy`, interrupted saves (temporary
    folders) are removed and damaged checkpoints renamed `step-N.damaged` (kept for inspection, never read again)."""
    folder = Path(run) / "checkpoints"
    skipped: list[tuple[Path, str]] = []
    if not folder.is_dir():
        return Found(None, None, skipped)
    for p in sorted(folder.glob(".step-*.tmp")):
        skipped.append((p, "an interrupted save (temporary folder); removed"))
        if tidy:
            shutil.rmtree(p, ignore_errors=True)
    for p in sorted((p for p in folder.iterdir() if STEP_DIR.match(p.name)), reverse=True):
        try:
            return Found(p, verify(p), skipped)
        except ValueError as e:
            skipped.append((p, f"{e}; renamed to {p.name}.damaged"))
            if tidy:
                p.rename(p.with_name(f"{p.name}.damaged"))
    return Found(None, None, skipped)


def load_checkpoint(path: Path, model, optimizer, scheduler, accelerator) -> TrainState:
    """Restore weights, optimizer, scheduler and this process's RNG from a verified checkpoint (before `prepare`)."""
    body = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if body["world"] != accelerator.num_processes:
        raise TaskTuneError(
            f"checkpoint {path} was written by {body['world']} process(es), this run has {accelerator.num_processes}:"
            " each process's share of the data (and the global batch) would change",
            f"resume with {body['world']} process(es) (--processes {body['world']}, or the same launcher settings)",
        )
    weights = load_file(path / FILES[0])
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != trainable or any(weights[n].shape != params[n].shape for n in weights):
        raise TaskTuneError(
            f"checkpoint {path} was written for other trainable weights than this run's model",
            "resume with the run's own settings (method, lora.*, model), or start a new run",
        )
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    optimizer.load_state_dict(_optimizer_from_flat(load_file(path / FILES[1]), body["optimizer"]))
    scheduler.load_state_dict(body["scheduler"])
    rank = accelerator.process_index
    _set_rng_state(body["rng"][rank], load_file(path / FILES[2]), rank)
    return TrainState(body["step"], body["epoch"], body["batch"], body["world"], body["figures"])


# --- what the loop uses -------------------------------------------------------------------------------------------
@dataclass
class Checkpointing:
    """Checkpoint settings of one run: save every `every` steps (0: only at the end and on a signal), keep `keep`."""

    run: Path
    every: int
    keep: int
    resume_from: Path | None = None

    def due(self, step: int, total: int, signum: int) -> bool:
        return step == total or bool(signum) or (self.every > 0 and step % self.every == 0)

    def save(self, state: TrainState, model, optimizer, scheduler, accelerator) -> Path:
        return save_checkpoint(self.run, state, model, optimizer, scheduler, accelerator, self.keep)


# --- stopping on a signal -----------------------------------------------------------------------------------------
class StopOnSignal:
    """SIGINT/SIGTERM ask the loop to stop after the current step (the loop then saves a checkpoint and raises).

    A repeated signal does not abort: under torchrun a Ctrl-C reaches each worker twice (from the terminal and
    forwarded by the launcher). Stop at once with SIGKILL; the last complete checkpoint is intact either way."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        with contextlib.suppress(ValueError):  # signal handlers can only be set from the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = self.signum or signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def requested(self, accelerator) -> int:
        """The signal number once any process got one (agreed across processes, so all stop at the same step)."""
        if accelerator.num_processes == 1:
            return self.signum or 0
        return int(accelerator.reduce(torch.tensor(self.signum or 0, device=accelerator.device), "max"))


def stopped(signum: int, step: int, total: int, saved: Path | None, world: int) -> TrainingStopped:
    """The error that ends a run stopped by a signal, with the exact command that resumes it."""
    name = signal.Signals(signum).name
    if saved is None:
        return TrainingStopped(f"stopped by {name} after step {step} of {total}; checkpoints are off", "", signum)
    run = saved.parent.parent
    command = f"tasktune train --resume {run}" + (f" --processes {world}" if world > 1 else "")
    message = f"stopped by {name} after step {step} of {total}; checkpoint saved in {saved}"
    return TrainingStopped(message, f"resume with: {command}", signum)
