"""Numbers as people read them, on pages and in markdown alike.

Statistics here are legitimately NaN or infinite: a half-life is NaN when a response never halves
within the window and infinite when a keep gate sits at exactly 1; a drift is infinite when the
baseline output is all zero. `number` says so in words instead of printing "nan" or "+inf%".
"""

from __future__ import annotations

import math

__all__ = ["number"]


def number(value, pattern: str = "%.2f", nan: str = "—", inf: str = "∞", none: str = "not comparable") -> str:
    """`pattern % value`, or `nan`/`inf` (signed as the pattern would sign it) or `none`."""
    if value is None:
        return none
    value = float(value)
    if math.isnan(value):
        return nan
    if math.isinf(value):
        sign = "−" if value < 0 else ("+" if "%+" in pattern else "")
        return sign + inf
    return pattern % value
