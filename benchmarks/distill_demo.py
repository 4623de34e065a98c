"""Distilling an instruction, measured: the pirate persona of `tasktune example pirate-support` on the default model.

    python benchmarks/distill_demo.py --out /tmp/distill-demo [--n 300] [--max-tokens 64] [--json FILE]

1. writes the example (raw customer messages, messages held out from everything, the task with the instruction);
2. `tasktune distill` labels the raw messages with the base model *given* the instruction (the teacher), keeping
   answers that end before --max-tokens and speak like a pirate (`--answer-pattern`, the example's RULE);
3. trains LoRA on the labelled rows, bare messages only (the task's `train:` settings);
4. on the held-out messages, compares the base model without the instruction, the base model with it (the teacher)
   and the student without it: rule compliance, agreement with the teacher (exact, ROUGE-L), answers that stop,
   prompt tokens; plus `tasktune eval RUN --agreement-with DATA` on the distilled test split.

Rerunning the same command resumes: the teacher's answers come from DATA's cache and a finished run is reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def side(preds, teacher=None) -> dict:
    from tasktune.examples.pirate_support import follows_rule
    from tasktune.metrics import normalise, rouge_l

    n = len(preds)
    out = {
        "n": n,
        "rule_compliance": sum(follows_rule(p.output) for p in preds) / n,
        "stopped_rate": sum(p.stopped for p in preds) / n,
        "prompt_tokens_mean": sum(p.prompt_tokens for p in preds) / n,
        "generated_tokens_mean": sum(p.generated_tokens for p in preds) / n,
    }
    if teacher is not None:
        pairs = list(zip(preds, teacher, strict=True))
        out["exact_agreement_with_teacher"] = sum(normalise(p.output) == normalise(t.output) for p, t in pairs) / n
        out["rouge_l_with_teacher"] = sum(rouge_l(p.output, t.output) for p, t in pairs) / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="new folder for the example, labelled data, run and figures")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="teacher and student base model")
    ap.add_argument("--n", type=int, default=300, help="raw messages to distil")
    ap.add_argument("--held-out", type=int, default=48, help="messages no step sees, for the three-way comparison")
    ap.add_argument("--max-tokens", type=int, default=64, help="answer cap for the teacher and every side")
    ap.add_argument("--json", help="write the figures here (default: OUT/distill-demo.json)")
    ap.add_argument("--train", default="{}", help="JSON of training overrides, e.g. '{\"max_steps\": 40}'")
    args = ap.parse_args()

    from tasktune.config import load_task, merge_overrides
    from tasktune.data import read_examples
    from tasktune.distill import DistillConfig, agreement, distill, format_agreement, format_summary
    from tasktune.examples.pirate_support import INSTRUCTION, RULE, follows_rule, write_pirate_support
    from tasktune.predict import Predictor
    from tasktune.train import train

    out = Path(args.out)
    t0 = time.perf_counter()
    example = write_pirate_support(out / "example", n=args.n, n_held_out=args.held_out)
    cfg = DistillConfig(teacher=args.model, max_tokens=args.max_tokens, concurrency=16, answer_pattern=RULE,
                        test_share=0.15, eval_share=0.05)  # fmt: skip
    t = time.perf_counter()
    result = distill(example / "task.yaml", example / "raw.jsonl", out / "data", cfg)
    label_s = time.perf_counter() - t
    print(format_summary(result))
    cache = [json.loads(line) for line in (out / "data" / "cache.jsonl").read_text().splitlines()]
    teacher_raw = {"answers": len(cache), "rule_compliance": sum(follows_rule(r["text"]) for r in cache) / len(cache),
                   "stopped_rate": sum(r["finish_reason"] == "stop" for r in cache) / len(cache)}  # fmt: skip

    task = load_task(out / "data" / "task.yaml")
    tcfg = merge_overrides(task.train, {"model": args.model} | json.loads(args.train))
    if (out / "run" / "run.json").is_file():  # a rerun after a failure later on: the cache and the run are reused
        from tasktune.rundir import read_metrics

        tr = {"reused_run": True, "last_metrics": read_metrics(out / "run")[-1:]}
    else:
        tr = train(task, tcfg, out / "run").to_dict()

    held = read_examples(example / "held_out.jsonl", require_answer=False)
    base = Predictor.from_base(args.model, instruction=None, output_kind="text", max_new_tokens=args.max_tokens)
    bare = base.predict(held)
    base.instruction = INSTRUCTION
    told = base.predict(held)
    student = Predictor.from_run(out / "run")
    student.max_new_tokens = args.max_tokens
    tuned = student.predict(held)
    report = agreement(out / "run", out / "data")
    print(format_agreement(report))

    figures = {
        "instruction": INSTRUCTION,
        "rule": RULE,
        "distill": result.to_dict() | {"seconds_labelling": label_s},
        "teacher_all_raw_answers": teacher_raw,
        "train": tr,
        "held_out": {
            "base_bare": side(bare, told),
            "base_with_instruction": side(told),
            "student_bare": side(tuned, told),
        },
        "agreement_on_distilled_test": {k: v for k, v in report.to_dict().items() if k != "examples"},
        "examples": [
            {"input": h.input_text, "base_bare": b.output, "teacher": t.output, "student": s.output}
            for h, b, t, s in list(zip(held, bare, told, tuned, strict=True))[:8]
        ],
        "seconds": time.perf_counter() - t0,
    }
    path = Path(args.json) if args.json else out / "distill-demo.json"
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    h = figures["held_out"]
    print("\n| | base, bare message | base + instruction (teacher) | student, bare message |\n|---|---|---|---|")
    for key, label, fmt in (("rule_compliance", "speaks like a pirate", "{:.0%}"),
                            ("rouge_l_with_teacher", "ROUGE-L with the teacher's answer", "{:.3f}"),
                            ("exact_agreement_with_teacher", "same answer as the teacher", "{:.0%}"),
                            ("stopped_rate", "answers that stop", "{:.0%}"),
                            ("prompt_tokens_mean", "prompt tokens / request", "{:.1f}"),
                            ("generated_tokens_mean", "generated tokens / request", "{:.1f}")):  # fmt: skip
        cells = [fmt.format(h[s][key]) if key in h[s] else "–" for s in ("base_bare", "base_with_instruction",
                                                                        "student_bare")]  # fmt: skip
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nfigures in {path}; {figures['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
