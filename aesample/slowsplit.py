"""Slow split: two sets of CV bins between which the walkers rarely went, a barrier between neighbouring bins.

The hidden-barrier diagnostic (:mod:`aesample.hiddenbarrier`) finds bins whose frames belong to two sets. A CV can
also hide a barrier *between* bins: it maps two metastable sets side by side, each bin holding one of them, and the
barrier between them lies across the boundary, along a coordinate the CV does not follow. The bias then flattens
the free energy along xi on both sides while the walkers cross between them only by chance. Measured on alanine
dipeptide along an iteration-0 learned CV: four smooth-bias walkers crossed into C7ax once each and stayed, with
the bias-corrected free energy flat over the whole sampled region and no bin mixing the two sides
(benchmarks/RESULTS.md, 2026-12-07).

Generic signal (no system-specific logic): the slowest process of the frames' moves between CV bins.

1. Transition counts between the occupied eABF grid bins at lag ``lag`` frames, within each run, symmetrised
   (a reversible estimate), on the largest connected set of bins.
2. The second eigenvector of the row-normalised counts (the slowest relaxation; its implied timescale
   ``-lag / ln lambda_2`` frames is reported) splits the bins by its sign into two sets.
3. Crossings: each run's frames in the *cores* of the two sets (the bins beyond the ``core`` quantile of the
   eigenvector on each side, frames weighted alike) are followed in time; a crossing is a passage from one core
   to the other (transition-based assignment, so recrossings of the boundary do not count).

The split is *flagged* when both sets hold at least ``min_share`` of the frames and the runs crossed fewer than
``min_crossings`` times per run on average: then the free energy difference between the two sets rests on a few
passages, whatever the bias did along xi. A CV along which the walkers cross freely (the bias flattened the
barrier along xi) gives many crossings of its slowest split and is not flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .hiddenbarrier import bin_indices

__all__ = ["SlowSplit", "slow_split", "split_flagged"]


@dataclass
class SlowSplit:
    """Outcome of :func:`slow_split`.

    Attributes
    ----------
    shares : fraction of the frames (inside the grid) in each of the two sets.
    crossings : per run, passages between the two sets' cores.
    crossings_per_run : their mean.
    timescale : implied timescale of the slowest process, frames (inf when the sets never exchanged).
    n_bins : occupied bins in the connected set examined.
    flagged : both sets hold ``min_share`` and the runs crossed fewer than ``min_crossings`` times per run.
    min_share, min_crossings : the thresholds used.
    """

    shares: List[float]
    crossings: List[int]
    crossings_per_run: float
    timescale: float
    n_bins: int
    flagged: bool
    min_share: float
    min_crossings: float
    set_of_bin: Dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready summary (for metrics.json; without the per-bin sets)."""
        out = {k: v for k, v in asdict(self).items() if k != "set_of_bin"}
        out["timescale"] = float(self.timescale) if np.isfinite(self.timescale) else None
        return out


def split_flagged(shares: Sequence[float], crossings_per_run: float, min_share: float, min_crossings: float) -> bool:
    """The flag of a slow split: both sets hold at least ``min_share`` of the frames and the runs crossed between
    them fewer than ``min_crossings`` times per run."""
    return bool(len(shares) > 0 and min(shares) >= min_share and crossings_per_run < min_crossings)


def _crossings(values: np.ndarray, low: float, high: float) -> int:
    """Passages between ``values <= low`` and ``values >= high`` (NaN and values between: no change)."""
    core = np.where(values >= high, 1, np.where(values <= low, -1, 0))
    core = core[core != 0]
    return int(np.count_nonzero(core[1:] != core[:-1])) if len(core) > 1 else 0


