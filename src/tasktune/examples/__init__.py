"""Example tasks that tasktune can generate: `tasktune example NAME --out DIR`."""

from __future__ import annotations

from collections.abc import Callable

from tasktune.examples.kit import EXAMPLES


def get_example(name: str) -> Callable:
    from tasktune.errors import TaskTuneError
    from tasktune.examples import (  # noqa: F401  (they register themselves)
        bug_reports,
        house_policy,
        pirate_support,
        product_support,
        ticket_summaries,
    )

    if name not in EXAMPLES:
        raise TaskTuneError(f"unknown example {name!r}", f"choose one of: {', '.join(sorted(EXAMPLES))}")
    return EXAMPLES[name]
