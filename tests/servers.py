"""Start `tasktune serve` in a subprocess on a free loopback port and wait until it says where it listens."""

from __future__ import annotations

import subprocess
import threading


def start(cmd: list[str], env: dict, timeout: float) -> tuple[subprocess.Popen, str | None, list[str]]:
    """(process, base URL without /v1 or None if it never said, the output lines so far: the list keeps growing)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if not found and "serving" in line and "http://" in line:
                found.append(line.split(" on ")[-1].strip().removesuffix("/v1"))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(timeout)
    return proc, (found[0] if found else None), lines
