"""Training throughput: tasktune against TRL's SFTTrainer on the same model, data, adapter and token budget.

Every setting trains the bundled SmolLM2-135M-Instruct for one epoch over the same generated bug-report rows (bare
input -> JSON, loss on the answer only), batch size 4, bf16 autocast, in a fresh process of its own so that peak
RSS is its own. Settings run alternately (tasktune, TRL with its default gradient checkpointing, TRL without),
`--repeats` times; medians are reported. After training, every model is scored with the same eval-loss function on
the same held-out rows, so the quality check is apples to apples. The machine's bf16 matmul peak is measured in the
same run, and tasktune's model FLOP/s (4 x parameters per token for LoRA, 6 x for full) is given as a share of it.

    pip install -e '.[bench]'
    python benchmarks/train_throughput.py [--method lora|full] [--rows 160] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
SETTINGS = ("tasktune", "trl_default", "trl_no_checkpointing")
EXTRA_SETTINGS = ("tasktune_grouped",)  # tasktune with --group-by-length: on request (--settings)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _token_counts(data_dir: str, rows: list) -> tuple[int, int]:
    """Real (unpadded) tokens and supervised tokens of the training rows, as tasktune renders them."""
    from tasktune.batching import encode_rows
    from tasktune.models import load_tokenizer
    from tasktune.render import ChatFormat

    tok = load_tokenizer(MODEL)
    enc, _ = encode_rows(ChatFormat(tok), rows, None, 1024)
    return sum(len(e.input_ids) for e in enc), sum(sum(1 for x in e.labels[1:] if x != -100) for e in enc)


def _eval_loss(model, tok, data_dir: str) -> float:
    from accelerate import Accelerator

    from tasktune.batching import encode_rows
    from tasktune.data import read_examples
    from tasktune.loss import evaluate_loss
    from tasktune.render import ChatFormat

    rows, _ = encode_rows(ChatFormat(tok), read_examples(f"{data_dir}/eval.jsonl"), None, 1024)
    return evaluate_loss(model, rows, tok.pad_token_id, 8, Accelerator(mixed_precision="bf16", cpu=True))


def run_tasktune(data_dir: str, method: str, lr: float, batch_size: int, seed: int, grouped: bool = False) -> dict:
    from tasktune.config import TrainConfig, load_task
    from tasktune.train import train

    task = load_task(f"{data_dir}/task.yaml")
    cfg = TrainConfig(
        model=MODEL, method=method, learning_rate=lr, epochs=1, batch_size=batch_size, eval_every=10**9,
        precision="bf16", log_every=10**9, seed=seed, group_by_length=grouped,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        result = train(task, cfg, Path(out) / "run")
    return {"train_seconds": result.seconds - result.eval_seconds, "train_loss": result.train_loss,
            "eval_loss": result.eval_loss}  # fmt: skip


def run_trl(data_dir: str, method: str, lr: float, batch_size: int, checkpointing: bool, seed: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tasktune.data import read_examples
    from tasktune.models import load_base, resolve_model

    model, tok = load_base(resolve_model(MODEL).path)
    rows = [
        {"prompt": ex.messages[:-1], "completion": ex.messages[-1:]} for ex in read_examples(f"{data_dir}/train.jsonl")
    ]
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch_size, num_train_epochs=1,
        learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0, bf16=True,
        use_cpu=True, gradient_checkpointing=checkpointing, max_length=1024, logging_steps=10**9,
        save_strategy="no", report_to="none", seed=seed, data_seed=seed, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    peft_config = None
    if method == "lora":
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft_config
    )
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    eval_loss = _eval_loss(trainer.model, tok, data_dir)
    return {"train_seconds": seconds, "train_loss": out.training_loss, "eval_loss": eval_loss}


def child(setting: str, data_dir: str, method: str, lr: float, batch_size: int, seed: int) -> dict:
    if setting.startswith("tasktune"):
        r = run_tasktune(data_dir, method, lr, batch_size, seed, grouped=setting == "tasktune_grouped")
    else:
        r = run_trl(data_dir, method, lr, batch_size, setting == "trl_default", seed)
    return r | {"peak_rss_mb": _peak_rss_mb()}


def bf16_matmul_flops(shapes: list[tuple[int, int, int]], seconds: float = 1.0) -> dict[str, float]:
    """FLOP/s of bf16 matmuls (m x k) @ (k x n) on this machine, with torch's own threads, one figure per shape."""
    import torch

    out = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
        a @ b  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        out[f"{m}x{k}x{n}"] = 2 * m * k * n * reps / (time.perf_counter() - t0)
    return out


