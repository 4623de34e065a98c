"""The run directory: everything needed to reload, evaluate, serve or audit a run, side by side.

RUN/
  run.json        what was trained: method, base model, weights folder, prompt format, generation defaults
  config.yaml     the resolved task and training settings
  metrics.jsonl   one JSON object per logged step (train/loss, eval/loss, ...)
  env.json        versions, seed, precision, dataset fingerprints
  adapter/        PEFT adapter + tokenizer + chat template   (lora, prefix, prompt)
  model/          full safetensors model + tokenizer          (full)
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from tasktune.errors import TaskTuneError
from tasktune.fsio import atomic_write_json, atomic_write_text

RUN_FORMAT = 1


@dataclass
class RunInfo:
    method: str
    base_model: str  # what the user passed as --model
    base_model_path: str  # the local folder it resolved to
    weights_dir: str
    task_name: str
    output_kind: str
    instruction: str  # the task's long instruction (kept for comparisons; not sent by a tuned run)
    instruction_in_prompt: bool  # whether a tuned run's prompts carry the instruction
    max_new_tokens: int
    precision: str
    schema: dict | None = None  # JSON tasks: the schema answers are decoded under (the task's, or inferred)
    schema_source: str = ""  # "task" or "inferred from N training answers"
    copy_fields: list[str] = field(default_factory=list)
    labels: list[str] | None = None  # label tasks: the closed set of answers they are decoded under
    created: float = field(default_factory=time.time)
    format: int = RUN_FORMAT

    def save(self, run: Path) -> None:
        atomic_write_json(run / "run.json", asdict(self))

    @classmethod
    def load(cls, run: Path) -> RunInfo:
        path = Path(run) / "run.json"
        if not path.is_file():
            raise TaskTuneError(
                f"{run} is not a tasktune run (no run.json)", "pass the --out folder of `tasktune train`"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class MetricsLog:
    """Append-only metrics.jsonl; one flushed line per record, so a crash loses at most the line being written."""

    def __init__(self, path: Path | None):
        self.path = path
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def truncate_metrics(run: Path, step: int) -> None:
    """Keep the records up to `step` (a resumed run logs the later steps again) and drop a half-written last line."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(kept))


def read_metrics(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def file_fingerprint(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_env(run: Path, *, seed: int, precision: str, data_files: dict[str, Path | None]) -> None:
    import accelerate
    import peft
    import torch
    import transformers

    from tasktune import __version__

    env = {
        "tasktune": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "seed": seed,
        "precision": precision,
        "data": {k: {"path": str(p), "sha256": file_fingerprint(p)} for k, p in data_files.items() if p is not None},
    }
    atomic_write_json(run / "env.json", env)


def write_config(run: Path, config: dict) -> None:
    atomic_write_text(run / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def read_config(run: Path) -> dict:
    path = Path(run) / "config.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_run_task(run: Path):
    """The task as the run was trained on it (schema inline, absolute data paths)."""
    from tasktune.config import TaskConfig, build

    config = read_config(run)
    task = build(TaskConfig, config, str(Path(run) / "config.yaml"))
    task.base_dir = Path(run)
    return task
