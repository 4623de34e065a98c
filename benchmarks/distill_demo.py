"""Distilling an instruction, measured: the pirate persona of `tasktune example pirate-support` on the default model.

    python benchmarks/distill_demo.py --out /tmp/distill-demo [--n 64] [--test-share 0.25] [--max-tokens 64]
                                      [--train '{"epochs": 3}'] [--json FILE]

1. writes the example's raw customer messages and its task (the instruction);
2. `tasktune distill` labels them with the base model *given* the instruction (the teacher), keeping answers that
   end before --max-tokens and speak like a pirate (`--answer-pattern`, the example's RULE); a quarter of the
   messages (--test-share) is held out from training;
3. trains LoRA on the kept training rows, bare messages only (the task's `train:` settings, plus --train);
4. on every held-out message (kept or dropped: the teacher's answer to each is in the cache), compares the base model
   without the instruction, the teacher, and the student without the instruction: rule compliance, agreement with
   the teacher (exact, ROUGE-L), answers that stop, prompt tokens.

Rerunning the same command resumes: the teacher's answers come from DATA's cache and a finished run is reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


class _Cached:
    """A teacher answer from the distill cache, shaped like a Prediction for `side`."""

    def __init__(self, rec: dict):
        self.output, self.stopped = rec["text"].strip(), rec["finish_reason"] == "stop"
        self.prompt_tokens, self.generated_tokens = rec["prompt_tokens"], rec["completion_tokens"]


def side(preds, teacher=None) -> dict:
    from tasktune.distill import agreement_scores
    from tasktune.examples.pirate_support import follows_rule

    n = len(preds)
    out = {
        "n": n,
        "rule_compliance": sum(follows_rule(p.output) for p in preds) / n,
        "stopped_rate": sum(p.stopped for p in preds) / n,
        "prompt_tokens_mean": sum(p.prompt_tokens for p in preds) / n,
        "generated_tokens_mean": sum(p.generated_tokens for p in preds) / n,
    }
    if teacher is not None:
        scores = agreement_scores([p.output for p in preds], [t.output for t in teacher], "text")
        out["exact_agreement_with_teacher"] = scores["exact_agreement"]
        out["rouge_l_with_teacher"] = scores["rouge_l_agreement"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="new folder for the example, labelled data, run and figures")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="teacher and student base model")
    ap.add_argument("--n", type=int, default=300, help="raw messages to distil")
    ap.add_argument("--test-share", type=float, default=0.25, help="share of the messages held out from training")
    ap.add_argument("--max-tokens", type=int, default=64, help="answer cap for the teacher and every side")
    ap.add_argument("--json", help="write the figures here (default: OUT/distill-demo.json)")
    ap.add_argument("--train", default="{}", help="JSON of training overrides, e.g. '{\"max_steps\": 40}'")
    args = ap.parse_args()

    from tasktune.config import load_task, merge_overrides
    from tasktune.data import read_examples
    from tasktune.distill import DistillConfig, _split, agreement_scores, distill, format_distill
    from tasktune.examples.pirate_support import INSTRUCTION, RULE, follows_rule, write_pirate_support
    from tasktune.predict import Predictor
    from tasktune.train import train

    out = Path(args.out)
    t0 = time.perf_counter()
    example = write_pirate_support(out / "example", n=args.n, n_held_out=0)
    cfg = DistillConfig(teacher=args.model, max_tokens=args.max_tokens, concurrency=16, answer_pattern=RULE,
                        test_share=args.test_share, eval_share=0.0)  # fmt: skip
    t = time.perf_counter()
    result = distill(example / "task.yaml", example / "raw.jsonl", out / "data", cfg)
    label_s = time.perf_counter() - t
    print(format_distill(result))
    by_line = {r["line"]: r for r in map(json.loads, (out / "data" / "cache.jsonl").read_text().splitlines())}
    cache = list(by_line.values())
    teacher_raw = {"answers": len(cache), "rule_compliance": sum(follows_rule(r["text"]) for r in cache) / len(cache),
                   "stopped_rate": sum(r["finish_reason"] == "stop" for r in cache) / len(cache),
                   "kept_rate": result.labelled / result.inputs}  # fmt: skip

    task = load_task(out / "data" / "task.yaml")
    tcfg = merge_overrides(task.train, {"model": args.model} | json.loads(args.train))
    if (out / "run" / "run.json").is_file():  # a rerun after a failure later on: the cache and the run are reused
        from tasktune.rundir import read_metrics

        tr = {"reused_run": True, "last_metrics": read_metrics(out / "run")[-1:]}
    else:
        tr = train(task, tcfg, out / "run").to_dict()

    # The held-out inputs: every input of the distilled test split, kept or dropped (the teacher's answer to each is
    # in the cache), so compliance is measured on all of them, not only on the answers the filter let through.
    raw = read_examples(example / "raw.jsonl", require_answer=False)
    held = [ex for ex, split in zip(raw, _split(len(raw), cfg), strict=True) if split == "test"]
    teacher = [_Cached(by_line[ex.line]) for ex in held]
    base = Predictor.from_base(args.model, instruction=None, output_kind="text", max_new_tokens=args.max_tokens)
    bare = base.predict(held)
    base.instruction = INSTRUCTION
    told_tokens = [len(base.prompt_ids(ex)) for ex in held]
    del base
    student = Predictor.from_run(out / "run")
    student.max_new_tokens = args.max_tokens
    tuned = student.predict(held)
    kept = {
        row["line"]: row["output"] for row in map(json.loads, (out / "data" / "test.jsonl").read_text().splitlines())
    }
    pairs = [(s.output, kept[ex.line]) for ex, s in zip(held, tuned, strict=True) if ex.line in kept]
    on_kept = agreement_scores([p[0] for p in pairs], [p[1] for p in pairs], "text") if pairs else None

    figures = {
        "instruction": INSTRUCTION,
        "rule": RULE,
        "distill": result.to_dict() | {"seconds_labelling": label_s},
        "teacher_all_answers": teacher_raw,
        "train": tr,
        "held_out": {
            "base_bare": side(bare, teacher),
            "base_with_instruction": side(teacher) | {"prompt_tokens_mean": sum(told_tokens) / len(told_tokens)},
            "student_bare": side(tuned, teacher),
        },
        "agreement_on_kept_test_answers": {"n": len(pairs)} | (on_kept or {}),
        "examples": [
            {"input": h.input_text, "base_bare": b.output, "teacher": t.output, "student": s.output}
            for h, b, t, s in list(zip(held, bare, teacher, tuned, strict=True))[:8]
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
