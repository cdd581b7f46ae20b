"""Several metrics or segments: Holm (family-wise error) or Benjamini-Hochberg (false discovery
rate) adjusted p-values, from statsmodels' ``multipletests``.

Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6 (1979);
Benjamini & Hochberg, JRSS B 57 (1995). Reports show the adjusted p-value beside the raw one and
name the correction, so nobody mistakes one for the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from statsmodels.stats.multitest import multipletests

Method = Literal["holm", "fdr_bh", "none"]
LABELS: dict[str, str] = {
    "holm": "Holm-Bonferroni (family-wise error rate)",
    "fdr_bh": "Benjamini-Hochberg (false discovery rate)",
    "none": "none",
}


def adjust(p_values: Sequence[float | None], method: Method, alpha: float) -> list[float | None]:
    """Adjusted p-values in the input order; None (untestable) stays None and is not counted."""
    present = [(i, p) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    if not present:
        return adjusted
    if method == "none":
        for i, p in present:
            adjusted[i] = p
        return adjusted
    _, corrected, _, _ = multipletests([p for _, p in present], alpha=alpha, method=method)
    for (i, _), value in zip(present, corrected, strict=True):
        adjusted[i] = float(value)
    return adjusted
