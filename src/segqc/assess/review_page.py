"""A self-contained HTML page for a human reviewer: every case, referrals first.

The page embeds its thumbnails as base64 data URIs and its few lines of CSS and JavaScript inline,
so it opens from disk or an e-mail attachment with no network access.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segqc.utils import atomic_write

#: Longest side of the thumbnails embedded in the page, in pixels.
THUMB_SIDE = 256


def thumbnail(rgb: np.ndarray, max_side: int = THUMB_SIDE, *, quality: int = 85) -> bytes:
    """``(H, W, 3)`` uint8 RGB or ``(H, W)`` grey -> JPEG bytes, longest side at most ``max_side``."""
    img = Image.fromarray(np.ascontiguousarray(rgb))
    img.thumbnail((max_side, max_side), Image.BILINEAR)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class ReviewCase:
    """One assessed image as shown on the page; thumbnails are encoded JPEG (or PNG) bytes."""

    id: str
    predicted_jaccard: float
    decision: str
    threshold: float
    mean_uncertainty: float
    source: str = ""
    reason: str = ""
    jaccard_lower: float | None = None
    image: bytes | None = None
    overlay: bytes | None = None
    uncertainty: bytes | None = None


def _data_uri(data: bytes) -> str:
    mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}
#summary span{display:inline-block;margin-right:1.2em}
#filters{margin:1em 0}
#filters button{font:inherit;padding:.3em .9em;margin-right:.3em;border:1px solid #888;background:#fff;
  border-radius:4px;cursor:pointer}
#filters button[aria-pressed=true]{background:#333;color:#fff}
.case{background:#fff;border:1px solid #ddd;border-left:6px solid #2a2;border-radius:4px;margin:.6em 0;
  padding:.5em .8em}
.case.refer{border-left-color:#d22}
.case header{display:flex;gap:1.5em;align-items:baseline;flex-wrap:wrap}
.case .id{font-weight:600;word-break:break-all}
.decision{font-weight:600;text-transform:uppercase}
.refer .decision{color:#c00}.pass .decision{color:#080}
.reason{font-style:italic}.refer .reason{color:#c00}
.panels{display:flex;gap:.6em;flex-wrap:wrap;margin-top:.4em}
figure{margin:0}figcaption{font-size:.85em;color:#666}
figure img{display:block;width:192px;height:192px;object-fit:contain;background:#eee}
.source{font-size:.8em;color:#777;word-break:break-all}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}
"""

# Filters hide cards with the ``hidden`` attribute: one line per button state, no library.
_JS = """
document.querySelectorAll('#filters button').forEach(function (button) {
  button.addEventListener('click', function () {
    var want = button.dataset.filter;
    document.querySelectorAll('#filters button').forEach(function (b) {
      b.setAttribute('aria-pressed', String(b === button));
    });
    document.querySelectorAll('.case').forEach(function (card) {
      card.hidden = want !== 'all' && card.dataset.decision !== want;
    });
  });
});
"""


def sort_cases(cases: Sequence[ReviewCase]) -> list[ReviewCase]:
    """Referrals first, then by predicted quality ascending (worst first), then by id."""
    return sorted(cases, key=lambda c: (c.decision != "refer", c.predicted_jaccard, c.id))


def _figure(data: bytes | None, caption: str, id_: str) -> str:
    if data is None:
        return f"<figure><figcaption>{caption}: not available</figcaption></figure>"
    alt = html.escape(f"{caption} of {id_}")
    return f'<figure><img src="{_data_uri(data)}" alt="{alt}"><figcaption>{caption}</figcaption></figure>'


def _card(case: ReviewCase) -> str:
    id_ = html.escape(case.id)
    decision = "refer" if case.decision == "refer" else "pass"
    source = f'<div class="source">{html.escape(case.source)}</div>' if case.source else ""
    reason = f'<span class="reason">{html.escape(case.reason)}</span>' if case.reason else ""
    lower = "" if case.jaccard_lower is None else f', at least <b class="lower">{case.jaccard_lower:.3f}</b>'
    return (
        f'<article class="case {decision}" data-decision="{decision}" data-id="{id_}">'
        f'<header><span class="id">{id_}</span>'
        f'<span class="decision">{decision}</span>{reason}'
        f'<span>predicted Jaccard <b class="quality">{case.predicted_jaccard:.3f}</b> '
        f"(threshold {case.threshold:g}){lower}</span>"
        f"<span>mean uncertainty {case.mean_uncertainty:.4f}</span></header>"
        f'<div class="panels">{_figure(case.image, "image", case.id)}'
        f"{_figure(case.overlay, 'segmentation', case.id)}"
        f"{_figure(case.uncertainty, 'uncertainty', case.id)}</div>{source}</article>"
    )


def render_review_page(
    cases: Sequence[ReviewCase],
    *,
    errors: Sequence[tuple[str, str]] = (),
    title: str = "segqc review",
    subtitle: str = "",
) -> str:
    """The page as one HTML string.

    Args:
        cases: assessed images, in any order (the page sorts them: referrals first, worst first).
        errors: ``(source, reason)`` of inputs that could not be assessed; listed at the end.
        title: page title.
        subtitle: one line under the title (e.g. the model and its threshold).
    """
    ordered = sort_cases(cases)
    n_refer = sum(c.decision == "refer" for c in ordered)
    counts = {
        "total": len(ordered),
        "referred": n_refer,
        "passed": len(ordered) - n_refer,
        "errors": len(errors),
    }
    labels = {"total": "assessed", "referred": "referred", "passed": "passed", "errors": "could not be read"}
    summary = "".join(
        f'<span><b data-count="{key}">{value}</b> {labels[key]}</span>' for key, value in counts.items()
    )
    filters = (
        ("all", "All", len(ordered)),
        ("refer", "Referred", n_refer),
        ("pass", "Passed", len(ordered) - n_refer),
    )
    buttons = "".join(
        f'<button type="button" data-filter="{f}" aria-pressed="{str(f == "all").lower()}">{label} '
        f'(<span data-filter-count="{f}">{n}</span>)</button>'
        for f, label, n in filters
    )
    error_rows = "".join(
        f"<tr><td>{html.escape(src)}</td><td>{html.escape(reason)}</td></tr>" for src, reason in errors
    )
    error_table = (
        f'<section id="errors"><h2>Could not be read</h2><table><tr><th>input</th><th>reason</th></tr>'
        f"{error_rows}</table></section>"
        if errors
        else ""
    )
    sub = f"<p>{html.escape(subtitle)}</p>" if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{html.escape(title)}</h1>{sub}<div id="summary">{summary}</div>'
        f'<div id="filters">{buttons}</div>'
        f'<main id="cases">{"".join(_card(c) for c in ordered)}</main>{error_table}'
        f"<script>{_JS}</script></body></html>\n"
    )


def write_review_page(path: str | Path, cases: Sequence[ReviewCase], **kwargs: object) -> Path:
    """Write :func:`render_review_page` to ``path`` atomically; keywords go to it."""
    path = Path(path)
    page = render_review_page(cases, **kwargs)  # type: ignore[arg-type]
    with atomic_write(path) as fh:
        fh.write(page.encode("utf-8", errors="replace"))  # ids from odd file names may hold lone surrogates
    return path
