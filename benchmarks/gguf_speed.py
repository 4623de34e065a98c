"""Generation speed of an exported GGUF file in llama.cpp against `tasktune predict` on the same inputs.

Both answer the run's first N eval inputs greedily, free (no schema), with the run's answer cap: tasktune with the
run's own model (LoRA merged, bf16 or fp32 as `predict` picks for this CPU), llama.cpp (node-llama-cpp's CPU build,
all cores) with the file that `tasktune export --format gguf` wrote. At batch 1 the requests go one after another;
at batch B, B at a time (tasktune: one padded batch; llama.cpp: B sequences of one context). Prints generated tokens/s
and the mean latency per request for each, the ratios, and how many answers are identical. llama.cpp's answers at
batch B are also compared with its own answers at batch 1: node-llama-cpp 3.21.1's parallel sequences were seen to mix
tokens between sequences, and a row where they differ is marked as no valid measurement.

    python benchmarks/gguf_speed.py RUN GGUF [--n 32] [--batch-sizes 1,16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tasktune import llamacpp
from tasktune.data import read_examples
from tasktune.predict import Predictor
from tasktune.rundir import RunInfo, load_run_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--n", type=int, default=32, help="eval inputs")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    info = RunInfo.load(args.run)
    examples = read_examples(load_run_task(args.run).data_path("eval"), require_answer=False)[: args.n]
    predictor = Predictor.from_run(args.run, constrain=False)
    conversations = [predictor.fmt.with_instruction(ex.prompt_messages, predictor.instruction) for ex in examples]
    predictor.predict(examples[:2], batch_size=2)  # warm-up: first-call allocations out of the timing
    rows, alone = [], None
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        t0 = time.perf_counter()
        preds = predictor.predict(examples, batch_size=b)
        ours = time.perf_counter() - t0
        answers, theirs = llamacpp.answer(args.gguf, conversations, info.max_new_tokens, batch=b)
        same = sum(a.text.strip() == p.output for a, p in zip(answers, preds, strict=True))
        alone = alone or (answers if b == 1 else llamacpp.answer(args.gguf, conversations, info.max_new_tokens)[0])
        consistent = sum(a.tokens == o.tokens for a, o in zip(answers, alone, strict=True))
        row = {
            "batch": b,
            "tasktune_s": ours,
            "tasktune_tok_s": sum(p.generated_tokens for p in preds) / ours,
            "tasktune_latency_s": sum(p.latency_s for p in preds) / len(preds),
            "llamacpp_s": theirs,
            "llamacpp_tok_s": sum(len(a.tokens) for a in answers) / theirs,
            "llamacpp_latency_s": sum(a.seconds for a in answers) / len(answers),
            "identical_answers": same,
            "llamacpp_same_as_batch_1": consistent,
            "n": len(examples),
        }
        rows.append(row)
        print(
            f"batch {b:>3}: tasktune {row['tasktune_tok_s']:7.1f} tok/s ({row['tasktune_latency_s']:.2f} s/request),"
            f" llama.cpp {row['llamacpp_tok_s']:7.1f} tok/s ({row['llamacpp_latency_s']:.2f} s/request):"
            f" {row['llamacpp_tok_s'] / row['tasktune_tok_s']:.2f}x the tokens/s; {same}/{len(examples)} identical"
        )
        if consistent < len(examples):
            print(
                f"  not a valid llama.cpp figure: only {consistent}/{len(examples)} of its answers at batch {b} are"
                " its answers at batch 1 (its parallel sequences mixed up their tokens)"
            )
    out = {"run": str(args.run), "gguf": str(args.gguf), "size_bytes": args.gguf.stat().st_size,
           "amx": "amx_tile" in Path("/proc/cpuinfo").read_text(), "rows": rows}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
