"""The HTML report shell shared by compare, tune and diagnose: one self-contained page (no external files, plots
inline as base64 PNG) with the same head, style and figure markup, so every report reads and prints alike."""

from __future__ import annotations

from html import escape

STYLE = """body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
figure { display: inline-block; margin: 0 1em 1em 0; }
img { max-width: 100%; border: 1px solid #eee; }
tr.highlight { background: #e6f4ea; font-weight: 600; }"""


def page(title: str, body: str, css: str = "") -> str:
    """A whole HTML document: `title` (escaped here) as <title> and <h1>, then `body` (HTML, escaped by the caller),
    with the shared style and the page's own `css` rules after it."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
{STYLE}
{css}
</style></head><body>
<h1>{escape(title)}</h1>
{body}
</body></html>
"""


def image(alt: str, b64_png: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{b64_png}">'


def figures(plots: dict[str, str]) -> str:
    """Each plot (name -> base64 PNG) as a captioned figure; the name with spaces is its caption."""
    return "".join(f"<figure>{image(k, v)}<figcaption>{escape(k.replace('_', ' '))}</figcaption></figure>"
                   for k, v in plots.items())  # fmt: skip
