"""tasktune export: a run as a standalone Hugging Face model folder that plain `transformers` loads.

tasktune export RUN --out DIR [--merge] [--parity-rows 32]

The folder holds safetensors weights, the tokenizer with its chat template, a JSON task's schema.json (what its
answers are decoded under), and a generation config whose eos_token_id is the token that ends an answer, so
`model.generate` stops where `tasktune predict` stops. A LoRA run
needs --merge (its adapter is folded into the weights); a full run is copied as it is; prefix and prompt runs cannot
be merged and are refused with the alternative.

After writing, a parity check loads the exported folder with plain `AutoModelForCausalLM` and compares its greedy
answers with the run's own model (the unmerged adapter on its base) on the run's eval inputs, in fp32. Anything below
100% agreement fails, and the earlier contents of DIR (if any) are kept: the folder is written beside DIR and renamed
into place only after the check passes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasktune.errors import TaskTuneError
from tasktune.fsio import atomic_dir
from tasktune.rundir import RunInfo
from tasktune.strategies import get_strategy, merge_weights


@dataclass
class ExportResult:
    out: str
    run: str
    method: str
    merged: bool
    parity_rows: int
    parity_agreement: float | None  # share of rows with identical greedy answers; None when no rows were checked
    disagreements: list[dict] = field(default_factory=list)  # first few rows that differ: input, run, exported
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _parity_inputs(run: Path, limit: int) -> list:
    """The run's eval inputs (else test, else train): what it was measured on while training."""
    from tasktune.data import read_examples
    from tasktune.rundir import load_run_task

    task = load_run_task(run)
    for split in ("eval", "test", "train"):
        path = task.data_path(split)
        if path is not None and Path(path).is_file():
            return read_examples(path, require_answer=False)[:limit]
    return []


def _load_run_model(run: Path, info: RunInfo):
    """The run's own model in fp32, as training left it: the base plus the unmerged adapter, or the full model."""
    from tasktune.models import load_base, resolve_model
    from tasktune.strategies import load_trained

    strategy = get_strategy(info.method)
    weights = run / info.weights_dir
    if not weights.is_dir():
        raise TaskTuneError(f"{weights} is missing: the run did not finish", "train again, or resume the run")
    if strategy.weights_dir == "model":
        return load_base(weights)
    from transformers import AutoTokenizer

    base_path = Path(info.base_model_path)
    if not (base_path / "config.json").is_file():
        base_path = resolve_model(info.base_model).path
    base, _ = load_base(base_path)
    return load_trained(strategy, base, weights), AutoTokenizer.from_pretrained(weights)


def _answers(model, fmt, examples, instruction, max_new_tokens: int) -> list[str]:
    from tasktune.generate import generate

    prompts = [fmt.encode_prompt(fmt.with_instruction(ex.prompt_messages, instruction)) for ex in examples]
    return [g.text for g in generate(model, fmt, prompts, max_new_tokens=max_new_tokens, desc="parity")]


def export(run: str | Path, out: str | Path, *, merge: bool = False, parity_rows: int = 32) -> ExportResult:
    """Write RUN as a standalone model folder at OUT and check it answers exactly as the run does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasktune.render import ChatFormat

    t0 = time.perf_counter()
    run, out = Path(run), Path(out)
    info = RunInfo.load(run)
    strategy = get_strategy(info.method)
    if not strategy.mergeable:
        merge_weights(strategy, None)  # raises the refusal that names the alternative
    if strategy.weights_dir == "adapter" and not merge:
        raise TaskTuneError(
            f"{run} is a {info.method} run: a standalone model folder needs its adapter folded into the weights",
            f"pass --merge (the unmerged adapter is already a standard PEFT folder: {run / info.weights_dir})",
        )
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise TaskTuneError(f"--out {out} is inside the run folder", "export to a folder outside the run")
    model, tok = _load_run_model(run, info)
    fmt = ChatFormat(tok)
    instruction = info.instruction if info.instruction_in_prompt else None
    examples = _parity_inputs(run, parity_rows)
    cap = info.max_new_tokens
    expected = _answers(model, fmt, examples, instruction, cap) if examples else []  # before merging: the adapter's
    standalone = merge_weights(strategy, model)

    with atomic_dir(out) as tmp:
        standalone.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)  # tokenizer files and the chat template
        gen = standalone.generation_config
        # The answer ends at the template's end-of-turn token: make generate stop there (and pad with a real id).
        gen.eos_token_id = fmt.stop_ids[0] if len(fmt.stop_ids) == 1 else list(fmt.stop_ids)
        gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else fmt.stop_ids[0]
        gen.max_new_tokens = cap
        gen.do_sample = False
        for k in ("temperature", "top_p", "top_k"):  # sampling settings without do_sample make transformers warn
            setattr(gen, k, None)
        gen.save_pretrained(tmp)
        del standalone, model

        # Parity on the exported files themselves, loaded the way any user would load them.
        loaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        loaded_tok = AutoTokenizer.from_pretrained(tmp)
        got = _answers(loaded, ChatFormat(loaded_tok), examples, instruction, cap) if examples else []
        same = [a == b for a, b in zip(expected, got, strict=True)]
        agreement = sum(same) / len(same) if same else None
        differ = [{"input": ex.input_text, "run": a, "exported": b}
                  for ex, a, b, ok in zip(examples, expected, got, same, strict=True) if not ok][:5]  # fmt: skip
        result = ExportResult(
            out=str(out),
            run=str(run),
            method=info.method,
            merged=strategy.weights_dir == "adapter",
            parity_rows=len(same),
            parity_agreement=agreement,
            disagreements=differ,
        )
        if agreement is not None and agreement < 1.0:
            raise TaskTuneError(
                f"parity check failed: the exported model gives the run's greedy answer on {sum(same)} of"
                f" {len(same)} eval inputs ({agreement:.1%}); first difference on {differ[0]['input']!r}:"
                f" run {differ[0]['run']!r}, exported {differ[0]['exported']!r}. Nothing was written to {out}",
                "report this as a bug with the run folder; the run itself is unchanged and still serves",
            )
        result.seconds = time.perf_counter() - t0
        prompt_note = {"instruction_in_prompt": info.instruction_in_prompt, "instruction": instruction}
        if info.output_kind == "json":  # a server in front of the model can decode under it (response_format)
            (tmp / "schema.json").write_text(json.dumps(info.schema or {}, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")  # fmt: skip
            prompt_note |= {"schema": "schema.json", "copy_fields": info.copy_fields}
        (tmp / "tasktune-export.json").write_text(
            json.dumps(result.to_dict() | {"task": info.task_name, "base_model": info.base_model} | prompt_note,
                       indent=2, ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip
    return result
