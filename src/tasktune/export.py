"""tasktune export: a run as a standalone Hugging Face model folder that plain `transformers` loads, or as a GGUF
file that llama.cpp, Ollama and LM Studio run.

tasktune export RUN --out DIR [--merge] [--parity-rows 32]
tasktune export RUN --out DIR --format gguf [--quant f16|bf16|q8_0|f32] [--merge] [--ollama]

The folder holds safetensors weights, the tokenizer with its chat template, a JSON task's schema.json (what its
answers are decoded under), and a generation config whose eos_token_id is the token that ends an answer, so
`model.generate` stops where `tasktune predict` stops. A LoRA run
needs --merge (its adapter is folded into the weights); a full run is copied as it is; prefix and prompt runs cannot
be merged and are refused with the alternative.

After writing, a parity check loads the exported folder with plain `AutoModelForCausalLM` and compares its greedy
answers with the run's own model (the unmerged adapter on its base) on the run's eval inputs, in fp32. Anything below
100% agreement fails, and the earlier contents of DIR (if any) are kept: the folder is written beside DIR and renamed
into place only after the check passes.

`--format gguf` writes `model.gguf` (a full run, or a LoRA run with --merge) or, for a LoRA run without --merge,
`adapter.gguf` for the base's own GGUF file (see gguf_export.py). Its parity check runs in llama.cpp itself
(llamacpp.py): the prompt that llama.cpp builds from the file's chat template must be the run's prompt token for
token, every answer the run ends must end at one of llama.cpp's end-of-generation tokens, and greedy answers must
agree on at least `min_agreement` of the rows (rounding the weights to f16 or q8_0 flips a few near-ties; a lost
template or end-of-turn token fails nearly every row).
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
    conversations = [fmt.with_instruction(ex.prompt_messages, instruction) for ex in examples]
    return [g.text for _, g in _generations(model, fmt, conversations, max_new_tokens)]


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
    _check_out(run, out)
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
        _write_notes(tmp, result, info, instruction)
    return result


def _check_out(run: Path, out: Path) -> None:
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise TaskTuneError(f"--out {out} is inside the run folder", "export to a folder outside the run")


def _write_notes(folder: Path, result, info: RunInfo, instruction: str | None) -> None:
    """tasktune-export.json (what was checked, how the run is prompted) and a JSON task's schema.json."""
    prompt_note = {"instruction_in_prompt": info.instruction_in_prompt, "instruction": instruction}
    if info.output_kind == "json":  # a server in front of the model can decode under it (response_format)
        (folder / "schema.json").write_text(json.dumps(info.schema or {}, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")  # fmt: skip
        prompt_note |= {"schema": "schema.json", "copy_fields": info.copy_fields}
    (folder / "tasktune-export.json").write_text(
        json.dumps(result.to_dict() | {"task": info.task_name, "base_model": info.base_model} | prompt_note,
                   indent=2, ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip


# --- GGUF ---------------------------------------------------------------------------------------------------------
# Least share of rows whose greedy answer llama.cpp must give as the run does, by weight precision: rounding flips
# near-tie tokens now and then; a broken export (template, tokenizer, end-of-turn token) fails nearly every row.
TEMPLATE_FILE = "chat-template.jinja"
MIN_AGREEMENT = {"f32": 1.0, "f16": 0.95, "bf16": 0.9, "q8_0": 0.9}


@dataclass
class GgufResult:
    out: str
    run: str
    method: str
    file: str  # model.gguf, or adapter.gguf for the base's GGUF file
    quant: str
    size_bytes: int
    base_gguf: str | None  # the file an adapter applies to
    parity_rows: int
    parity_agreement: float | None  # greedy answers equal to the run's
    prompt_agreement: float | None  # prompts llama.cpp built from the file's template equal to the run's tokens
    stops_at_turn_end: float | None  # answers the run ended that llama.cpp ended at an end-of-generation token
    disagreements: list[dict] = field(default_factory=list)
    llamacpp_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"format": "gguf"}


def export_gguf(
    run: str | Path,
    out: str | Path,
    *,
    quant: str = "f16",
    merge: bool = False,
    ollama: bool = False,
    parity_rows: int = 32,
    min_agreement: float | None = None,
) -> GgufResult:
    """Write RUN as a GGUF file in OUT, check it in llama.cpp, and only then put OUT in place."""
    from tasktune import gguf_export, llamacpp
    from tasktune.models import source_gguf
    from tasktune.render import ChatFormat

    t0 = time.perf_counter()
    run, out = Path(run), Path(out)
    if quant not in gguf_export.QUANTS:
        raise TaskTuneError(f"--quant {quant} is not one of {', '.join(gguf_export.QUANTS)}", "pick one of those")
    info = RunInfo.load(run)
    strategy = get_strategy(info.method)
    if not strategy.mergeable:
        merge_weights(strategy, None)  # raises the refusal that names the alternative
    _check_out(run, out)
    as_adapter = strategy.weights_dir == "adapter" and not merge
    base_gguf = source_gguf(info.base_model)
    if as_adapter and base_gguf is None:
        raise TaskTuneError(
            f"a GGUF LoRA adapter applies to its base model's GGUF file, and {info.base_model!r} is not one",
            "pass --merge to write the whole tuned model as one GGUF file",
        )
    if parity_rows:
        llamacpp.require()  # before the minutes of loading and generating: say now if llama.cpp is missing
    model, tok = _load_run_model(run, info)
    fmt = ChatFormat(tok)
    instruction = info.instruction if info.instruction_in_prompt else None
    examples = _parity_inputs(run, parity_rows)
    conversations = [fmt.with_instruction(ex.prompt_messages, instruction) for ex in examples]
    cap = info.max_new_tokens
    expected = _generations(model, fmt, conversations, cap)
    name = f"{info.task_name}-{info.method}"

    with atomic_dir(out) as tmp:
        if as_adapter:
            file = tmp / "adapter.gguf"
            gguf_export.write_lora(file, _adapter_state(model), model.base_model.model.config,
                                   alpha=_lora_alpha(model), base_gguf=base_gguf, name=name)  # fmt: skip
            quant = "f32"
            # llama.cpp takes the chat template from the base file; the run's (its trained system prompt) comes beside
            (tmp / TEMPLATE_FILE).write_text(fmt.template, encoding="utf-8")
        else:
            standalone = merge_weights(strategy, model)
            file = tmp / "model.gguf"
            gguf_export.write_model(file, standalone.state_dict(), standalone.config, tok, run / info.weights_dir,
                                    template=fmt.template, end_id=fmt.end_ids[-1], quant=quant,
                                    base_gguf=base_gguf, name=name)  # fmt: skip
        del model
        result = GgufResult(out=str(out), run=str(run), method=info.method, file=file.name, quant=quant,
                            size_bytes=file.stat().st_size, base_gguf=str(base_gguf) if as_adapter else None,
                            parity_rows=0, parity_agreement=None, prompt_agreement=None,
                            stops_at_turn_end=None)  # fmt: skip
        if conversations:
            model_file, lora = (base_gguf, file) if as_adapter else (file, None)
            template = fmt.template if as_adapter else None
            got, result.llamacpp_seconds = llamacpp.answer(model_file, conversations, cap, lora=lora, template=template)
            _judge(result, examples, fmt, expected, got, min_agreement or MIN_AGREEMENT[quant], out)
        if not as_adapter:
            _check_written(file, fmt, out)
        if ollama:
            (tmp / "Modelfile").write_text(modelfile(fmt, file.name, cap, base_gguf if as_adapter else None),
                                           encoding="utf-8")  # fmt: skip
        result.seconds = time.perf_counter() - t0
        _write_notes(tmp, result, info, instruction)
    return result


def _generations(model, fmt, conversations: list[list[dict]], cap: int) -> list[tuple[list[int], object]]:
    """(prompt ids, Generation) for each conversation: the greedy answers the exported model is held to."""
    from tasktune.generate import generate

    prompts = [fmt.encode_prompt(c) for c in conversations]
    return list(zip(prompts, generate(model, fmt, prompts, max_new_tokens=cap, desc="parity"), strict=True))


def _adapter_state(peft_model) -> dict:
    from peft import get_peft_model_state_dict

    config = peft_model.peft_config["default"]
    if getattr(config, "use_dora", False) or config.rank_pattern or config.alpha_pattern or config.modules_to_save:
        raise TaskTuneError(
            "this adapter (DoRA, per-module ranks or extra trained modules) has no GGUF LoRA form",
            "pass --merge to write the whole tuned model as one GGUF file",
        )
    return get_peft_model_state_dict(peft_model)


def _lora_alpha(peft_model) -> float:
    """llama.cpp scales a LoRA by alpha / rank; rsLoRA's alpha / sqrt(rank) is the same scale with alpha·sqrt(rank)."""
    config = peft_model.peft_config["default"]
    return config.lora_alpha * config.r**0.5 if config.use_rslora else float(config.lora_alpha)


def _check_written(file: Path, fmt, out: Path) -> None:
    """Read the file back: the chat template and end-of-turn token must be the run's (a runtime that does not
    recognise the end-of-turn token by name, as llama.cpp does, relies on these fields alone)."""
    from tasktune.gguf_export import read_turn_end

    meta = read_turn_end(file)
    if meta["chat_template"] != fmt.template or meta["eos_token_id"] != fmt.end_ids[-1]:
        kept = meta["chat_template"]
        template = "missing" if not kept else "the run's" if kept == fmt.template else "not the run's"
        raise TaskTuneError(
            f"{file.name} does not carry the run's chat turn: tokenizer.chat_template {template}, EOS id"
            f" {meta['eos_token_id']} where the run ends its answers with id {fmt.end_ids[-1]}."
            f" Nothing was written to {out}",
            "report this as a bug with the run folder; the run itself is unchanged",
        )


def _judge(result: GgufResult, examples, fmt, expected, got, min_agreement: float, out: Path) -> None:
    """Fill in the parity figures; raise (so that OUT stays as it was) when any of them falls short."""
    n = len(got)
    same_prompt = [list(a.prompt_tokens) == p for a, (p, _) in zip(got, expected, strict=True)]
    same = [a.text.strip() == g.text for a, (_, g) in zip(got, expected, strict=True)]
    ended = [a.stopped == "eog" for a, (_, g) in zip(got, expected, strict=True) if g.stopped]
    result.parity_rows = n
    result.prompt_agreement = sum(same_prompt) / n
    result.parity_agreement = sum(same) / n
    result.stops_at_turn_end = sum(ended) / len(ended) if ended else None
    result.disagreements = [
        {"input": ex.input_text, "run": g.text, "llama.cpp": a.text.strip()}
        for ex, a, (_, g), ok in zip(examples, got, expected, same, strict=True)
        if not ok
    ][:5]
    problems = []
    if not all(same_prompt):
        i = same_prompt.index(False)
        problems.append(
            f"llama.cpp built a different prompt from the file's chat template on {n - sum(same_prompt)} of {n}"
            f" rows (first: {fmt.tok.decode(got[i].prompt_tokens)!r} against the run's"
            f" {fmt.tok.decode(expected[i][0])!r})"
        )
    if ended and not all(ended):
        problems.append(f"{len(ended) - sum(ended)} of {len(ended)} answers did not stop at the end-of-turn token")
    if result.parity_agreement < min_agreement:
        d = result.disagreements[0]
        problems.append(
            f"greedy answers agree on {sum(same)} of {n} rows ({result.parity_agreement:.1%}, needed"
            f" {min_agreement:.0%}); first difference on {d['input']!r}: run {d['run']!r}, llama.cpp {d['llama.cpp']!r}"
        )
    if problems:
        raise TaskTuneError(
            "GGUF parity check failed in llama.cpp: " + "; ".join(problems) + f". Nothing was written to {out}",
            "report this as a bug with the run folder; the run itself is unchanged and still serves"
            " (--min-agreement lowers the answer bar where rounding is the cause)",
        )


def modelfile(fmt, file: str, cap: int, base_gguf: Path | None) -> str:
    """An Ollama Modelfile: the run's prompt as a Go template (rendered from the chat template with placeholders, so
    it is the run's prompt for a single-turn request), its end-of-turn text as the stop word, greedy decoding."""
    hole_s, hole_u = "\ue000SYSTEM\ue000", "\ue000PROMPT\ue000"

    def go(text: str) -> str:
        text = text.replace("{{", '{{ "{{" }}')
        return text.replace(hole_s, "{{ .System }}").replace(hole_u, "{{ .Prompt }}")

    with_system = fmt.prompt_text([{"role": "system", "content": hole_s}, {"role": "user", "content": hole_u}])
    bare = fmt.prompt_text([{"role": "user", "content": hole_u}])
    template = f"{{{{ if .System }}}}{go(with_system)}{{{{ else }}}}{go(bare)}{{{{ end }}}}"
    lines = [f"FROM {base_gguf}" if base_gguf else f"FROM ./{file}"]
    if base_gguf:
        lines.append(f"ADAPTER ./{file}")
    lines += [
        f'TEMPLATE """{template}"""',
        f"PARAMETER stop {json.dumps(fmt.end_text)}",
        "PARAMETER temperature 0",
        f"PARAMETER num_predict {cap}",
    ]
    return "\n".join(lines) + "\n"
