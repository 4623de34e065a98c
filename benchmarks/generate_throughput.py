"""Generation throughput: tasktune's batched greedy generation against plain `generate()` called per example.

Both paths run the same model object (the bundled SmolLM2-135M-Instruct, with bf16 or fp32 weights as `tasktune
eval` picks them for this CPU, or as `--precision` says) on the same prompts (generated bug reports, bare input),
greedy, with the same stop tokens and answer cap.
Prints generated tokens/s and mean latency per request for tasktune at each batch size and for the plain loop, and
the ratios.

    python benchmarks/generate_throughput.py [--n 32] [--batch-sizes 1,8,32] [--max-new-tokens 64] [--json out.json]
                                             [--precision auto|bf16|fp32]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def plain_generate(model, fmt, prompts: list[list[int]], max_new_tokens: int) -> tuple[int, list[float]]:
    """What a user writes without tasktune: one `generate()` call per example."""
    tokens, latencies = 0, []
    for p in prompts:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=fmt.stop_ids,
                pad_token_id=fmt.tok.pad_token_id,
            )  # fmt: skip
        latencies.append(time.perf_counter() - t0)
        tokens += out.shape[1] - len(p)
    return tokens, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="prompts")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    args = ap.parse_args()

    from tasktune.data import read_examples
    from tasktune.examples.bug_reports import write_bug_reports
    from tasktune.generate import generate
    from tasktune.models import load_base, resolve_model
    from tasktune.render import ChatFormat
    from tasktune.runtime import cast_for_inference

    model, tok = load_base(resolve_model("smollm2-135m-instruct").path)
    precision = cast_for_inference(model, args.precision)  # as tasktune eval does
    model.eval()
    fmt = ChatFormat(tok)
    with tempfile.TemporaryDirectory() as tmp:
        write_bug_reports(tmp, n=8, n_eval=4, n_test=args.n)
        prompts = [fmt.encode_prompt(ex.messages[:-1]) for ex in read_examples(f"{tmp}/test.jsonl")]
    generate(model, fmt, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up
    results = {}
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        t0 = time.perf_counter()
        gens = generate(model, fmt, prompts, max_new_tokens=args.max_new_tokens, batch_size=bs, desc=f"batch {bs}")
        seconds = time.perf_counter() - t0
        tokens = sum(g.generated_tokens for g in gens)
        results[f"tasktune_batch_{bs}"] = {"tokens_per_s": tokens / seconds, "generated_tokens": tokens,
                                          "latency_ms_mean": 1000 * sum(g.latency_s for g in gens) / len(gens),
                                          "seconds": seconds}  # fmt: skip
    t0 = time.perf_counter()
    tokens, latencies = plain_generate(model, fmt, prompts, args.max_new_tokens)
    seconds = time.perf_counter() - t0
    results["plain_generate_per_example"] = {"tokens_per_s": tokens / seconds, "generated_tokens": tokens,
                                             "latency_ms_mean": 1000 * sum(latencies) / len(latencies),
                                             "seconds": seconds}  # fmt: skip

    plain = results["plain_generate_per_example"]["tokens_per_s"]
    print(f"{len(prompts)} prompts, answers capped at {args.max_new_tokens} tokens, {precision},"
          f" {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'path':<28} {'tok/s':>7} {'latency ms':>10} {'vs plain':>8}")
    for name, r in results.items():
        r["ratio_vs_plain"] = r["tokens_per_s"] / plain
        print(f"{name:<28} {r['tokens_per_s']:7.1f} {r['latency_ms_mean']:10.0f} {r['ratio_vs_plain']:7.2f}x")
    if args.json:
        from tasktune.fsio import atomic_write_json

        atomic_write_json(
            args.json,
            {"n": len(prompts), "max_new_tokens": args.max_new_tokens, "precision": precision, "results": results},
        )


if __name__ == "__main__":
    main()