def slow_split(
    xi: np.ndarray,
    runs: Optional[np.ndarray],
    grid_min: Union[float, Sequence[float]],
    width: Union[float, Sequence[float]],
    shape: Union[int, Sequence[int]],
    periodic: Optional[Union[bool, Sequence[bool]]] = None,
    *,
    lag: int = 1,
    core: float = 0.5,
    min_share: float = 0.05,
    min_crossings: float = 4.0,
) -> SlowSplit:
    """The slowest split of the sampled CV bins into two sets, and how often each run crossed between them.

    Parameters
    ----------
    xi : (T, d) CV values of the frames, in time order within each run.
    runs : (T,) run (walker) id of each frame, or None for one run.
    grid_min, width, shape, periodic : the eABF grid (per dimension lower edge, bin width, bins, periodicity).
    lag : lag time of the transition counts, frames.
    core : a set's core is its bins beyond this quantile of the eigenvector (over the set's frames): 0.5 keeps
        the half of each set farthest from the boundary.
    min_share : smallest share of the frames in each set for a flag.
    min_crossings : crossings per run below which the split is flagged.

    Returns
    -------
    :class:`SlowSplit` (``flagged`` False and empty sets when fewer than two bins were ever connected).
    """
    xi = np.asarray(xi, dtype=np.float64)
    flat = bin_indices(xi, grid_min, width, shape, periodic)
    runs = np.zeros(len(flat), dtype=np.int64) if runs is None else np.asarray(runs)
    if len(runs) != len(flat):
        raise ValueError(f"slow_split: {len(runs)} run ids for {len(flat)} frames")
    occupied, state = np.unique(flat[flat >= 0], return_inverse=True)
    s = np.full(len(flat), -1, dtype=np.int64)
    s[flat >= 0] = state
    m = len(occupied)
    run_ids = list(dict.fromkeys(runs.tolist()))
    empty = SlowSplit([], [0] * len(run_ids), 0.0, float("nan"), 0, False, min_share, min_crossings)
    if m < 2:
        return empty
    counts = np.zeros((m, m))
    for r in run_ids:
        t = s[runs == r]
        a, b = t[:-lag], t[lag:]
        ok = (a >= 0) & (b >= 0)
        np.add.at(counts, (a[ok], b[ok]), 1.0)
    sym = counts + counts.T
    # scipy here, not at the top: the convergence check (aesample status) imports this module for split_flagged
    from scipy.sparse.csgraph import connected_components

    _, label = connected_components(sym > 0, directed=False)
    keep = label == np.bincount(label).argmax()
    if keep.sum() < 2:
        return empty
    sym = sym[np.ix_(keep, keep)]
    deg = sym.sum(1)
    # the symmetric form D^-1/2 C D^-1/2 has the row-normalised counts' eigenvalues
    vals, vecs = np.linalg.eigh(sym / np.sqrt(np.outer(deg, deg)))
    lam2 = float(vals[-2])
    v2 = vecs[:, -2] / np.sqrt(deg)  # right eigenvector of the row-normalised counts
    value = np.full(m, np.nan)
    value[np.nonzero(keep)[0]] = v2
    fv = np.where(s >= 0, value[np.maximum(s, 0)], np.nan)
    ok = np.isfinite(fv)
    pos, neg = ok & (fv > 0), ok & (fv <= 0)
    if not pos.any() or not neg.any():
        return empty
    shares = [float(pos.sum() / ok.sum()), float(neg.sum() / ok.sum())]
    high = float(np.quantile(fv[pos], core))
    low = float(np.quantile(fv[neg], 1.0 - core))
    crossings = [_crossings(fv[runs == r], low, high) for r in run_ids]
    per_run = float(np.mean(crossings))
    timescale = -lag / np.log(lam2) if 0.0 < lam2 < 1.0 else float("inf")
    flagged = split_flagged(shares, per_run, min_share, min_crossings)
    sets = {int(occupied[i]): int(value[i] > 0) for i in np.nonzero(keep)[0]}
    return SlowSplit(shares, crossings, per_run, float(timescale), int(keep.sum()), flagged, min_share,
                     min_crossings, sets)
