"""Where a LoRA training step's time goes: torch.profiler over a few steps, set up as tasktune trains.

Frozen Linear weights in bf16 and bf16 autocast (or all fp32 with `--precision fp32`), LoRA r=16 on all linear
layers, the output projection only at supervised positions, batches of 4 generated bug reports. Prints tokens/s
over 10 timed steps, then the profiler's table of operators by self CPU time over 5 more.

    python benchmarks/profile_step.py [--rows 160] [--batch-size 4] [--group-by-length] [--lora-top-layers N]
                                      [--system-prompt TEXT] [--precision bf16|fp32]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tasktune.batching import collate, encode_rows, shuffled_batches
from tasktune.config import TrainConfig
from tasktune.data import read_examples
from tasktune.examples.bug_reports import write_bug_reports
from tasktune.loss import token_loss
from tasktune.models import load_base, resolve_model
from tasktune.render import ChatFormat
from tasktune.strategies import get_strategy
from tasktune.train import frozen_linears_to_bf16, make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--group-by-length", action="store_true")
    ap.add_argument("--lora-top-layers", type=int, help="adapt only the last N layers (default: all)")
    ap.add_argument("--system-prompt", help="the rows' system turn (default: the chat template's own)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = ap.parse_args()
    bf16 = args.precision == "bf16"
    cfg = TrainConfig(
        method="lora", precision=args.precision, batch_size=args.batch_size, lora={"top_layers": args.lora_top_layers}
    )
    with tempfile.TemporaryDirectory() as d:
        write_bug_reports(d, n=args.rows, n_eval=8, n_test=8)
        model, tok = load_base(resolve_model(cfg.model).path)
        rows, _ = encode_rows(
            ChatFormat(tok, args.system_prompt), read_examples(f"{d}/train.jsonl"), None, cfg.max_length
        )
    if bf16:
        frozen_linears_to_bf16(model)  # as train.train does for a frozen base under bf16
    model = get_strategy("lora").prepare(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, cfg)  # AdamW at the lora default 2e-4, as train.fit builds it
    batches = shuffled_batches([len(r.input_ids) for r in rows], cfg.batch_size, random.Random(0), args.group_by_length)
    if len(batches) < 18:
        raise SystemExit(
            f"--rows {args.rows} makes {len(batches)} batches; 18 are needed (3 warm-up, 10 timed, 5 profiled):"
            " raise --rows"
        )
    model.train()

    def step(indices: list[int]) -> tuple[int, int]:
        batch = collate([rows[j] for j in indices], tok.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss_sum, n = token_loss(model, batch)
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum()), batch["input_ids"].numel()

    for b in batches[:3]:
        step(b)
    t0, real, padded = time.perf_counter(), 0, 0
    for b in batches[3:13]:
        r, p = step(b)
        real, padded = real + r, padded + p
    seconds = time.perf_counter() - t0
    print(f"10 steps: {seconds:.1f} s, {real / seconds:.0f} tokens/s, padding {1 - real / padded:.1%} of positions")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[13:18]:
            step(b)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


if __name__ == "__main__":
    main()
