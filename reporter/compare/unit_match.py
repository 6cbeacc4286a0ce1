"""Compare two layers' units without assuming they are aligned.

Two trainings of one architecture learn the same features in different units (and possibly with
opposite signs), so unit k of one run says nothing about unit k of the other. Two tools:

- `linear_cka` (Kornblith et al. 2019): similarity of two representations of the same inputs,
  invariant to rotations and isotropic scaling of the units, so it needs no alignment at all;
  1 for identical representations (up to those), near 0 for unrelated ones.
- `match_units`: correlate every unit of A with every unit of B over the same windows and steps,
  and pair them one to one by the Hungarian assignment (scipy) maximising |correlation|.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["linear_cka", "match_units", "unit_correlations"]


def _centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two [samples, units] matrices over the same samples (units may differ in number)."""
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same samples on both sides, got {len(x)} and {len(y)}")
    xc, yc = _centred(x), _centred(y)
    cross = np.linalg.norm(xc.T @ yc, "fro") ** 2
    norms = np.linalg.norm(xc.T @ xc, "fro") * np.linalg.norm(yc.T @ yc, "fro")
    return float(cross / norms) if norms > 0 else float("nan")


def unit_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of every unit of x with every unit of y: [units_x, units_y]; constant units give 0."""
    xc, yc = _centred(x), _centred(y)
    sx, sy = np.linalg.norm(xc, axis=0), np.linalg.norm(yc, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = (xc.T @ yc) / np.outer(sx, sy)
    return np.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0)


def match_units(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair units of x with units of y one to one, maximising total |correlation|.

    Returns (units of x, their partners in y, the signed correlation of each pair).
    """
    corr = unit_correlations(x, y)
    rows, cols = linear_sum_assignment(-np.abs(corr))
    return rows, cols, corr[rows, cols]
