"""The `tasktune` command: parse flags, call the library function, print. No logic lives here.

tasktune train   --task task.yaml --out RUN        fine-tune (or --data train.jsonl instead of --task)
tasktune predict RUN --input "raw text"            answer raw inputs with a tuned run
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from tasktune.config import TaskConfig, TrainConfig, load_task, merge_overrides
from tasktune.errors import TaskTuneError


# --- flags generated from the config tree (one source for YAML keys, flags and help) --------------------------------
def _flag_type(annotation):
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return str, list(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        if any(typing.get_origin(a) is list for a in args):
            return (lambda s: s.split(",") if "," in s else s), None
        return _flag_type(args[0])
    return annotation, None


def add_config_flags(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "") -> None:
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            add_config_flags(parser, ann, prefix=f"{prefix}{name}.")
            continue
        key = f"{prefix}{name}"
        flag = "--" + key.replace(".", "-").replace("_", "-")
        help_text = f"{field.description} (default: {field.default})"
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
    from tasktune.train import train

    if args.task:
        task = load_task(args.task)
    elif args.data:
        task = TaskConfig()
    else:
        raise TaskTuneError("train needs --task TASK.yaml or --data train.jsonl", "pass one of them")
    if args.data:
        task.data.train = str(Path(args.data).resolve())
    cfg = merge_overrides(task.train, overrides_from(args))
    result = train(task, cfg, args.out)
    print(
        f"tasktune: trained {result.steps} steps in {result.seconds:.0f}s"
        f" ({result.tokens_per_s:.0f} tokens/s); final train loss {result.train_loss:.4f}"
        + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
    )
    print(f'tasktune: run saved to {result.run_dir}  (try: tasktune predict {result.run_dir} --input "...")')
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tasktune.data import read_examples
    from tasktune.fsio import write_jsonl
    from tasktune.predict import Predictor

    if not args.input and not args.file:
        raise TaskTuneError("predict needs --input TEXT or --file inputs.jsonl", "pass one of them")
    if args.out:
        out = Path(args.out)
        if not out.parent.exists() or not out.parent.is_dir():
            raise TaskTuneError(f"cannot write {out}: folder {out.parent} does not exist", "create it first")
    examples = read_examples(args.file, require_answer=False) if args.file else None
    predictor = Predictor.from_run(args.run)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tasktune", description="Embed a task into a language model's weights.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a base model on a task")
    p.add_argument("--task", help="task file (task.yaml)")
    p.add_argument("--data", help="training rows (JSONL/CSV); replaces the task's data.train")
    p.add_argument("--out", required=True, help="run folder to create (must not exist or be empty)")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="answer raw inputs with a tuned run")
    p.add_argument("run", help="run folder written by `tasktune train`")
    p.add_argument("--input", action="append", help="a raw input (repeatable)")
    p.add_argument("--file", help='JSONL/CSV of inputs ({"input": ...} rows)')
    p.add_argument("--out", help="write predictions as JSONL here")
    p.add_argument("--batch-size", type=int, default=16, help="inputs per generation batch")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap (default: from training)")
    p.set_defaults(func=cmd_predict)
    return parser


def _quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' loading bars and deprecation chatter do not."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except TaskTuneError as e:
        print(f"tasktune: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tasktune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
