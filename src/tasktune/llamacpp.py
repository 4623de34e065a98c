"""llama.cpp itself, for the GGUF export's parity check and benchmark: node-llama-cpp's prebuilt CPU build.

`make install` puts it in `llamacpp/node_modules` of the checkout (pinned in llamacpp/package-lock.json);
elsewhere point `TASKTUNE_LLAMACPP` at a `node_modules` folder holding `node-llama-cpp`. The answers come from
llamacpp.mjs beside this file, which takes the prompt, BOS and stop tokens from the GGUF file alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasktune.errors import TaskTuneError

SCRIPT = Path(__file__).with_name("llamacpp.mjs")
INSTALL = "cd llamacpp && npm ci --omit=optional (what `make install` runs), or set TASKTUNE_LLAMACPP=DIR/node_modules"


@dataclass
class Answer:
    prompt_tokens: list[int]
    tokens: list[int]
    text: str
    stopped: str  # "eog": llama.cpp ended the turn at an end-of-generation token; "length": the cap
    seconds: float


def node_modules() -> Path:
    """The `node_modules` folder that holds node-llama-cpp, or an error that says how to get one."""
    checkout = Path(__file__).resolve().parents[2] / "llamacpp" / "node_modules"
    for c in (os.environ.get("TASKTUNE_LLAMACPP"), checkout):
        if c and (Path(c) / "node-llama-cpp" / "package.json").is_file():
            return Path(c)
    raise TaskTuneError("the GGUF parity check needs llama.cpp (node-llama-cpp), which is not installed", INSTALL)


def require() -> Path:
    """node-llama-cpp's folder, once both it and `node` are there; else an error that says how to get them."""
    if shutil.which("node") is None:
        raise TaskTuneError("the GGUF parity check runs llama.cpp under Node.js, and `node` is not on PATH",
                            "install Node.js 20 or later")  # fmt: skip
    return node_modules()


def available() -> bool:
    try:
        require()
    except TaskTuneError:
        return False
    return True


def answer(
    model: Path,
    conversations: list[list[dict]],
    max_tokens: int,
    *,
    lora: Path | None = None,
    template: str | None = None,
    batch: int = 1,
    threads: int | None = None,
    timeout: float = 1800,
) -> tuple[list[Answer], float]:
    """Greedy answers of the GGUF file `model` (with a GGUF LoRA `lora`) to each conversation, and the wall time of
    all of them. `template` replaces the file's chat template (llama-server's --chat-template-file). `batch`
    conversations are decoded together, as llama.cpp sequences of one context: for speed figures only, since
    node-llama-cpp 3.21.1 was seen to mix tokens between parallel sequences (the parity check decodes one at a time)."""
    modules = require()
    request = {
        "model": str(model),
        "lora": str(lora) if lora else None,
        "template": template,
        "batch": batch,
        "threads": threads or len(os.sched_getaffinity(0)),
        "conversations": [{"messages": c, "max_tokens": max_tokens} for c in conversations],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as f:
        json.dump(request, f, ensure_ascii=False)
        f.flush()
        done = subprocess.run(
            ["node", str(SCRIPT), str(modules), f.name], capture_output=True, text=True, timeout=timeout
        )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise TaskTuneError(
            f"llama.cpp could not run {model.name}: {' | '.join(tail)}",
            "check the file with `gguf-dump`; report it with the run folder if it persists",
        )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in out:
        raise TaskTuneError(f"llama.cpp could not use {model.name}: {out['error']}", "export again")
    return [Answer(**a) for a in out["answers"]], out["seconds"]
