"""The `tasktune` command: parse flags, call the library function, print. No logic lives here.

tasktune check   DATA [DATA ...] | --task task.yaml  check a data set before training (exit 1 on errors)
tasktune train   --task task.yaml --out RUN        fine-tune (or --data train.jsonl instead of --task)
tasktune predict RUN --input "raw text"            answer raw inputs with a tuned run
tasktune compare TASK.yaml --out DIR               instruction, few-shot, prompt, prefix, lora, full side by side
tasktune tune    --task T.yaml --out DIR --trials N --time-budget 60m   search the training settings (resumable)
tasktune serve   RUN [RUN ...] [--port 8000]       OpenAI-compatible API; LoRA runs share one base model
tasktune export  RUN --out DIR [--merge]           standalone Hugging Face model folder, checked for parity
                 [--format gguf --quant q8_0 --ollama]  GGUF file, checked in llama.cpp
tasktune diagnose RUN                              what went wrong in a run (also runs at the end of train)
tasktune distill --task T --inputs raw.jsonl --teacher M --out DATA   label inputs with an instructed teacher
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from collections.abc import Collection
from pathlib import Path

from pydantic import BaseModel

from tasktune.config import TaskConfig, TrainConfig, load_task, merge_overrides
from tasktune.data import read_examples
from tasktune.errors import TaskTuneError, TrainingStopped
from tasktune.runtime import quiet_libraries


def _pairs(text: str) -> dict[str, float]:
    """NAME=VALUE,NAME=VALUE as a dict (values as numbers)."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not NAME=NUMBER (e.g. prompt=3e-2,lora=2e-4)") from None
    return out


def _default_text(field) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


# --- flags generated from the config tree (one source for YAML keys, flags and help) --------------------------------
def _flag_type(annotation):
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return str, list(typing.get_args(annotation))
    if origin is list:  # --report-to tensorboard,mlflow
        return (lambda s: [x.strip() for x in s.split(",") if x.strip()]), None
    if origin is dict:  # --learning-rates prompt=3e-2,lora=2e-4
        return _pairs, None
    if origin in (typing.Union, types.UnionType):
        if any(typing.get_origin(a) is list for a in args):
            return (lambda s: s.split(",") if "," in s else s), None
        return _flag_type(args[0])
    return annotation, None


