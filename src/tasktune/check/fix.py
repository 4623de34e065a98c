"""`tasktune check --fix OUT`: cleaned copies of the splits, the dropped rows with their reasons, a task.yaml."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tasktune.check.report import CheckReport
from tasktune.config import TaskConfig
from tasktune.data import open_rows
from tasktune.errors import TaskTuneError


def write_fixed(report: CheckReport, splits: dict[str, str | Path], out: str | Path,
                task: TaskConfig | None = None) -> dict[str, int]:  # fmt: skip
    """Cleaned copies of the split files in `out` (rows with dropping findings removed), and `dropped.jsonl`, one
    line per dropped row with its file, line and reason; with a task, a task.yaml that points at the copies. Input
    files are never modified. Returns the rows kept per split.
    """
    from tasktune.fsio import atomic_open, atomic_write_text, ensure_writable_dir

    out = check_fix_target(splits, out)
    ensure_writable_dir(out, what="--fix folder")
    kept: dict[str, int] = {}
    with atomic_open(out / "dropped.jsonl") as log:
        for name, p in splits.items():
            p, drops = Path(p), report.drops.get(name, {})
            kept[name] = 0

            def dropped(line: int, text: str, name=name, p=p, drops=drops) -> None:
                code, reason = drops[line]
                row = {"split": name, "file": str(p), "line": line, "code": code, "reason": reason, "row": text}
                log.write(json.dumps(row) + "\n")  # ensure_ascii: undecodable bytes show as \udcXX escapes

            with open_rows(p) as src, atomic_open(out / p.name) as dst:
                if p.suffix.lower() == ".csv":
                    reader = csv.DictReader(src)
                    writer = csv.DictWriter(dst, fieldnames=reader.fieldnames or [], lineterminator="\n")
                    writer.writeheader()
                    for row in reader:
                        if reader.line_num in drops:
                            dropped(reader.line_num, json.dumps(row))
                        else:
                            writer.writerow(row)
                            kept[name] += 1
                    continue
                for lineno, line in enumerate(src, start=1):
                    if not line.strip():
                        continue
                    if lineno in drops:
                        dropped(lineno, line.rstrip("\r\n"))
                    else:
                        dst.write(line if line.endswith("\n") else line + "\n")
                        kept[name] += 1
    if task is not None:
        schema = None
        if report.inferred_schema is not None and task.json_schema() is None:
            atomic_write_text(out / "schema.json", json.dumps(report.inferred_schema, indent=2, ensure_ascii=False)
                              + "\n")  # fmt: skip
            schema = "schema.json"
        _write_fixed_task(task, {n: Path(p) for n, p in splits.items()}, out, schema=schema)
    return kept


def check_fix_target(splits: dict[str, str | Path], out: str | Path) -> Path:
    """`out` as a folder for cleaned copies: not the folder of an input, no two inputs with the same file name."""
    out = Path(out)
    resolved = out.resolve()
    names = [Path(p).name for p in splits.values()]
    for p in map(Path, splits.values()):
        if resolved in (p.resolve().parent, p.resolve()):
            raise TaskTuneError(f"--fix {out} is the folder of the input {p}", "choose a new folder for the copies")
    if len(set(names)) != len(names) or {"dropped.jsonl", "task.yaml"} & set(names):
        raise TaskTuneError(f"the input file names {names} would collide in {out}", "rename the inputs")
    if out.exists() and not out.is_dir():
        raise TaskTuneError(f"--fix {out} exists and is a file", "pass a folder path")
    return out


def _write_fixed_task(task: TaskConfig, splits: dict[str, Path], out: str | Path, schema: str | None = None) -> Path:
    """A task.yaml in `out` that points at the cleaned copies (schema path made absolute, or `schema` in `out`)."""
    import yaml

    from tasktune.fsio import atomic_write_text

    data = task.to_yaml_dict()
    data["data"] = {name: (Path(splits[name]).name if name in splits else None) for name in ("train", "eval", "test")}
    if isinstance(task.output.schema_, str):
        data["output"]["schema"] = str((task.base_dir / task.output.schema_).resolve())
    if schema is not None:
        data["output"]["schema"] = schema

    class Dumper(yaml.SafeDumper):  # multi-line strings (the instruction) as readable `|` blocks
        pass

    def text(dumper, value: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    path = Path(out) / "task.yaml"
    atomic_write_text(path, "# written by `tasktune check --fix`: the task on the cleaned data\n"
                      + yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True))  # fmt: skip
    return path
