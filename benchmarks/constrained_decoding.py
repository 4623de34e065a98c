"""Constrained decoding engines on this machine: schema compile time and time per generated token.

Compares llguidance (tasktune's engine, constrain.py; also with its closer on, which near the answer cap checks at each
token that the answer can still finish, so its cost shows at its worst: every step is within the cap's horizon
unless --max-new-tokens exceeds it) with xgrammar, both through transformers' LogitsProcessor
interface on the same prompts, against unconstrained greedy decoding measured in the same run. Per schema: the
compile time (median of 5 cold compiles); per batch size: milliseconds per decoding step (the whole batch: forward,
mask and token choice), the median over every step of `--repeats` alternating rounds, timed between consecutive calls
of a clock placed after the engine in the logits-processor list (so the prompt's prefill is not counted), and the
ratio to free decoding. Batch size B decodes the first min(--rows, B * --batches) prompts. xgrammar is optional:
install it beside the project (`pip install --no-deps --target /tmp/xg xgrammar apache-tvm-ffi`, then
PYTHONPATH=/tmp/xg) to compare.

    python benchmarks/constrained_decoding.py TASK.yaml [--schema schema.json ...] [--batch-sizes 1,16]
        [--rows 16] [--batches 4] [--max-new-tokens 96] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def main() -> None:
    from transformers import LogitsProcessor, LogitsProcessorList

    from tasktune.config import DEFAULT_MODEL, load_task
    from tasktune.constrain import ConstrainedLogits, Constraint, task_schema, vocab_size
    from tasktune.data import read_examples
    from tasktune.generate import pad_left
    from tasktune.models import load_base, resolve_model
    from tasktune.render import ChatFormat

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", help="a JSON task: its test inputs are the prompts, its schema (or inferred) the grammar")
    ap.add_argument("--schema", action="append", default=[], help="more schema files to time the compile of")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--rows", type=int, default=16, help="prompts at most")
    ap.add_argument("--batches", type=int, default=4, help="batches per batch size (batch 1 needs fewer prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    task = load_task(args.task)
    schema = task_schema(task)[0] or {}
    model, tok = load_base(resolve_model(DEFAULT_MODEL).path)
    model.eval()
    fmt = ChatFormat(tok)
    vocab = vocab_size(model)
    examples = read_examples(task.data_path("test") or task.data_path("train"))[: args.rows]
    prompts = [fmt.encode_prompt(fmt.with_instruction(ex.prompt_messages, task.instruction)) for ex in examples]
    schemas = {"task": schema} | {Path(p).name: json.loads(Path(p).read_text()) for p in args.schema}

    engines = {"llguidance": None}
    try:
        import xgrammar as xgr
        import xgrammar.contrib.hf as xgr_hf

        t0 = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab, stop_token_ids=fmt.stop_ids)
        engines["xgrammar"] = time.perf_counter() - t0
    except ImportError:
        print("xgrammar is not installed: llguidance only")
    t0 = time.perf_counter()
    constraint = Constraint(tok, fmt.stop_ids, vocab, schema)
    engines["llguidance"] = time.perf_counter() - t0
    prep = ", ".join(f"{k} {v:.2f} s" for k, v in engines.items())
    print(f"tokenizer preparation (once per model): {prep}", flush=True)

    # --- compile time ---
    import llguidance

    def llg_compile(s):
        return llguidance.LLMatcher(constraint.tok, llguidance.LLMatcher.grammar_from_json_schema(s, overrides=OPTIONS))

    def xgr_compile(s):
        compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        return compiler.compile_json_schema(json.dumps(s), any_whitespace=False, separators=(", ", ": "))

    compilers = {"llguidance": llg_compile} | ({"xgrammar": xgr_compile} if "xgrammar" in engines else {})
    print("\nschema compile, median of 5 (ms):")
    for name, s in schemas.items():
        cells = []
        for engine, fn in compilers.items():
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn(s)
                times.append(time.perf_counter() - t0)
            cells.append(f"{engine} {1000 * statistics.median(times):.1f}")
        print(f"  {name}: " + ", ".join(cells), flush=True)

    # --- time per step ---
    def processors(engine: str, n: int):
        if engine == "free":
            return LogitsProcessorList()
        if engine in ("llguidance", "llg+closer"):
            closing = (
                {"budgets": [args.max_new_tokens] * n, "closer": constraint.closer} if engine != "llguidance" else {}
            )
            matchers = [constraint.matcher() for _ in range(n)]
            return LogitsProcessorList([ConstrainedLogits(matchers, vocab, fmt.stop_ids, **closing)])
        return LogitsProcessorList([xgr_hf.LogitsProcessor(xgr_compile(schema))])

    class StepClock(LogitsProcessor):
        """Last in the list: the time between two calls is one whole decoding step (prefill comes before the first)."""

        def __init__(self):
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    @torch.inference_mode()
    def run(engine: str, batch: int) -> tuple[list[float], int, int]:
        step_ms, valid, n = [], 0, min(len(prompts), batch * args.batches)
        for start in range(0, n, batch):
            part = prompts[start : start + batch]
            ids, mask = pad_left(part, tok.pad_token_id)
            clock = StepClock()
            procs = processors(engine, len(part))
            procs.append(clock)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                 do_sample=False, eos_token_id=fmt.stop_ids, pad_token_id=tok.pad_token_id,
                                 logits_processor=procs)  # fmt: skip
            step_ms += [1000 * (b - a) for a, b in zip(clock.times, clock.times[1:], strict=False)]
            for row in out[:, ids.shape[1] :].tolist():
                cut = next((i for i, t in enumerate(row) if t in fmt.stop_ids), len(row))
                try:
                    json.loads(tok.decode(row[:cut], skip_special_tokens=True))
                    valid += 1
                except json.JSONDecodeError:
                    pass
        return step_ms, valid, n

    print(f"\ntime per decoding step, prompts of {task.name} (base model + instruction), max {args.max_new_tokens} new"
          f" tokens, median over the steps of {args.repeats} alternating rounds:")  # fmt: skip
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        names = ["free", *compilers, "llg+closer"]
        steps = {n: [] for n in names}
        valid, n_prompts = {}, 0
        for _ in range(args.repeats):
            for n in names:
                ms, ok, n_prompts = run(n, batch)
                steps[n] += ms
                valid[n] = ok
        free = statistics.median(steps["free"])
        for n in names:
            ms = statistics.median(steps[n])
            print(f"  batch {batch:>2} {n:>10}: {ms:7.1f} ms/step  ({ms / free:.3f}x free)  {len(steps[n])} steps,"
                  f" valid JSON {valid[n]}/{n_prompts}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
