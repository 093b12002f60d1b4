"""Per-iteration diagnostics of the learned CV: regression scores and structural observables.

Plain numpy/mdtraj; everything takes frames (an :class:`mdtraj.Trajectory`) or CV
values already computed, so the driver, the report and the benchmarks share it.
"""

from __future__ import annotations

import math
from typing import Optional

import mdtraj
import numpy as np

__all__ = [
    "regression_score",
    "periodic_features",
    "dihedral_score",
    "basin_free_energy_difference",
    "support_growth",
    "basin_transitions",
    "basin_overlap",
    "chignolin_observables",
    "phi_psi",
]


def _design(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    return np.hstack([x, np.ones((x.shape[0], 1))])


def regression_score(target: np.ndarray, predictors: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """R^2 of the least-squares linear regression of ``target`` on ``predictors`` (with intercept).

    For a multi-column target the score is the mean of the per-column R^2 (as
    scikit-learn's ``LinearRegression.score``, the "regression score" of Belkacemi et al. 2022).

    Parameters
    ----------
    target
        ``(n,)`` or ``(n, d)`` values to explain, e.g. the new CV xi_k.
    predictors
        ``(n,)`` or ``(n, p)`` regressors, e.g. the previous CV xi_{k-1}.
    weights
        Optional non-negative frame weights (weighted least squares and weighted R^2).

    Returns
    -------
    float
        1 for a perfect linear relation; can be negative for a useless fit.
    """
    y = np.asarray(target, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    a = _design(predictors)
    if a.shape[0] != y.shape[0]:
        raise ValueError(f"target has {y.shape[0]} frames but predictors have {a.shape[0]}")
    if a.shape[0] < a.shape[1] + 1:
        raise ValueError(f"need more than {a.shape[1]} frames for a regression score, got {a.shape[0]}")
    w = np.ones(y.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    sw = np.sqrt(w / w.sum())[:, None]
    coef, *_ = np.linalg.lstsq(a * sw, y * sw, rcond=None)
    resid = ((y - a @ coef) ** 2 * (sw**2)).sum(axis=0)
    mean = (y * sw**2).sum(axis=0)
    total = ((y - mean) ** 2 * (sw**2)).sum(axis=0)
    scores = np.where(total > 0, 1.0 - resid / np.where(total > 0, total, 1.0), 1.0)
    return float(scores.mean())


def periodic_features(angles: np.ndarray) -> np.ndarray:
    """``(n, k)`` angles in radians -> ``(n, 2k)`` columns ``cos, sin`` (continuous across +-pi)."""
    angles = np.asarray(angles, dtype=np.float64)
    angles = angles[:, None] if angles.ndim == 1 else angles
    return np.hstack([np.cos(angles), np.sin(angles)])


def phi_psi(traj: mdtraj.Trajectory) -> np.ndarray:
    """Backbone (phi, psi) of alanine dipeptide, ``(n, 2)`` radians."""
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    if phi.shape[1] != 1 or psi.shape[1] != 1:
        raise ValueError(f"expected one phi and one psi dihedral, found {phi.shape[1]} and {psi.shape[1]}")
    return np.hstack([phi, psi])


def dihedral_score(cv: np.ndarray, angles: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """Regression score of the CV against (phi, psi) through their periodic features.

    The CV is regressed on ``cos/sin`` of the dihedrals, so a CV that encodes
    (phi, psi) smoothly scores near 1 (the seed's table reports ~0.97).
    """
    return regression_score(cv, periodic_features(angles), weights)


def basin_free_energy_difference(phi: np.ndarray, weights: np.ndarray, kT: float) -> float:
    """Delta F = F(phi > 0) - F(phi < 0) = -kT ln(P(phi > 0) / P(phi < 0)) from weighted frames, kJ/mol.

    Raises
    ------
    ValueError
        If either basin has no weight (the run never visited it).
    """
    phi = np.asarray(phi, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    pos, neg = w[phi > 0].sum(), w[phi <= 0].sum()
    if pos <= 0 or neg <= 0:
        raise ValueError("one of the phi basins was never visited: Delta F is undefined")
    return float(-kT * math.log(pos / neg))


def basin_transitions(phi: np.ndarray, n_runs: int = 1) -> int:
    """Committed transitions between phi < -0.5 rad (C7eq/C5 side) and C7ax (0.3 < phi < 2 rad) in a frame series.

    Frames in neither region (the barriers) keep the last committed state, so recrossings of the barrier top
    without reaching the other basin are not counted. The statistics of a reweighted Delta F between the two
    basins rest on this number: a few transitions leave it several kJ/mol off whatever the weights.
    ``n_runs``: ``phi`` holds that many runs of equal length one after another (walkers); the junctions between
    them are not transitions.

    Raises
    ------
    ValueError
        If the frames do not split into ``n_runs`` equal runs.
    """
    phi = np.asarray(phi)
    if n_runs < 1 or len(phi) % n_runs:
        raise ValueError(f"basin_transitions: {len(phi)} frames do not split into {n_runs} runs of equal length")
    total = 0
    for run in np.split(phi, n_runs):
        state = np.where(run < -0.5, 0, np.where((run > 0.3) & (run < 2.0), 1, -1))
        committed = state[state >= 0]
        total += int(np.count_nonzero(committed[1:] != committed[:-1]))
    return total


def basin_overlap(phi: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Share of the C7ax basin's (0.3 < phi < 2 rad) reweighted mass in CV bins that also hold C7eq/C5 frames
    (phi < -0.5 rad).

    ``labels``: the CV bin of each frame (any hashable integer per frame). Reweighting corrects the distribution
    *along* the CV only: inside one bin it takes the frames' relative populations as sampled. Where a bin holds
    both basins, their ratio there needs equilibrium across the phi barrier at fixed CV, a barrier the bias does
    not act on, so the reweighted Delta F inherits its sampling. 0: the CV separates the basins; 1: it does not.
    NaN without C7ax frames.
    """
    phi = np.asarray(phi, dtype=np.float64)
    labels = np.asarray(labels)
    w = np.asarray(weights, dtype=np.float64)
    ax = (phi > 0.3) & (phi < 2.0)
    total = w[ax].sum()
    if not ax.any() or total <= 0:
        return float("nan")
    shared = np.isin(labels, np.unique(labels[phi < -0.5]))
    return float(w[ax & shared].sum() / total)


def chignolin_observables(traj: mdtraj.Trajectory, folded: mdtraj.Trajectory) -> dict[str, np.ndarray]:
    """Folding observables of CLN025 (YYDPETGTWY) per frame.

    Returns a dict of ``(n,)`` arrays, nm:

    - ``rmsd_ca``: C-alpha RMSD to the folded (crystal) structure;
    - ``hbond_d3o_t6n``: Asp3 O - Thr6 N distance (turn hydrogen bond);
    - ``hbond_d3n_t8o``: Asp3 N - Thr8 O distance (hairpin hydrogen bond);
    - ``rg``: radius of gyration of the heavy atoms.
    """
    top = traj.topology
    ca = top.select("protein and name CA")
    ref_ca = folded.topology.select("protein and name CA")
    if len(ca) != len(ref_ca):
        raise ValueError(f"trajectory has {len(ca)} C-alpha atoms but the folded reference has {len(ref_ca)}")
    ref = folded.atom_slice(ref_ca)
    rmsd = mdtraj.rmsd(traj.atom_slice(ca), ref)

    def atom(resseq: int, resname: str, name: str) -> int:
        found = top.select(f"protein and resSeq {resseq} and resname {resname} and name {name}")
        if len(found) != 1:
            raise ValueError(f"chignolin observable: atom {resname}{resseq} {name} not found in the trajectory")
        return int(found[0])

    pairs = np.array([[atom(3, "ASP", "O"), atom(6, "THR", "N")], [atom(3, "ASP", "N"), atom(8, "THR", "O")]])
    dist = mdtraj.compute_distances(traj, pairs)
    heavy = traj.atom_slice(top.select("protein and not element H"))
    return {
        "rmsd_ca": rmsd,
        "hbond_d3o_t6n": dist[:, 0],
        "hbond_d3n_t8o": dist[:, 1],
        "rg": mdtraj.compute_rg(heavy),
    }


C7AX_DEFINITION = "C7ax (0 < phi < 2.3 rad) vs the rest"


def support_growth(bins: np.ndarray, runs: np.ndarray, weights: np.ndarray) -> float:
    """Share of the weight in CV bins that no run reached in the first half of its time: is sampling still growing?

    Parameters
    ----------
    bins : array (T,) of int
        Each frame's bin (any integer label; negative: outside the grid, ignored), frames of each run in time order.
    runs : array (T,) of int
        Each frame's run (walker).
    weights : array (T,)
        The frames' (reweighted) weights.

    Returns
    -------
    float
        0 when the second halves only revisit bins the first halves had found; near 1 when most of the weight
        lies where the runs only arrived late (a basin first entered near the end, say). NaN without weight.
    """
    bins, runs, w = np.asarray(bins).ravel(), np.asarray(runs).ravel(), np.asarray(weights, dtype=float).ravel()
    if not (bins.shape == runs.shape == w.shape):
        raise ValueError(f"bins, runs and weights need one entry per frame, got {bins.shape}, {runs.shape}, {w.shape}")
    early = np.zeros(bins.shape, dtype=bool)
    for r in np.unique(runs):
        idx = np.flatnonzero(runs == r)
        early[idx[: len(idx) // 2]] = True
    seen_early = np.unique(bins[early & (bins >= 0)])
    late_only = (bins >= 0) & ~np.isin(bins, seen_early)
    total = w.sum()
    return float(w[late_only].sum() / total) if total > 0 else float("nan")


def c7ax_labels(phi: np.ndarray) -> np.ndarray:
    """Per frame: 1 in C7ax (0 < phi < 2.3 rad), 0 elsewhere (C7eq, C5, alpha_R and the beta region past 2.3)."""
    phi = np.asarray(phi, dtype=np.float64)
    return ((phi > 0) & (phi < 2.3)).astype(int)


def c7ax_core_labels(phi: np.ndarray) -> np.ndarray:
    """Per frame: 1 in the core of C7ax (0.3 < phi < 2 rad), 0 on the C7eq/C5 side (phi < -0.5), -1 in between.

    The cores of :func:`basin_transitions`: for counting visits (:func:`aesample.estimators.basin_visits`) without
    counting recrossings of the barrier tops at phi = 0 and near 2.3 as visits.
    """
    phi = np.asarray(phi, dtype=np.float64)
    return np.where(phi < -0.5, 0, np.where((phi > 0.3) & (phi < 2.0), 1, -1))


def basin_report(phi: np.ndarray, weights: np.ndarray, kT: float, n_runs: int = 1, error: Optional[float] = None,
                 min_transitions: int = 4, min_ess: float = 10.0, error_from: Optional[str] = None) -> dict:
    """Delta F = F(C7ax) - F(rest) of a dipeptide from reweighted frames, reported only where it was sampled.

    Status ``"ok"`` needs at least ``min_transitions`` committed C7eq/C5 <-> C7ax transitions
    (:func:`basin_transitions`) and a Kish effective sample size of at least ``min_ess`` reweighted frames in each
    basin; otherwise ``"not sampled"`` with the reason, and ``value`` is still given for the record (one frame
    across the seam made a quickstart print 18.2 kJ/mol as if it were a result). ``error``: its error bar
    (e.g. block bootstrap), kJ/mol; ``error_from``: what it is, e.g. ``"bootstrap"``, ``"visits"`` or
    ``"walkers' SEM"``, reported beside it.
    """
    labels = c7ax_labels(phi)
    w = np.asarray(weights, dtype=np.float64)
    ess = []
    for side in (0, 1):
        ws = w[labels == side]
        ess.append(float(ws.sum() ** 2 / np.sum(ws ** 2)) if ws.sum() > 0 else 0.0)
    transitions = basin_transitions(phi, n_runs=n_runs)
    pa, pb = w[labels == 0].sum(), w[labels == 1].sum()
    value = float(-kT * math.log(pb / pa)) if pa > 0 and pb > 0 else None
    reasons = []
    if transitions < min_transitions:
        reasons.append(f"{transitions} transitions < {min_transitions}")
    if min(ess) < min_ess:
        reasons.append(f"effective frames {ess[1]:.1f} in C7ax, {ess[0]:.1f} in the rest (< {min_ess:g})")
    if value is None:
        reasons.append("no reweighted frame in " + ("C7ax" if pb <= 0 else "the rest"))
    err = float(error) if error is not None and np.isfinite(error) else None
    return {"definition": C7AX_DEFINITION, "value": value, "error": err,
            "error_from": error_from if err is not None else None,
            "status": "not sampled" if reasons or value is None else "ok", "reason": "; ".join(reasons),
            "transitions": int(transitions), "ess": {"c7ax": ess[1], "rest": ess[0]}}