def add_config_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "", skip: Collection[str] = ()
) -> None:
    """A flag per config key; `skip`: keys another config of the same command owns (tune's time_budget)."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            add_config_flags(parser, ann, prefix=f"{prefix}{name}.", skip=skip)
            continue
        key = f"{prefix}{name}"
        if key in skip:
            continue
        flag = "--" + key.replace(".", "-").replace("_", "-")
        help_text = f"{field.description} (default: {_default_text(field)})".replace("%", "%%")  # argparse formats help
        if ann is bool:
            parser.add_argument(
                flag, dest=key, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
            continue
        typ, choices = _flag_type(ann)
        parser.add_argument(
            flag,
            dest=key,
            type=typ,
            choices=choices,
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=key.split(".")[-1].upper(),
        )


def config_settings(args: argparse.Namespace, model: type[BaseModel]) -> dict:
    """The keys of `model` given on the command line (flags from `add_config_flags` are absent unless given)."""
    return {k: getattr(args, k) for k in model.model_fields if hasattr(args, k)}


def overrides_from(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in _train_keys()}


def _train_keys() -> set[str]:
    keys = set()
    for name, field in TrainConfig.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= {f"{name}.{sub}" for sub in ann.model_fields}
        else:
            keys.add(name)
    return keys


# --- commands -----------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from tasktune.distributed import launch_local, launched, without_processes_flag
    from tasktune.train import resume_run, train

    if args.processes > 1:
        if launched():
            raise TaskTuneError(
                "--processes starts its own launcher, but this process was already started by one",
                "set the process count in torchrun / accelerate launch and drop --processes",
            )
        return launch_local(without_processes_flag(args.argv), args.processes)
    trust = {"allow_pickle": args.allow_pickle, "trust_remote_code": args.trust_remote_code}
    if args.resume:
        if args.task or args.data or args.out:
            raise TaskTuneError(
                "--resume continues a run with its own task, data and folder", "drop --task/--data/--out"
            )
        result = resume_run(args.resume, overrides_from(args), **trust)
    else:
        if args.task:
            task = load_task(args.task)
        elif args.data:
            task = TaskConfig()
        else:
            raise TaskTuneError("train needs --task TASK.yaml or --data train.jsonl", "pass one of them")
        if not args.out:
            raise TaskTuneError("train needs --out RUN (the new run folder)", "pass --out runs/NAME")
        if args.data:
            task.data.train = str(Path(args.data).resolve())
        cfg = merge_overrides(task.train, overrides_from(args))
        result = train(task, cfg, args.out, force=args.force, **trust)
    if os.environ.get("RANK", "0") != "0":
        return 0  # the main process reports
    print(
        f"tasktune: trained {result.steps} steps in {result.seconds:.0f}s"
        f" ({result.tokens_per_s:.0f} tokens/s); final train loss {result.train_loss:.4f}"
        + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
    )
    print(f'tasktune: run saved to {result.run_dir}  (try: tasktune predict {result.run_dir} --input "...")')
    if not args.no_diagnose:
        try:
            _diagnose_and_save(result.run_dir)
        except TaskTuneError as e:  # the run itself is saved and fine: say so, and how to diagnose it later
            print(f"tasktune: warning: the diagnosis failed: {e}\n  then run: tasktune diagnose {result.run_dir}",
                  file=sys.stderr)  # fmt: skip
    return 0


def _diagnose_and_save(run, cfg=None, json_path: str | None = None):
    from tasktune.diagnose import diagnose, format_diagnosis, save_diagnosis
    from tasktune.fsio import atomic_write_json

    d = diagnose(run, cfg)
    print(format_diagnosis(d))
    try:
        saved = save_diagnosis(d, run)
    except TaskTuneError as e:  # a read-only run folder must not cost the result: --json still gets it
        print(f"tasktune diagnose: warning: not saved in the run folder: {e}", file=sys.stderr)
        saved = []
    if json_path:
        atomic_write_json(json_path, d.to_dict())
        saved.append(Path(json_path))
    print(f"tasktune diagnose: full result in {', '.join(map(str, saved))}")
    return d


def cmd_diagnose(args: argparse.Namespace) -> int:
    from tasktune.config import build
    from tasktune.diagnose import DiagnoseConfig

    cfg = build(DiagnoseConfig, config_settings(args, DiagnoseConfig), "command line")
    return 1 if _diagnose_and_save(args.run, cfg, args.json).errors else 0


def cmd_check(args: argparse.Namespace) -> int:
    from tasktune import check
    from tasktune.fsio import atomic_write_json
    from tasktune.models import load_tokenizer

    task = load_task(args.task) if args.task else None
    if args.data:
        splits = check.files_as_splits(args.data)
    elif task is not None:
        splits = check.task_splits(task)
        if not splits:
            raise TaskTuneError(f"the task {args.task} names no data files", "set data.train in it, or pass DATA files")
    else:
        raise TaskTuneError("check needs DATA files or --task TASK.yaml", "pass one of them")
    base = task.train if task is not None else TrainConfig()
    cfg = check.CheckConfig(
        model=args.model or base.model,
        max_length=args.max_length or base.max_length,
        method=args.method or base.method,
        instruction=task.instruction if task is not None and task.train_with_instruction else None,
        system_prompt=base.system_prompt,
    )
    if args.fix:
        check.check_fix_target(splits, args.fix)  # bad usage fails before the scan, not after
    report = check.check_dataset(splits, task=task, cfg=cfg)
    print(report.format(details=args.details))
    if args.show:
        first = next(iter(splits.values()))
        color = sys.stdout.isatty()
        print(f"\nmask preview: the first {args.show} row(s) of {first} as trained; supervised tokens "
              + ("in green" if color else "in [[...]]"))  # fmt: skip
        tokenizer = load_tokenizer(cfg.model)
        shown = check.preview_rows(first, tokenizer, args.show, instruction=cfg.instruction,
                                   system_prompt=cfg.system_prompt, color=color)  # fmt: skip
        print(shown)
    if args.json:
        atomic_write_json(args.json, report.to_dict())
        print(f"tasktune: report written to {args.json}")
    if args.fix:
        kept = check.write_fixed(report, splits, args.fix, task=task)
        dropped = sum(len(d) for d in report.drops.values())
        print(f"tasktune: cleaned copies in {args.fix} ({', '.join(f'{k} {v:,} rows' for k, v in kept.items())}); "
              f"{dropped:,} dropped row(s) listed in {Path(args.fix) / 'dropped.jsonl'}")  # fmt: skip
    return 1 if report.errors else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tasktune.fsio import write_jsonl
    from tasktune.predict import Predictor

    if not args.input and not args.file:
        raise TaskTuneError("predict needs --input TEXT or --file inputs.jsonl", "pass one of them")
    if args.out:
        out = Path(args.out)
        if not out.parent.exists() or not out.parent.is_dir():
            raise TaskTuneError(f"cannot write {out}: folder {out.parent} does not exist", "create it first")
    examples = read_examples(args.file, require_answer=False) if args.file else None
    predictor = Predictor.from_run(args.run, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                                   constrain=not args.no_constrain)  # fmt: skip
    preds = predictor.predict(
        examples if examples is not None else args.input, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    rows = [p.to_dict() for p in preds]
    if args.out:
        write_jsonl(args.out, rows)
        print(f"tasktune: wrote {len(rows)} predictions to {args.out}")
    else:
        for p in preds:
            print(json.dumps(p.json, ensure_ascii=False, indent=2) if p.valid_json else p.output)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tasktune.baselines import baseline
    from tasktune.config import load_task
    from tasktune.evaluate import evaluate, format_table, format_worst, pick_shots
    from tasktune.fsio import atomic_write_json
    from tasktune.predict import Predictor
    from tasktune.rundir import load_run_task

    if args.agreement_with:
        return _eval_agreement(args)
    if args.run:
        task = load_run_task(Path(args.run))
    elif args.task and args.model:
        task = load_task(args.task)
    else:
        raise TaskTuneError("eval needs a RUN folder, or --model M with --task TASK.yaml", "pass one of them")
    data = Path(args.data) if args.data else task.data_path("test")
    if data is None:
        raise TaskTuneError("no eval data: the task has no data.test", "pass --data test.jsonl")
    examples = read_examples(data)[: args.limit]
    if args.run:
        predictor = Predictor.from_run(
            args.run,
            precision=args.precision,
            allow_pickle=args.allow_pickle,
            trust_remote_code=args.trust_remote_code,
            constrain=not args.no_constrain,
        )
        if args.max_new_tokens:
            predictor.max_new_tokens = args.max_new_tokens
        shots = pick_shots(task, args.shots)
        mode = f"few_shot_{len(shots)}" if shots else "bare_input"
    else:
        b = baseline(
            task,
            args.model,
            instruction=args.with_instruction,
            shots=args.shots,
            max_new_tokens=args.max_new_tokens,
            constrain=not args.no_constrain,
            precision=args.precision,
            allow_pickle=args.allow_pickle,
            trust_remote_code=args.trust_remote_code,
        )
        predictor, shots, mode = b.predictor, b.shots, b.mode
    report = evaluate(
        predictor, examples, task, name=args.name or mode, mode=mode, shots=shots, batch_size=args.batch_size
    )
    print(format_table([report]))
    print(format_worst(report))
    if args.json:
        atomic_write_json(args.json, report.to_dict(with_predictions=True))
        print(f"tasktune: report written to {args.json}")
    return 0


def _eval_agreement(args: argparse.Namespace) -> int:
    from tasktune.distill import agreement, format_agreement
    from tasktune.fsio import atomic_write_json

    if not args.run:
        raise TaskTuneError("--agreement-with compares a student RUN with its teacher", "pass the RUN folder too")
    report = agreement(args.run, args.agreement_with, limit=args.limit, batch_size=args.batch_size,
                       precision=args.precision)  # fmt: skip
    print(format_agreement(report))
    if args.json:
        atomic_write_json(args.json, report.to_dict())
        print(f"tasktune: report written to {args.json}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from tasktune.config import build
    from tasktune.distill import DistillConfig, distill, format_distill

    cfg = build(DistillConfig, {k: v for k, v in vars(args).items() if k in DistillConfig.model_fields}, "command line")
    print(format_distill(distill(args.task, args.inputs, args.out, cfg)))
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    from tasktune.examples import get_example

    sized = {"n": args.n} if args.n is not None else {}  # each example has its own default size
    out = get_example(args.name)(args.out, seed=args.seed, **sized)
    print(f"tasktune: wrote the {args.name} example to {out} (task file: {out / 'task.yaml'})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from tasktune.demo import run_demo

    out = args.out or f"demo-out/{time.strftime('%Y%m%d-%H%M%S')}"
    run_demo(out, n=args.n, test_rows=args.test_rows, seed=args.data_seed, json_path=args.json,
             train_overrides=overrides_from(args))  # fmt: skip
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tasktune.compare import CompareConfig, compare, format_table
    from tasktune.config import build

    ccfg = build(CompareConfig, config_settings(args, CompareConfig), "command line")
    result = compare(args.task, ccfg, args.out, train_overrides=overrides_from(args))
    print()
    print(format_table(result))
    print(f"\nrecommended for {result.priority}: {result.recommended} ({result.reason})")
    print(f"tasktune compare: report in {Path(args.out) / 'report.html'} (also report.md, results.json);"
          f" {result.seconds / 60:.1f} min")  # fmt: skip
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from tasktune.config import build
    from tasktune.tune import TuneConfig, format_best, format_table, tune

    own = set(TuneConfig.model_fields)  # --time-budget is the study's; each trial's is set by tune
    tcfg = build(TuneConfig, {k: v for k, v in vars(args).items() if k in own}, "command line")
    overrides = {k: v for k, v in overrides_from(args).items() if k not in own}
    trust = {"allow_pickle": args.allow_pickle, "trust_remote_code": args.trust_remote_code}
    result = tune(args.task, tcfg, args.out, train_overrides=overrides, force=args.force, **trust)
    print()
    print(format_table(result))
    print(format_best(result))
    print(f"tasktune tune: report in {Path(args.out) / 'report.html'} (also results.md, results.json);"
          f" {result.seconds / 60:.1f} min")  # fmt: skip
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from tasktune.config import build
    from tasktune.serve import ServeConfig, serve

    def pairs(items: list[str] | None, flag: str, shape: str, example: str) -> dict[str, str]:
        out = {}
        for item in items or []:
            name, sep, value = item.partition("=")
            if not sep or not name or not value:
                raise TaskTuneError(f"{flag} {item!r} is not {shape}", f"e.g. {flag} {example}")
            out[name] = value
        return out

    settings = {"host": args.host, "port": args.port, "api_key": args.api_key or os.environ.get("TASKTUNE_API_KEY"),
                "aliases": pairs(args.alias, "--alias", "NAME=RUN", "triage=runs/triage"), "max_queue": args.max_queue,
                "max_batch_size": args.max_batch_size, "precision": args.precision, "api_keys": args.api_keys,
                "fine_tuning": args.fine_tuning, "state": args.state,
                "base_models": pairs(args.base_model, "--base-model", "NAME=MODEL", "smol=models/smollm2"),
                "max_upload_mb": args.max_upload_mb, "job_save_every": args.job_save_every}  # fmt: skip
    serve(args.runs, build(ServeConfig, settings, "command line"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tasktune.export import export

    if args.format == "gguf":
        return _export_gguf(args)
    if args.ollama or args.quant != "f16" or args.min_agreement is not None:
        raise TaskTuneError("--quant, --ollama and --min-agreement are GGUF settings", "add --format gguf")
    result = export(args.run, args.out, merge=args.merge, parity_rows=args.parity_rows)
    what = "merged LoRA" if result.merged else f"{result.method} model"
    parity = (
        "no eval inputs to check parity on"
        if result.parity_agreement is None
        else f"parity {result.parity_agreement:.0%} on {result.parity_rows} eval inputs (greedy, fp32)"
    )
    print(f"tasktune: exported {what} to {result.out} in {result.seconds:.0f}s; {parity}")
    print(f"tasktune: load it with AutoModelForCausalLM.from_pretrained({result.out!r})")
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    from tasktune.export import export_gguf

    r = export_gguf(args.run, args.out, quant=args.quant, merge=args.merge, ollama=args.ollama,
                    parity_rows=args.parity_rows, min_agreement=args.min_agreement)  # fmt: skip
    path = Path(r.out) / r.file
    print(f"tasktune: wrote {path} ({r.quant}, {r.size_bytes / 2**20:.1f} MiB) in {r.seconds:.0f}s")
    if r.parity_agreement is None:
        print("tasktune: parity not checked (no eval inputs, or --parity-rows 0)")
    else:
        stops = "" if r.stops_at_turn_end is None else f", {r.stops_at_turn_end:.0%} stop at the end-of-turn token"
        print(f"tasktune: in llama.cpp, prompts {r.prompt_agreement:.0%} identical, greedy answers"
              f" {r.parity_agreement:.0%} identical on {r.parity_rows} eval inputs{stops}")  # fmt: skip
    if r.file == "adapter.gguf":
        template = Path(r.out) / "chat-template.jinja"
        print(f"tasktune: run it with `llama-server -m {r.base_gguf} --lora {path} --jinja"
              f" --chat-template-file {template}`")  # fmt: skip
    else:
        print(f"tasktune: run it with `llama-server -m {path} --jinja`")
    if args.ollama:
        print(f"tasktune: or with Ollama: `ollama create {Path(r.run).name} -f {Path(r.out) / 'Modelfile'}`")
    return 0


def _add_trust_flags(p: argparse.ArgumentParser) -> None:
    # Command-line flags only, never task-file keys: a task file from elsewhere must not be able to turn them on.
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load pickle-based weight files (.bin/.pt/.pth/.ckpt) when no safetensors exist: only from sources you"
        " trust, a pickle can run code",
    )
    p.add_argument(
        "--trust-remote-code", action="store_true", help="run the Python code a model folder ships (auto_map)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tasktune", description="Embed a task into a language model's weights.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="check a data set before training: every problem with its file, line and fix")
    p.add_argument("data", nargs="*", help="JSONL/CSV files: the first is the training split, the others held out")
    p.add_argument("--task", help="task file: its data splits, output kind, schema and training settings")
    p.add_argument("--model", help="base model whose tokenizer counts tokens (default: the task's, else built-in)")
    p.add_argument("--max-length", type=int, help="row length limit in tokens (default: the task's, else 1024)")
    p.add_argument(
        "--method", choices=["lora", "full", "prefix", "prompt"], help="training method, for the row-count check"
    )
    p.add_argument("--show", type=int, default=0, metavar="N", help="print N rendered rows, supervised tokens marked")
    p.add_argument("--json", help="write the full report here")
    p.add_argument("--fix", metavar="OUT", help="write cleaned copies and dropped.jsonl into this new folder")
    p.add_argument("--details", type=int, default=3, help="locations printed per finding")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("train", help="fine-tune a base model on a task")
    p.add_argument("--task", help="task file (task.yaml)")
    p.add_argument("--data", help="training rows (JSONL/CSV); replaces the task's data.train")
    p.add_argument("--out", help="run folder to create (must not exist or be empty)")
    p.add_argument("--force", action="store_true", help="train even when the data check finds errors")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its newest complete checkpoint, same settings")
    p.add_argument(
        "--processes", type=int, default=1, metavar="N", help="data-parallel processes on this machine (torchrun)"
    )
    _add_trust_flags(p)
    p.add_argument("--no-diagnose", action="store_true", help="skip the run doctor (tasktune diagnose) at the end")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("diagnose", help="diagnose a run: loss curves, stopping, memorisation, forgetting, format drift")
    p.add_argument("run", help="run folder of `tasktune train`; RUN/diagnosis.json and RUN/report.html go there")
    p.add_argument("--json", help="also write the full result here")
    from tasktune.diagnose import DiagnoseConfig

    add_config_flags(p, DiagnoseConfig)
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("predict", help="answer raw inputs with a tuned run")
    p.add_argument("run", help="run folder written by `tasktune train`")
    p.add_argument("--input", action="append", help="a raw input (repeatable)")
    p.add_argument("--file", help='JSONL/CSV of inputs ({"input": ...} rows)')
    p.add_argument("--out", help="write predictions as JSONL here")
    p.add_argument("--batch-size", type=int, default=16, help="inputs per generation batch")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap (default: from training)")
    p.add_argument("--no-constrain", action="store_true", help="JSON tasks: decode freely instead of under the"
                   " schema (to measure what the constraint changes)")  # fmt: skip
    _add_trust_flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval", help="score generations of a tuned run, or of a base model with the instruction")
    p.add_argument("run", nargs="?", help="run folder (tuned model, bare input)")
    p.add_argument("--model", help="base model to score instead of a run")
    p.add_argument("--task", help="task file (with --model)")
    p.add_argument("--with-instruction", action="store_true", help="send the task's instruction with each input")
    p.add_argument("--shots", type=int, default=0, help="k training rows as few-shot examples in each prompt")
    p.add_argument("--data", help="JSONL/CSV with reference answers (default: the task's data.test)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    p.add_argument("--json", help="write the full report (with every prediction) here")
    p.add_argument("--name", help="label for this side of the comparison")
    p.add_argument("--batch-size", type=int, default=16, help="requests per generation batch")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="inference precision")
    p.add_argument("--agreement-with", metavar="DATA", help="distill output folder: agreement of RUN (bare input) with"
                   " its instructed teacher on DATA/test.jsonl")  # fmt: skip
    p.add_argument("--no-constrain", action="store_true", help="JSON tasks: decode freely instead of under the"
                   " schema (to measure what the constraint changes)")  # fmt: skip
    _add_trust_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("distill", help="label raw inputs with an instructed teacher: training data for the bare input")
    p.add_argument("--task", required=True, help="task file whose instruction the teacher gets")
    p.add_argument("--inputs", required=True, help='JSONL/CSV of raw inputs ({"input": ...}; an "output" is kept as'
                   " the reference)")  # fmt: skip
    p.add_argument("--out", required=True, help="folder for the labelled task; the same folder again resumes")
    from tasktune.distill import DistillConfig

    add_config_flags(p, DistillConfig)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("example", help="write an example task (data, schema, task.yaml)")
    p.add_argument("name", help="example name, e.g. bug-reports")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--n", type=int, default=None, help="training rows (default: the example's own)")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.set_defaults(func=cmd_example)

    p = sub.add_parser("demo", help="bug reports -> JSON end to end: base+instruction vs tuned on the bare input")
    p.add_argument("--out", help="new folder for data, run and figures (default: demo-out/TIMESTAMP)")
    p.add_argument("--n", type=int, default=10000, help="training reports to generate")
    p.add_argument("--test-rows", type=int, default=100, help="held-out-style test reports to score both sides on")
    p.add_argument("--data-seed", type=int, default=0, help="data generator seed")
    p.add_argument("--json", help="write the figures here (default: OUT/demo.json)")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("compare", help="compare instruction, few-shot, prompt, prefix, lora and full on one task")
    p.add_argument("task", help="task file (task.yaml) with data.train and data.test")
    p.add_argument("--out", required=True, help="folder for the report; rerun with the same folder to resume")
    from tasktune.compare import CompareConfig

    add_config_flags(p, CompareConfig)
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tune", help="search method, learning rate, length, LoRA rank and layers for the best score")
    p.add_argument("--task", required=True, help="task file (task.yaml); trials are scored on its validation rows")
    p.add_argument("--out", required=True, help="folder for the study; rerun with the same folder to resume")
    p.add_argument("--force", action="store_true", help="train even when the data check finds errors")
    _add_trust_flags(p)
    from tasktune.tune import TuneConfig

    add_config_flags(p, TuneConfig)
    add_config_flags(p, TrainConfig, skip=set(TuneConfig.model_fields))
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("serve", help="serve runs over an OpenAI-compatible HTTP API")
    p.add_argument("runs", nargs="*", help="run folders; each is a model named by its folder name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    p.add_argument("--api-key", help="require this bearer key on every route but /health (or $TASKTUNE_API_KEY)")
    p.add_argument("--alias", action="append", metavar="NAME=RUN", help="serve RUN also as NAME (repeatable)")
    p.add_argument("--max-queue", type=int, default=256, help="requests that may wait; beyond that 503")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests generated together")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="inference precision")
    p.add_argument("--api-keys", metavar="FILE", help="`TENANT KEY` per line: each tenant sees only its own files,"
                   " jobs and fine-tuned models (instead of --api-key)")  # fmt: skip
    p.add_argument("--fine-tuning", action="store_true", help="take OpenAI's files and fine-tuning jobs API")
    p.add_argument("--state", default=".tasktune-state", help="folder of the fine-tuning database, uploads and runs")
    p.add_argument("--base-model", action="append", metavar="NAME=MODEL",
                   help="a base model jobs may name (built-in name or local folder; repeatable)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=float, default=512, help="largest file upload in MiB (larger: 413)")
    p.add_argument("--job-save-every", type=int, default=50, help="steps between a job's checkpoints")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="write a run as a Hugging Face model folder or a GGUF file for llama.cpp")
    p.add_argument("run", help="run folder written by `tasktune train`")
    p.add_argument("--out", required=True, help="folder to write (replaced only after the parity check passes)")
    p.add_argument("--format", choices=["hf", "gguf"], default="hf", help="Hugging Face folder or GGUF file")
    p.add_argument(
        "--merge",
        action="store_true",
        help="fold a LoRA adapter into the weights (hf: required for LoRA; gguf: else a GGUF LoRA adapter)",
    )
    p.add_argument("--quant", choices=["f16", "bf16", "q8_0", "f32"], default="f16", help="GGUF weight type")
    p.add_argument("--ollama", action="store_true", help="also write an Ollama Modelfile beside the GGUF file")
    p.add_argument(
        "--min-agreement",
        type=float,
        help="GGUF: least share of greedy answers llama.cpp must give as the run does (default by --quant)",
    )
    p.add_argument("--parity-rows", type=int, default=32, help="eval inputs the parity check compares (0: skip)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # `train --processes N` starts itself again with the same arguments
    quiet_libraries()
    try:
        return args.func(args)
    except TrainingStopped as e:
        if os.environ.get("RANK", "0") == "0":  # every process stops; the main one says how to resume
            print(f"tasktune: {e.message}" + (f"\ntasktune: {e.hint}" if e.hint else ""), file=sys.stderr)
        return e.exit_code
    except TaskTuneError as e:
        print(f"tasktune: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tasktune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
