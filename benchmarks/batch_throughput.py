"""Training tokens/s by batch size on a task's own rows: what the recipe's CPU batch rule rests on.

Short rows (a label task's ~60 tokens) leave a CPU's matrix units idle at small batches: the step costs a fixed
overhead plus time per token. This prints tokens/s and rows/s for each batch size, the way `tasktune train` runs
a step (LoRA r=16 with LoRA+, output projection at supervised positions only), after 2 warm-up steps.

    python benchmarks/batch_throughput.py TASK.yaml [--batch-sizes 4,8,16,32] [--steps 8] [--top-layers 15]
        [--method lora|full] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch


def main() -> None:
    from tasktune.batching import collate, encode_rows
    from tasktune.config import DEFAULT_MODEL, TrainConfig, load_task
    from tasktune.data import read_examples
    from tasktune.loss import token_loss
    from tasktune.models import load_base, resolve_model
    from tasktune.render import ChatFormat
    from tasktune.runtime import make_accelerator
    from tasktune.strategies import get_strategy
    from tasktune.train import frozen_linears_to_bf16, make_optimizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("--batch-sizes", default="4,8,16,32")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--top-layers", type=int)
    ap.add_argument("--method", default="lora", choices=["lora", "full"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()

    task = load_task(args.task)
    model, tok = load_base(resolve_model(DEFAULT_MODEL).path)
    rows, _ = encode_rows(ChatFormat(tok), read_examples(task.data_path("train")), None, 1024)
    cfg = TrainConfig(method=args.method, learning_rate=5e-4, lora={"plus_lr_ratio": 16, "top_layers": args.top_layers})
    if args.method == "lora" and args.precision == "bf16":
        frozen_linears_to_bf16(model)
    model = get_strategy(args.method).prepare(model, cfg)
    accelerator = make_accelerator(args.precision)
    optimizer = make_optimizer(model, cfg)
    model.train()
    mean_len = statistics.fmean(len(r.input_ids) for r in rows)
    print(f"{args.task}: {len(rows)} rows, {mean_len:.0f} tokens each on average; {args.method}"
          f" top_layers={args.top_layers}, {args.precision}, {torch.get_num_threads()} threads")  # fmt: skip
    rng = random.Random(0)
    for bs in map(int, args.batch_sizes.split(",")):
        tokens, seconds = 0, 0.0
        for step in range(args.steps + 2):
            batch = collate(rng.sample(rows, bs), tok.pad_token_id)
            t0 = time.perf_counter()
            with accelerator.autocast():
                loss, n = token_loss(model, batch)
                (loss / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 2:  # the first steps build kernels for the new shapes
                seconds += time.perf_counter() - t0
                tokens += int(batch["attention_mask"].sum())
        print(f"batch {bs:3d}: {tokens / seconds:6.0f} tokens/s, {bs * args.steps / seconds:6.2f} rows/s,"
              f" {seconds / args.steps:5.2f} s/step")  # fmt: skip


if __name__ == "__main__":
    main()
