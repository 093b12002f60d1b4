"""Scores the benchmarks report, shared with their tests: Delta F from a free-energy profile along phi, the phi
marginal of a (phi, psi) surface, the reference files, ROC AUC, and time to tolerance.

Plain numpy; energies in kJ/mol, angles in rad, temperatures in K (kT from :func:`aesample.estimators.kT`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .estimators import kT

__all__ = ["REFERENCE_TEMPERATURE", "delta_f_or_nan", "half_delta_f", "marginal_phi", "delta_f_from_profile",
           "reference_phi_on", "load_reference", "auc", "ns_to_tolerance"]

#: Temperature of the alanine dipeptide references, K.
REFERENCE_TEMPERATURE = 300.0


def delta_f_or_nan(phi: np.ndarray, w: np.ndarray, temperature: float = REFERENCE_TEMPERATURE) -> float:
    """:func:`aesample.analysis.basin_free_energy_difference` (kJ/mol) of frames with weights ``w``, NaN where a
    basin has no weight (never visited)."""
    from .analysis import basin_free_energy_difference

    try:
        return basin_free_energy_difference(phi, w, kT(temperature))
    except ValueError:
        return float("nan")


def half_delta_f(phi: np.ndarray, w: np.ndarray, temperature: float) -> tuple[float, float]:
    """Delta F(phi) from the first and the second half of the frames, each with its own share of the weights."""
    h = len(phi) // 2
    return delta_f_or_nan(phi[:h], w[:h], temperature), delta_f_or_nan(phi[h:], w[h:], temperature)


def marginal_phi(fes: np.ndarray, temperature: float = REFERENCE_TEMPERATURE) -> np.ndarray:
    """F(phi) (min 0) from a 1D F(phi) or a 2D F[psi, phi] on the OpenMM grid (duplicate endpoint dropped)."""
    f = np.asarray(fes, dtype=np.float64)
    if f.ndim == 2:
        # drop the duplicated periodic endpoint in psi before integrating over it
        g = f[:-1, :]
        m = -kT(temperature) * np.log(np.exp(-(g - g.min()) / kT(temperature)).sum(axis=0))
    else:
        m = f.copy()
    return m - m.min()


def delta_f_from_profile(phi: np.ndarray, f_phi: np.ndarray, temperature: float = REFERENCE_TEMPERATURE,
                         fine: int = 7200) -> float:
    """F(phi > 0) - F(phi <= 0) in kJ/mol from F on a grid spanning [-pi, pi] (periodic, linear interpolation)."""
    phi = np.asarray(phi, dtype=np.float64)
    f = np.asarray(f_phi, dtype=np.float64)
    x = -np.pi + (np.arange(fine) + 0.5) * (2 * np.pi / fine)
    fi = np.interp(x, phi, f, period=2 * np.pi)
    p = np.exp(-(fi - fi.min()) / kT(temperature))
    return float(-kT(temperature) * math.log(p[x > 0].sum() / p[x <= 0].sum()))


def reference_phi_on(centers: np.ndarray, ref: dict) -> np.ndarray:
    """Reference F(phi) interpolated (periodic) at ``centers`` (rad), min 0 over those points."""
    r = np.interp(np.asarray(centers, dtype=np.float64), ref["phi"], ref["f_phi"], period=2 * np.pi)
    return r - r.min()


def load_reference(path: Path) -> dict:
    """Read a reference .npz written by ``benchmarks/reference_fes.py`` (or a phi-only .npy on
    ``linspace(-pi, pi, n)``); raises ValueError naming the file when its shape is not a 1D profile."""
    path = Path(path)
    if path.suffix == ".npy":
        f = np.load(path)
        if f.ndim != 1:
            raise ValueError(f"{path}: expected a 1D phi free energy, got shape {f.shape}")
        phi = np.linspace(-np.pi, np.pi, len(f))
        fp = f - f.min()
        return {"cvs": "phi", "phi": phi, "f_phi": fp, "delta_f": delta_f_from_profile(phi, fp),
                "ns": float("nan"), "source": str(path)}
    with np.load(path) as data:
        ref = {k: data[k] for k in data.files}
    ref["cvs"] = str(ref["cvs"])
    ref["delta_f"] = float(ref["delta_f"])
    ref["ns"] = float(ref["ns"])
    ref["source"] = str(path)
    return ref


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney) of ``score`` for the boolean labels ``positive``; ties count one half; NaN when a
    class is empty."""
    s = np.asarray(score, dtype=np.float64)
    pos, neg = s[positive], s[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    # average ranks for ties
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    cum = np.cumsum(counts)
    avg = cum - (counts - 1) / 2.0
    ranks[order] = avg[inv]
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def ns_to_tolerance(series: Sequence[tuple[float, float]], ref_df: float, tol: float) -> Optional[float]:
    """First ns after which |Delta F - ref| <= tol holds for every later point of ``series`` ((ns, Delta F)
    pairs), or None if never."""
    ok = [np.isfinite(d) and abs(d - ref_df) <= tol for _, d in series]
    for i in range(len(series)):
        if all(ok[i:]):
            return series[i][0]
    return None
