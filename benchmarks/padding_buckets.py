"""Does the width of training batches drift the speed of a long run? Free widths against widths rounded up to 32.

Each setting trains LoRA (r=16, all linear layers, bf16 autocast) on the bundled SmolLM2-135M for the same rows in
the same order, in its own process (per-shape caches live in the process), and prints tokens/s and peak RSS per
window of steps. Run by hand:

    python benchmarks/padding_buckets.py --steps 160 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def run_one(multiple: int, steps: int, batch_size: int, window: int, data_dir: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from tasktune.batching import collate, encode_rows
    from tasktune.data import read_examples
    from tasktune.loss import token_loss
    from tasktune.models import load_base, resolve_model
    from tasktune.render import ChatFormat

    torch.manual_seed(0)
    model, tok = load_base(resolve_model("smollm2-135m-instruct").path)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    rows, _ = encode_rows(ChatFormat(tok), read_examples(f"{data_dir}/train.jsonl")[: steps * batch_size], None, 1024)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    windows, t0, n_tok = [], time.perf_counter(), 0
    for k in range(steps):
        batch = collate(rows[k * batch_size : (k + 1) * batch_size], tok.pad_token_id, multiple)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_sum, n = token_loss(model, batch)
        (loss_sum / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_tok += int(batch["attention_mask"].sum())
        if (k + 1) % window == 0:
            dt = time.perf_counter() - t0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            windows.append({"step": k + 1, "tokens_per_s": n_tok / dt, "peak_rss_mb": rss})
            span = f"{k + 2 - window:>3}-{k + 1:<3}"
            print(f"  multiple={multiple:>2} steps {span} {n_tok / dt:6.0f} tok/s  {rss:6.0f} MB")
            t0, n_tok = time.perf_counter(), 0
    return {"multiple": multiple, "windows": windows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--multiples", default="1,32", help="width multiples to compare, comma-separated")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(run_one(args.child, args.steps, args.batch_size, args.window, args.data)))
        return

    from tasktune.examples.bug_reports import write_bug_reports

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_bug_reports(tmp, n=args.steps * args.batch_size, n_eval=10, n_test=10)
        for m in (int(x) for x in args.multiples.split(",")):
            cmd = [sys.executable, __file__, "--child", str(m), "--data", tmp]
            cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--window", str(args.window)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            print("\n".join(line for line in out.splitlines() if not line.startswith("RESULT")))
            results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:]))
    for r in results:
        first, last = r["windows"][0]["tokens_per_s"], r["windows"][-1]["tokens_per_s"]
        print(f"multiple={r['multiple']:>2}: first window {first:.0f} tok/s, last {last:.0f} ({last / first:.2f}x)")
    if args.json:
        from tasktune.fsio import atomic_write_json

        atomic_write_json(args.json, {"steps": args.steps, "batch_size": args.batch_size, "runs": results})


if __name__ == "__main__":
    main()
