"""Loaded at start-up by every Python process whose PYTHONPATH includes this folder (tests of multi-process runs).

When TASKTUNE_WRITE_SPY names a folder, each process records every change it makes below TASKTUNE_WRITE_SPY_WATCH
(files opened for writing, folders made, renames, removals) through Python's audit hooks, and writes the list to
TASKTUNE_WRITE_SPY/rank-<RANK>.txt when it exits. The test then sees which process wrote what.
"""

import atexit
import os
import sys

_spy = os.environ.get("TASKTUNE_WRITE_SPY")
_watch = os.environ.get("TASKTUNE_WRITE_SPY_WATCH")
if _spy and _watch and "RANK" in os.environ:
    _watch = os.path.realpath(_watch)
    _seen: list[str] = []
    _write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _events = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"}

    def _under(path) -> bool:
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(_watch)
        except (TypeError, ValueError):
            return False

    def _hook(event, args):
        if event == "open" and len(args) >= 3 and isinstance(args[2], int) and args[2] & _write_flags:
            if _under(args[0]):
                _seen.append(f"open {args[0]}")
        elif event in _events and args and _under(args[0]):
            _seen.append(f"{event} {args[0]}")

    def _dump():  # the report lies outside the watched folder, so writing it is not recorded
        with open(os.path.join(_spy, f"rank-{os.environ['RANK']}.txt"), "w") as f:
            f.write("\n".join(_seen))

    sys.addaudithook(_hook)
    atexit.register(_dump)