# Square matmuls give the machine's peak; the model's own shapes (a batch of ~1,000 tokens through SmolLM2-135M's
# 576-wide attention and 1536-wide MLP projections) give the ceiling this model can reach on it.
PEAK_SHAPES = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096)]
MODEL_SHAPES = [(1024, 576, 576), (1024, 576, 1536), (1024, 1536, 576)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=("lora", "full"), default="lora")
    ap.add_argument("--rows", type=int, default=160, help="training rows (one epoch): the token budget")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, help="default: 2e-4 for LoRA, 5e-5 for full")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per setting; repeat r uses seed r (adapter init and row order) for every tool, so the"
        " spread of the eval loss over repeats is the seed noise the tools are compared against",
    )
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"also: {', '.join(EXTRA_SETTINGS)}")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    lr = args.lr or (2e-4 if args.method == "lora" else 5e-5)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.data, args.method, lr, args.batch_size, args.seed)))
        return

    import torch

    from tasktune.data import read_examples
    from tasktune.examples.bug_reports import write_bug_reports
    from tasktune.models import load_base, resolve_model

    settings = args.settings.split(",")
    if unknown := [s for s in settings if s not in SETTINGS + EXTRA_SETTINGS]:
        sys.exit(f"--settings: unknown {', '.join(unknown)}; choose from {', '.join(SETTINGS + EXTRA_SETTINGS)}")
    runs: dict[str, list[dict]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as data_dir:
        write_bug_reports(data_dir, n=args.rows, n_eval=64, n_test=8)
        total_tokens, supervised_tokens = _token_counts(data_dir, read_examples(f"{data_dir}/train.jsonl"))
        n_params = sum(p.numel() for p in load_base(resolve_model(MODEL).path)[0].parameters())
        matmul = bf16_matmul_flops(PEAK_SHAPES + MODEL_SHAPES)
        peak = max(matmul[f"{m}x{k}x{n}"] for m, k, n in PEAK_SHAPES)
        model_peak = statistics.mean(matmul[f"{m}x{k}x{n}"] for m, k, n in MODEL_SHAPES)
        print(f"{args.rows} rows, {total_tokens} tokens ({supervised_tokens} supervised); {n_params / 1e6:.0f}M "
              f"parameters; {torch.get_num_threads()} threads; bf16 matmul GFLOP/s: "
              + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in matmul.items()))  # fmt: skip
        for rep in range(args.repeats):
            for s in settings:
                cmd = [sys.executable, __file__, "--child", s, "--data", data_dir, "--method", args.method]
                cmd += ["--batch-size", str(args.batch_size), "--lr", str(lr), "--seed", str(rep)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{s} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
                r = json.loads(line[7:])
                r["tokens_per_s"] = total_tokens / r["train_seconds"]
                r["supervised_tokens_per_s"] = supervised_tokens / r["train_seconds"]
                runs[s].append(r)
                print(f"  [seed {rep}] {s:<22} {r['tokens_per_s']:6.0f} tok/s "
                      f"({r['supervised_tokens_per_s']:5.0f} supervised)  peak RSS {r['peak_rss_mb']:6.0f} MB  "
                      f"train loss {r['train_loss']:.4f}  eval loss {r['eval_loss']:.4f}", flush=True)  # fmt: skip

    flops_per_token = (4 if args.method == "lora" else 6) * n_params
    summary = {}
    for s, rs in runs.items():
        summary[s] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
    report = {"method": args.method, "rows": args.rows, "batch_size": args.batch_size, "learning_rate": lr,
              "total_tokens": total_tokens, "supervised_tokens": supervised_tokens, "parameters": n_params,
              "bf16_matmul_peak_flops": peak, "bf16_matmul_model_shapes_flops": model_peak,
              "bf16_matmul_flops_by_shape": matmul, "settings": summary, "runs": runs}  # fmt: skip
    print(f"\n{'setting':<22} {'tok/s':>7} {'sup tok/s':>9} {'peak RSS MB':>11} {'eval loss':>9}  eval loss range")
    for s, m in summary.items():
        losses = [r["eval_loss"] for r in runs[s]]
        m["eval_loss_min"], m["eval_loss_max"] = min(losses), max(losses)
        print(f"{s:<22} {m['tokens_per_s']:7.0f} {m['supervised_tokens_per_s']:9.0f} {m['peak_rss_mb']:11.0f} "
              f"{m['eval_loss']:9.4f}  {min(losses):.4f}-{max(losses):.4f} over {len(losses)} seed(s)")  # fmt: skip
    if "tasktune" in summary:
        ours = summary["tasktune"]
        achieved = ours["tokens_per_s"] * flops_per_token
        report["mfu_bf16"] = achieved / peak
        report["mfu_bf16_model_shapes"] = achieved / model_peak
        print(f"tasktune model FLOP/s: {achieved / 1e9:.0f} G = {report['mfu_bf16']:.0%} of the measured bf16 matmul "
              f"peak ({peak / 1e9:.0f} G), {report['mfu_bf16_model_shapes']:.0%} of the bf16 matmul rate at the "
              f"model's own shapes ({model_peak / 1e9:.0f} G)")  # fmt: skip
        trl = {s: m for s, m in summary.items() if s.startswith("trl")}
        if "trl_default" in trl:
            report["ratio_vs_trl_default"] = ours["tokens_per_s"] / trl["trl_default"]["tokens_per_s"]
            print(f"tasktune / TRL default: {report['ratio_vs_trl_default']:.2f}x")
        if trl:
            fastest = max(trl.values(), key=lambda m: m["tokens_per_s"])
            report["ratio_vs_trl_fastest"] = ours["tokens_per_s"] / fastest["tokens_per_s"]
            report["eval_loss_vs_trl_fastest"] = ours["eval_loss"] / fastest["eval_loss"] - 1
            print(f"tasktune / TRL fastest: {report['ratio_vs_trl_fastest']:.2f}x; eval loss "
                  f"{report['eval_loss_vs_trl_fastest']:+.1%} against it")  # fmt: skip
    if args.json:
        from tasktune.fsio import atomic_write_json

        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
