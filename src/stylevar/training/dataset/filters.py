"""Which teacher outputs make good targets: the measures, the decisions and the report (docs/triplets.md,
"The filter").

Each target is measured once, when it is made (the numbers go to ``records.jsonl``); the decision is taken
again on every run from those numbers, so new thresholds need no network. A target is dropped when:

* **structure lost**: ``structure`` below ``min_structure``. ``structure`` is the edge correlation
  (:func:`stylevar.perceptual.edge_correlation`: Pearson's r of the Sobel gradient magnitudes of the luma)
  of the target and the content, both resized to 64 x 64 first, so it measures whether the content's
  layout survived rather than its fine texture (which a style replaces on purpose).
* **colour did not move**: ``colour_shift`` below ``min_colour_shift``. ``colour_shift`` is the share of
  the colour gap between content and style that the target closed: ``1 - d(target, style) / d(content,
  style)`` with ``d`` the Hellinger distance of joint RGB histograms
  (:func:`stylevar.perceptual.colour_histogram_distance`, 8 bins a channel) of the three images at 64 x 64
  (at 256 px the histograms took most of the build's time; at 64 px the shares correlated 0.98 with
  theirs and made the same decisions on the sample photographs);
  0 when the target is as far from the style's colours as the content was, 1 when it has the style's
  colours. A pair whose content and style already share their colours (a gap below 0.02) has nothing
  to move and passes.

``style_distance`` (the arbitrary network's style-vector cosine distance between target and style,
:func:`stylevar.perceptual.magenta.style_vector_distance`) is recorded beside, for the report, when the
teachers extra is installed; it decides nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from ...perceptual.metrics import colour_histogram_distance, edge_correlation
from .teachers import resize_to

FILTER_SIDE = 64  #: the images are compared at this size (docs/triplets.md, "The filter")
MIN_COLOUR_GAP = 0.02  #: below this content-to-style colour distance there is no colour to move

STRUCTURE = "structure lost"
COLOUR = "colour did not move"


def measure(
    target: torch.Tensor, content: torch.Tensor, style: torch.Tensor, style_net=None
) -> dict[str, Any]:
    """The filter's numbers for one triplet: (1, 3, H, W) images in [0, 1] (sizes may differ)."""
    t, c, s = (resize_to(x, FILTER_SIDE) for x in (target, content, style))
    gap = colour_histogram_distance(c, s).item()
    to_style = colour_histogram_distance(t, s).item()
    row: dict[str, Any] = {
        "structure": round(edge_correlation(t, c).item(), 5),
        "colour_gap": round(gap, 5),
        "colour_to_style": round(to_style, 5),
        "colour_shift": round(1 - to_style / gap, 5) if gap >= MIN_COLOUR_GAP else None,
    }
    if style_net is not None:
        from ...perceptual.magenta import style_vector_distance

        row["style_distance"] = round(style_vector_distance(target, style, network=style_net).item(), 6)
    return row


def reasons(row: dict[str, Any], min_structure: float, min_colour_shift: float) -> list[str]:
    """Why ``row`` (a record of :func:`measure`) is dropped; empty when it is kept."""
    out = []
    if row["structure"] < min_structure:
        out.append(f"{STRUCTURE} (edge correlation {row['structure']:.3f} < {min_structure})")
    shift = row.get("colour_shift")
    if shift is not None and shift < min_colour_shift:
        out.append(f"{COLOUR} (closed {shift:.0%} of the colour gap < {min_colour_shift:.0%})")
    return out


def summarise(
    rows: Sequence[dict[str, Any]], *, enabled: bool, min_structure: float, min_colour_shift: float
) -> dict[str, Any]:
    """``filter_report.json``: counts, the thresholds, how many each reason dropped, and one line."""
    dropped = [r for r in rows if not r["kept"]]
    by_reason = Counter(reason.split(" (")[0] for r in dropped for reason in r["reasons"])
    line = f"filter: kept {len(rows) - len(dropped)} of {len(rows)} triplets"
    if not enabled:
        line += " (off: --no-filter)"
    elif dropped:
        parts = [f"{n} {name}" for name, n in sorted(by_reason.items())]
        line += (
            f"; dropped {len(dropped)} ({', '.join(parts)}; thresholds: structure {min_structure}, colour "
            f"shift {min_colour_shift}); see filter_report.jsonl"
        )
    return {
        "enabled": enabled,
        "min_structure": min_structure,
        "min_colour_shift": min_colour_shift,
        "compared_at": FILTER_SIDE,
        "total": len(rows),
        "kept": len(rows) - len(dropped),
        "dropped": len(dropped),
        "dropped_by_reason": dict(sorted(by_reason.items())),
        "summary": line,
    }
