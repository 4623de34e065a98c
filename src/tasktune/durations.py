"""Durations as people write them in a task file or on the command line: 90s, 20m, 1.5h, 1h30m."""

from __future__ import annotations

import re

from tasktune.errors import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|min|m|sec|s)?")
_UNIT = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "sec": 1.0, "": 1.0}
NO_LIMIT = ("none", "off")


def parse_duration(text: str | float | int, key: str = "time_budget") -> float:
    """Seconds from '90s', '20m', '1.5h', '1h30m' or a bare number of seconds; a clear error names `key` otherwise."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        parts = _DURATION.findall(s)
        if not s or "".join(n + u for n, u in parts) != s:
            raise ConfigError(f"{key}: {text!r} is not a duration", "write it like 90s, 20m, 1.5h or 1h30m")
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"{key}: {text!r} is not a positive duration", "write it like 90s, 20m, 1.5h or 1h30m")
    return seconds


def budget_seconds(text: str | None, key: str = "time_budget") -> float | None:
    """A time budget in seconds, or None for no limit (unset, 'none' or 'off')."""
    if text is None or str(text).strip().lower() in NO_LIMIT:
        return None
    return parse_duration(text, key)


def validate_budget(value: str | None) -> str | None:
    """For a config field's validator: the value unchanged, or a ValueError that says how to write it."""
    try:
        budget_seconds(value)
    except ConfigError as e:
        raise ValueError(f"{e.message}; {e.hint}") from None
    return value
