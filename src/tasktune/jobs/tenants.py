"""API keys and the tenants they stand for (`tasktune serve --api-keys FILE`).

The file has one `TENANT KEY` pair per line (blank lines and `#` comments are skipped). A tenant may have several
keys (one line each); each tenant sees only its own files, jobs and fine-tuned models. Without --api-keys, every
client is the one tenant `default` (with or without --api-key).
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from tasktune.errors import ConfigError

DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_KEY_LENGTH = 16  # a guessable key would let anyone read a tenant's data


def read_api_keys(path: str | Path) -> dict[str, str]:
    """KEY → TENANT from the file; every problem in it is reported at once, by line (keys are never printed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--api-keys {path}: cannot read it: {e.strerror}", "pass a readable file") from None
    keys: dict[str, str] = {}
    problems = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) != 2:
            problems.append(f"{path}:{n}: expected `TENANT KEY` (two words), got {len(parts)}")
            continue
        tenant, key = parts
        if not TENANT_NAME.match(tenant):
            problems.append(f"{path}:{n}: tenant name {tenant!r}: use letters, digits, '_', '.' or '-' (1-64)")
        elif len(key) < MIN_KEY_LENGTH:
            problems.append(f"{path}:{n}: the key is {len(key)} characters; use at least {MIN_KEY_LENGTH}")
        elif key in keys:
            problems.append(f"{path}:{n}: this key is already on an earlier line; each key names one tenant")
        else:
            keys[key] = tenant
    if problems:
        raise ConfigError("\n".join(problems), "one `TENANT KEY` pair per line, e.g. `acme 3f9c...` (see docs)")
    if not keys:
        raise ConfigError(f"--api-keys {path}: no keys in it", "add one `TENANT KEY` line per client")
    return keys


def tenant_of(authorization: str | None, api_key: str | None, keys: dict[str, str] | None) -> str | None:
    """The tenant a request's `Authorization` header names, or None when it names none that is accepted."""
    if keys is None:
        if api_key is None:
            return DEFAULT_TENANT
        ok = hmac.compare_digest((authorization or "").encode(), f"Bearer {api_key}".encode())
        return DEFAULT_TENANT if ok else None
    given = (authorization or "").removeprefix("Bearer ").encode()
    found = None
    for key, tenant in keys.items():  # every key compared in constant time: the timing tells nothing
        if hmac.compare_digest(given, key.encode()):
            found = tenant
    return found
