"""Atomic file output: a reader never sees a half-written file, and a failed write never destroys the old one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from tasktune.errors import TaskTuneError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    with atomic_open(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file to write piece by piece (no need to hold it all in memory); it replaces `path` only when the block
    ends without an error. Lone surrogates from files read with errors="surrogateescape" go back out as their bytes."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise TaskTuneError(f"cannot write {path}: {e.strerror}", "choose a folder you can write to") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise TaskTuneError(f"cannot write {path}: {e.strerror}", "check free disk space and permissions") from None
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (the old one is removed only then)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_writable_dir(path: str | os.PathLike, *, must_be_empty: bool = False, what: str = "output folder") -> Path:
    """Create `path` if needed and prove we can write there, before any expensive work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TaskTuneError(f"{what} {path} exists and is a file", "pass a folder path")
    if must_be_empty and path.is_dir() and any(path.iterdir()):
        raise TaskTuneError(
            f"{what} {path} already exists and is not empty",
            "choose a new --out folder (tasktune never overwrites an earlier run)",
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise TaskTuneError(
            f"{what} {path} is not writable: {e.strerror}", "choose a folder you can write to"
        ) from None
    return path
