"""`tasktune check --show N`: rows as the model sees them in training, supervised tokens marked."""

from __future__ import annotations

from pathlib import Path

from tasktune.data import RowError, iter_rows
from tasktune.errors import TaskTuneError
from tasktune.render import ChatFormat


def preview_rows(path: str | Path, tokenizer, n: int, *, instruction: str | None = None,
                 system_prompt: str | None = None, color: bool = False) -> str:  # fmt: skip
    """The first `n` rows as the model sees them in training, supervised tokens highlighted (green on a terminal,
    [[...]] otherwise)."""
    fmt = ChatFormat(tokenizer, system_prompt)
    on, off = ("\x1b[1;32m", "\x1b[0m") if color else ("[[", "]]")
    out = []
    for line, item in iter_rows(path):
        if len(out) >= n:
            break
        if isinstance(item, RowError):
            continue
        try:
            enc = fmt.encode_example(fmt.with_instruction(item.messages, instruction))
        except TaskTuneError:
            continue
        text, start = [], 0
        flags = [lab != -100 for lab in enc.labels]
        for j in range(1, len(flags) + 1):
            if j == len(flags) or flags[j] != flags[start]:
                piece = tokenizer.decode(enc.input_ids[start:j], skip_special_tokens=False)
                text.append(f"{on}{piece}{off}" if flags[start] else piece)
                start = j
        head = f"--- {path}:{line}: {enc.n_supervised} of {len(enc.input_ids)} tokens supervised"
        out.append(head + "\n" + "".join(text))
    return "\n\n".join(out) if out else "(no row could be rendered)"
