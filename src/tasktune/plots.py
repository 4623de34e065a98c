"""Figures for the HTML reports (compare, tune, diagnose): matplotlib on the Agg backend, embedded as base64 PNG."""

from __future__ import annotations

import base64
import io


def png(fig) -> str:
    """A matplotlib figure as base64 PNG for an <img src="data:image/png;base64,...">; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
