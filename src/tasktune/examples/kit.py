"""The example generators' kit: their registry, user-text noise, split writing and row bookkeeping."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from pathlib import Path

EXAMPLES: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        EXAMPLES[name] = fn
        return fn

    return wrap


def typos(rng: random.Random, text: str, rate: float) -> str:
    """Swap two neighbouring letters in about `rate` of the longer words: the noise of real user text."""
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) > 3 and w.isalpha() and rng.random() < rate:
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def write_splits(out: str | Path, rows: Callable[[str, int, int], list[dict]], sizes: dict[str, int], seed: int,
                 files: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write an example folder: `SPLIT.jsonl` for each split from `rows(split, n, split_seed)` (split seeds
    seed*1000+1, +2, ... in the order of `sizes`), then the text files in `files` (name -> content), atomically."""
    from tasktune.fsio import atomic_write_text, ensure_writable_dir, write_jsonl

    out = ensure_writable_dir(out, what="example folder")
    for i, (split, n) in enumerate(sizes.items(), 1):
        write_jsonl(out / f"{split}.jsonl", rows(split, n, seed * 1000 + i))
    for name, content in (files or {}).items():
        atomic_write_text(out / name, content)
    return out


# --- the noise and bookkeeping of generated rows, shared by the generators ----------------------------------------
GREETINGS = ("", "", "", "hi, ", "Hello! ", "hey ", "Hi there, ", "Quick question: ")
ENDINGS = ("", "", "", " thanks", " Thank you!", " thx", " Cheers.")


def ask(rng: random.Random, question: str) -> str:
    """A question as customers type it: a greeting, a thanks, a typo now and then, sometimes all lower case."""
    q = typos(rng, question, 0.05 if rng.random() < 0.3 else 0.0)
    if rng.random() < 0.25:
        q = q.lower()
    return (rng.choice(GREETINGS) + q + rng.choice(ENDINGS)).strip()


def pick(rng: random.Random, train: tuple[str, ...], test: tuple[str, ...], held_out: bool) -> str:
    """Training draws from the training phrasings; the test split draws a held-out phrasing half of the time."""
    return rng.choice(test) if held_out and rng.random() < 0.5 else rng.choice(train)


def stable_choice(options: tuple[str, ...], key: str) -> str:
    """The same answer for the same question, so no two rows contradict each other (crc32: stable across runs)."""
    return options[zlib.crc32(key.encode()) % len(options)]


def unique_rows(make: Callable[[int], dict], n: int, max_tries: int = 50) -> list[dict]:
    """n rows with distinct inputs (exact repeats only add weight to one case); fewer if the phrasings run out.
    `make(i)` builds a candidate for position i; at most n * max_tries candidates are drawn."""
    rows, seen = [], set()
    for _ in range(n * max_tries):
        if len(rows) == n:
            break
        row = make(len(rows))
        if row["input"] not in seen:
            seen.add(row["input"])
            rows.append(row)
    return rows
