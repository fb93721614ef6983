"""Numbers as the reports and the benches print them: one home, so a table reads the same
in report.md, comparison.md, the README and docs/results.md."""

from __future__ import annotations

import math
import statistics
from typing import Any


def fmt(value: Any, signed: bool = False, std: float | None = None) -> str:
    """0.425, +0.013, 0.425 ± 0.004; n/a for an undefined value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{text} ± {std:.3f}" if std else text


def count(n: float | None) -> str:
    """Parameters: 276 k, 1.11 M."""
    if not n:
        return "n/a"
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k" if n >= 1e3 else f"{n:.0f}"


def nbytes(n: float | None) -> str:
    """Sizes: 512 B, 4.2 MiB, 1.3 GiB."""
    if not n:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and (population) standard deviation of the defined values; (None, None) if none are."""
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None
    return statistics.fmean(defined), statistics.pstdev(defined)
