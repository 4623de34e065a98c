"""RUN/report.html: one self-contained page with the loss curves and the findings (plots inline as base64 PNG)."""

from __future__ import annotations

import math
from html import escape

from tasktune.diagnose.findings import Diagnosis
from tasktune.pages import image, page
from tasktune.plots import png


def loss_plot(records: list[dict], curves: dict) -> str | None:
    """Train loss per step and eval loss, the best eval step marked; base64 PNG (None without records)."""
    train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r and math.isfinite(r["train/loss"])]
    evals = [(r["step"], r["eval/loss"]) for r in records if "eval/loss" in r and math.isfinite(r["eval/loss"])]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train, strict=True), label="train/loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval/loss")
    if curves.get("best_eval_step") is not None and len(evals) > 1:
        ax.axvline(curves["best_eval_step"], color="grey", linestyle="--", label="lowest eval loss")
    values = [v for _, v in train + evals]
    if min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    return png(fig)


def metric_plot(records: list[dict]) -> str | None:
    """The task metric on the validation rows per step (what selected the run's weights), the kept step marked."""
    key = next((k for r in records for k in r if k.startswith("val/") and k not in ("val/best", "val/best_step")), None)
    if key is None:
        return None
    points = [(r["step"], r[key]) for r in records if key in r]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(*zip(*points, strict=True), marker="o", label=key)
    best = next((r["val/best_step"] for r in reversed(records) if r.get("val/best_step") is not None), None)
    best = best if best is not None else max(points, key=lambda p: p[1])[0]
    ax.axvline(best, color="grey", linestyle="--", label=f"kept: step {best}")
    ax.set_xlabel("step")
    ax.set_ylabel(key.removeprefix("val/"))
    ax.set_title("task metric on the validation rows")
    ax.grid(alpha=0.3)
    ax.legend()
    return png(fig)


def _rows(items: list[list[str]], cls: str = "") -> str:
    return "".join(f"<tr{cls}>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in items)


def render_html(d: Diagnosis, records: list[dict]) -> str:
    findings = "".join(
        f"<tr class={f.severity}><td>{f.severity}</td><td><code>{escape(f.code)}</code></td><td>{escape(f.message)}"
        f"</td><td>{escape(f.remedy)}</td></tr>" for f in d.findings
    ) or "<tr><td colspan=4>no findings</td></tr>"  # fmt: skip
    plot = loss_plot(records, d.curves)
    img = image("loss curves", plot) if plot else "<p>no metrics recorded</p>"
    val = metric_plot(records)
    val_img = image("validation metric", val) if val else "<p>no validation by the task metric in this run</p>"
    p = d.probes
    probe_table = ""
    if p:
        probe_table = (
            f"<p>base model {p['base_score']:.0%} correct, tuned {p['tuned_score']:.0%}; answers in the task's format:"
            f" base {p['base_in_task_format']:.0%}, tuned {p['tuned_in_task_format']:.0%}</p>"
            "<table><tr><th>probe</th><th>base answer</th><th>ok</th><th>tuned answer</th><th>ok</th></tr>"
            + _rows([[a["prompt"], a["base"][:80], "✓" if a["base_ok"] else "✗", a["tuned"][:80],
                      "✓" if a["tuned_ok"] else "✗"] for a in p["answers"]]) + "</table>"
        )  # fmt: skip
    examples = _rows([[e["where"], e["input"][:120], e["output"][:160], e["reference"][:160],
                       "yes" if e["stopped"] else "no", e["copies"] or ""] for e in d.examples[:20]])  # fmt: skip
    checked = d.data_check.items()
    data = _rows([[code, v["severity"], v["count"], "; ".join(v["messages"])[:300]] for code, v in checked])
    counts = d.summary()
    figures = {
        "optimisation": d.curves,
        "held-out answers": d.heldout,
        "memorisation": d.memorisation,
        "membership (training vs unseen rows' loss)": d.memorisation.get("membership") or {},
    }
    figure_rows = _rows([[sec, k, f"{v:.4g}" if isinstance(v, float) else v] for sec, fig in figures.items()
                         for k, v in fig.items() if not isinstance(v, (dict, list))])  # fmt: skip
    body = f"""<p>{escape(d.method)} run of task <b>{escape(d.task)}</b> ({escape(d.output_kind)} answers):
 {counts["error"]} error(s), {counts["warning"]} warning(s), {counts["info"]} info.</p>
<h2>Findings</h2>
<table id="findings"><tr><th>severity</th><th>code</th><th>evidence</th><th>remedy</th></tr>{findings}</table>
<h2>Task metric on the validation rows</h2>{val_img}
<h2>Loss curves</h2>{img}
<h2>Figures</h2><table id="figures">{figure_rows}</table>
<h2>Dataset doctor (tasktune check) on the run's data</h2>
<table id="data-check"><tr><th>code</th><th>severity</th><th>rows</th><th>message</th></tr>{data}</table>
<h2>General-ability probes</h2>{probe_table or "<p>not run</p>"}
<h2>Held-out answers</h2>
<table id="examples"><tr><th>row</th><th>input</th><th>output</th><th>reference</th><th>stopped</th>
<th>copies training row</th></tr>{examples}</table>"""
    css = """tr.error td:first-child { background: #fde2e1; font-weight: 600; }
tr.warning td:first-child { background: #fff4d6; }"""
    return page(f"tasktune diagnose: {d.run}", body, css)
