"""Hidden-barrier diagnostic: weight in CV bins whose frames belong to different, slowly exchanging sets.

eABF only biases along the CV xi. When the CV maps two metastable sets onto the same xi (a slow coordinate it does
not resolve), the bias cannot help crossing between them there: the share of each set in those bins is set by a
few rare crossings, drifts between time blocks and sets the run's free energy (on alanine dipeptide, C7ax vs the
rest at the same xi made walkers disagree by up to 14 kJ/mol). Nothing in xi itself shows it; the frames do.

Generic signal (no system-specific logic). The eABF grid is first coarsened (``coarsen``, by default the smallest
factor at which bins with ``min_frames`` frames hold half of the weight: one walker leaves ~10 frames per bin of a
30 x 30 grid). In each examined bin:

1. **two groups in feature space**: the model's input features of the bin's frames, centred, projected on each of
   the leading principal components of the within-bin features, split in two by the optimal 1D 2-means split
   (Otsu). The split must be *separated*: Ashman's D = sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2) (distance of the
   group means over their spreads) at least ``min_separation``; a single Gaussian split in two gives D = 2.65, a
   uniform one 3.46, so 4 asks for a real gap.
2. **slow mixing**: the group label of the bin's successive frames within a run (in time order, out-of-bin frames
   skipped) switches rarely compared with random mixing at the same shares: persistence
   ``1 - switches / (2 p q (n - 1))`` (0: independent frames, 1: never switches) at least ``strong_persistence``,
   or at least ``min_persistence`` with a group share that drifts between time blocks (runs cut in blocks) at
   least ``min_dispersion`` times the binomial variance. A fast-exchanging pair of states at the same xi is
   harmless for eABF (it relaxes at fixed xi) and gives a persistence near 0 and a dispersion near 1. The
   drift is what the weights feel: when walkers (or one walker's blocks) see different mixtures at the same xi,
   the pooled free energy depends on which set each happened to be in. Separation guards against the converse:
   a continuous, slowly diffusing coordinate split in two is persistent too, but not separated.
3. **at the same xi**: the weight counted is that of the eABF grid bins (fine bins) inside the examined bin that
   hold at least ``min_share`` of each group -- the issue's own definition of the overlap band, with the feature
   groups in place of the true sets. Two sets that xi puts side by side in one coarse bin are not counted.

For each bin the drift of the group share between time blocks is reported (the standard deviation of the
blocks' shares and its ratio to binomial noise, ``dispersion``; NaN with fewer than two blocks holding frames of
the bin, and then only ``strong_persistence`` can flag it).

:func:`hidden_barrier` returns a :class:`HiddenBarrierResult`: the fraction of the total weight in flagged bins
and ``flagged`` when it reaches ``weight_threshold`` (default 0.02, "a few percent of the weight").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["BinDiagnostic", "HiddenBarrierResult", "hidden_barrier", "bin_indices", "otsu_split"]

ArrayLike = Union[np.ndarray, Sequence[float]]


@dataclass
class BinDiagnostic:
    """One examined CV bin.

    Attributes
    ----------
    index : grid index per CV dimension.
    center : bin centre per CV dimension (CV units).
    n_frames : frames in the bin (all runs).
    weight : the bin's share of the total weight.
    share : the minority group's share of the bin's weight (0..0.5).
    separation : Ashman's D of the two groups along the chosen principal component.
    persistence : 1 - label switches / switches expected under random mixing (NaN: too few successive pairs).
    drift : standard deviation of the minority group's share between time blocks (NaN: fewer than 2 blocks).
    dispersion : drift^2 over the binomial variance of a block share (~1 for independent frames; NaN as drift).
    component : which principal component (0 = leading) gave the reported split.
    mixed_weight : share of the total weight in this bin's grid bins that hold both groups (>= ``min_share`` of
        each); 0 unless flagged.
    flagged : the bin meets every criterion.
    """

    index: Tuple[int, ...]
    center: Tuple[float, ...]
    n_frames: int
    weight: float
    share: float
    separation: float
    persistence: float
    drift: float
    dispersion: float
    component: int
    mixed_weight: float
    flagged: bool


@dataclass
class HiddenBarrierResult:
    """Outcome of :func:`hidden_barrier`.

    Attributes
    ----------
    coarsen : grid bins merged per dimension into one examined bin.
    weight_fraction : fraction of the total weight in flagged bins.
    n_flagged : number of flagged bins.
    n_examined : bins with at least ``min_frames`` frames (the others cannot be judged).
    examined_weight : fraction of the total weight in examined bins (coverage of the diagnostic).
    flagged : ``weight_fraction >= weight_threshold``: the run has a hidden barrier the CV does not resolve.
    weight_threshold : the threshold used.
    bins : per examined bin details, heaviest first.
    """

    coarsen: Tuple[int, ...]
    weight_fraction: float
    n_flagged: int
    n_examined: int
    examined_weight: float
    flagged: bool
    weight_threshold: float
    bins: List[BinDiagnostic] = field(default_factory=list)

    def as_dict(self, max_bins: Optional[int] = 20) -> Dict[str, Any]:
        """JSON-ready summary (for metrics.json): scalars and the first ``max_bins`` bins (flagged ones first)."""
        bins = sorted(self.bins, key=lambda b: (not b.flagged, -b.weight))
        if max_bins is not None:
            bins = bins[:max_bins]
        out = {k: v for k, v in asdict(self).items() if k != "bins"}
        out["bins"] = [{k: (list(v) if isinstance(v, tuple) else _finite_or_none(v)) for k, v in asdict(b).items()}
                       for b in bins]
        return out


def _finite_or_none(v):
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v


def bin_indices(xi: np.ndarray, grid_min: Sequence[float], width: Sequence[float], shape: Sequence[int],
                periodic: Optional[Sequence[bool]] = None) -> np.ndarray:
    """Flat grid index of each frame (-1 outside a non-periodic grid).

    Parameters
    ----------
    xi : (T, d) CV values.
    grid_min, width, shape : per dimension lower edge, bin width and number of bins.
    periodic : per dimension; periodic dimensions wrap.

    Returns
    -------
    (T,) int array, row-major (C order) flat index into ``shape``, -1 for frames outside the grid.
    """
    xi = np.asarray(xi, dtype=np.float64)
    xi = xi[:, None] if xi.ndim == 1 else xi
    d = xi.shape[1]
    gmin = np.broadcast_to(np.asarray(grid_min, dtype=np.float64), (d,))
    w = np.broadcast_to(np.asarray(width, dtype=np.float64), (d,))
    n = np.broadcast_to(np.asarray(shape, dtype=np.int64), (d,))
    per = np.zeros(d, bool) if periodic is None else np.broadcast_to(np.asarray(periodic, bool), (d,))
    idx = np.floor((xi - gmin) / w).astype(np.int64)
    idx = np.where(per, np.mod(idx, n), idx)
    inside = np.all((idx >= 0) & (idx < n), axis=1) & np.all(np.isfinite(xi), axis=1)
    flat = np.full(xi.shape[0], -1, dtype=np.int64)
    if inside.any():
        flat[inside] = np.ravel_multi_index(tuple(idx[inside].T), tuple(int(k) for k in n))
    return flat


def otsu_split(p: np.ndarray, min_group: int = 1) -> Tuple[float, np.ndarray]:
    """Optimal two-group split of 1D values (exact 1D 2-means, Otsu's threshold).

    Parameters
    ----------
    p : (n,) values.
    min_group : smallest allowed group size.

    Returns
    -------
    (threshold, labels): labels 1 for values above the threshold. With fewer than ``2 * min_group`` values,
    all labels are 0 and the threshold is +inf.
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    if n < max(2, 2 * min_group):
        return np.inf, np.zeros(n, dtype=np.int8)
    order = np.argsort(p, kind="stable")
    s = p[order]
    c = np.cumsum(s)
    k = np.arange(1, n)  # size of the lower group for a cut after position k-1
    mean_lo = c[:-1] / k
    mean_hi = (c[-1] - c[:-1]) / (n - k)
    between = k * (n - k) * (mean_hi - mean_lo) ** 2  # n^2 x between-class variance
    ok = (k >= min_group) & (n - k >= min_group) & (s[1:] > s[:-1])  # only cut between distinct values
    if not ok.any():
        return np.inf, np.zeros(n, dtype=np.int8)
    between = np.where(ok, between, -1.0)
    cut = int(np.argmax(between))
    thr = 0.5 * (s[cut] + s[cut + 1])
    return thr, (p > thr).astype(np.int8)


def _ashman_d(p: np.ndarray, labels: np.ndarray) -> float:
    a, b = p[labels == 0], p[labels == 1]
    if a.size < 2 or b.size < 2:
        return 0.0
    spread = np.sqrt(a.var() + b.var())
    gap = abs(b.mean() - a.mean())
    # why: identical-within-group values (no spread) with a gap are perfectly separated
    return float(np.sqrt(2.0) * gap / spread) if spread > 0 else (np.inf if gap > 0 else 0.0)


def _persistence(labels: np.ndarray, runs: np.ndarray) -> float:
    """1 - switches between successive frames of the same run / switches expected under random mixing."""
    same = runs[1:] == runs[:-1]
    pairs = int(same.sum())
    if pairs < 2:
        return np.nan
    q = labels.mean()
    expected = 2.0 * q * (1.0 - q) * pairs
    if expected <= 0:
        return np.nan
    switches = int(np.sum((labels[1:] != labels[:-1]) & same))
    return float(1.0 - switches / expected)


def _block_drift(labels: np.ndarray, w: np.ndarray, blocks: np.ndarray, minority: int,
                 min_block_frames: int) -> Tuple[float, float]:
    """Spread of the minority group's share between time blocks, and its ratio to binomial noise."""
    shares, counts = [], []
    for b in np.unique(blocks):
        m = blocks == b
        if m.sum() < min_block_frames or w[m].sum() <= 0:
            continue
        shares.append(float(w[m][labels[m] == minority].sum() / w[m].sum()))
        counts.append(int(m.sum()))
    if len(shares) < 2:
        return np.nan, np.nan
    shares_a, counts_a = np.asarray(shares), np.asarray(counts, dtype=np.float64)
    mean = float(np.average(shares_a, weights=counts_a))
    var = float(np.average((shares_a - mean) ** 2, weights=counts_a))
    # binomial variance of a block share with that block's frames, averaged over the blocks like var
    binom = mean * (1.0 - mean) * float(np.average(1.0 / counts_a, weights=counts_a))
    return float(np.sqrt(var)), (var / binom if binom > 0 else np.nan)


def _coarse_index(fine: np.ndarray, shape: Tuple[int, ...], factor: Tuple[int, ...]) -> Tuple[np.ndarray, tuple]:
    """Flat index on the grid of ``factor`` fine bins merged per dimension (-1 stays -1), and that grid's shape."""
    cshape = tuple(-(-n // f) for n, f in zip(shape, factor))
    ok = fine >= 0
    fidx = np.unravel_index(np.where(ok, fine, 0), shape)
    flat = np.where(ok, np.ravel_multi_index(tuple(i // f for i, f in zip(fidx, factor)), cshape), -1)
    return flat, cshape


def _coarsening(fine: np.ndarray, w: np.ndarray, shp: Tuple[int, ...], coarsen, min_frames: int,
                min_examined: float, min_coarsen: int) -> Tuple[int, ...]:
    d = len(shp)
    if isinstance(coarsen, str):
        if coarsen != "auto":
            raise ValueError(f"hidden_barrier: coarsen must be an int, one per dimension, or 'auto', got {coarsen!r}")
        total = w.sum()
        ok = fine >= 0
        for f in range(max(1, int(min_coarsen)), max(shp) + 1):
            fac = tuple(min(f, n) for n in shp)
            flat, _ = _coarse_index(fine[ok], shp, fac)
            counts = np.bincount(flat)
            if (w[ok][counts[flat] >= min_frames].sum() >= min_examined * total
                    or all(k >= n for k, n in zip(fac, shp))):
                return fac
        return tuple(shp)
    fac = tuple(int(k) for k in np.broadcast_to(np.asarray(coarsen, dtype=np.int64), (d,)))
    if any(k < 1 for k in fac):
        raise ValueError(f"hidden_barrier: coarsen factors must be >= 1, got {fac}")
    return tuple(min(k, n) for k, n in zip(fac, shp))


def _mixed_weight(labels: np.ndarray, w: np.ndarray, fine: np.ndarray, min_share: float) -> float:
    """Weight of the grid bins (``fine`` index per frame) in which each group holds >= ``min_share``."""
    ub, inv = np.unique(fine, return_inverse=True)
    wt = np.bincount(inv, weights=w, minlength=ub.size)
    w1 = np.bincount(inv, weights=w * (labels == 1), minlength=ub.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(wt > 0, w1 / wt, 0.0)
    return float(wt[np.minimum(q, 1.0 - q) >= min_share].sum())


def hidden_barrier(
    features: np.ndarray,
    xi: np.ndarray,
    weights: np.ndarray,
    runs: Optional[np.ndarray],
    grid_min: Union[float, Sequence[float]],
    width: Union[float, Sequence[float]],
    shape: Union[int, Sequence[int]],
    periodic: Optional[Union[bool, Sequence[bool]]] = None,
    *,
    min_frames: int = 50,
    min_share: float = 0.1,
    min_separation: float = 4.0,
    min_persistence: float = 0.5,
    strong_persistence: float = 0.8,
    min_dispersion: float = 4.0,
    n_components: int = 3,
    coarsen: Union[int, Sequence[int], str] = "auto",
    min_examined: float = 0.5,
    min_coarsen: int = 2,
    block_frames: Optional[int] = None,
    n_blocks: int = 5,
    weight_threshold: float = 0.02,
) -> HiddenBarrierResult:
    """Flag weight in CV bins holding two separated, slowly exchanging groups of frames (a hidden barrier).

    Parameters
    ----------
    features : (T, F) the CV model's input features per frame (e.g. aligned heavy-atom coordinates).
    xi : (T, d) or (T,) CV value per frame.
    weights : (T,) Boltzmann reweighting weights (normalised or not; non-negative).
    runs : (T,) run/walker id per frame, frames of each run in time order (None: one run). Label switches and
        time blocks are counted within runs only.
    grid_min, width, shape, periodic : the CV grid (per dimension or one value for all); use the eABF grid so that
        the bins are the ones the bias acts on.
    min_frames : bins with fewer frames are not examined.
    min_share : a grid bin counts as mixed when each group holds at least this share of its weight (the truth
        definition of the issue: bins holding >= 10 % of each side); the split of an examined (coarse) bin needs
        half of it overall.
    min_separation : smallest Ashman's D of the two groups (single Gaussian split: 2.65).
    min_persistence : smallest label persistence (0 random mixing, 1 no switch), together with a block
        dispersion of at least ``min_dispersion``.
    strong_persistence : a label persistence that flags on its own (no block dispersion needed).
    min_dispersion : smallest ratio of the between-block variance of the group share to its binomial variance
        (~1 for independent frames). The thresholds were set on alanine dipeptide, where phi tells the truth
        (benchmarks/RESULTS.md, hidden-barrier diagnostic).
    n_components : leading within-bin principal components tried for the split (why: the direction of largest
        variance in a bin may be a fast, harmless motion; the slow one may come second).
    coarsen : merge this many adjacent grid bins per dimension into one examined bin (int or one per dimension).
        ``"auto"`` (default): the smallest common factor from ``min_coarsen`` on for which bins with
        ``min_frames`` frames hold at least ``min_examined`` of the weight (why: a 2D 30 x 30 eABF grid leaves ~10
        frames per bin for one walker of 5000 frames, too few to judge a split).
    min_examined : share of the weight that the examined bins must hold for ``coarsen="auto"``.
    min_coarsen : smallest factor ``coarsen="auto"`` takes (why 2: where a learned CV squeezes a barrier below one
        grid bin, the two sets sit in neighbouring grid bins; only bins examined together show them as two groups
        in feature space; the mixing itself is still counted per grid bin, ``min_share``).
    block_frames : frames per time block within a run (None: each run cut into ``n_blocks`` equal blocks).
    n_blocks : blocks per run when ``block_frames`` is None.
    weight_threshold : ``flagged`` when the flagged bins hold at least this fraction of the total weight.

    Returns
    -------
    HiddenBarrierResult
    """
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    cv = np.asarray(xi, dtype=np.float64)
    cv = cv[:, None] if cv.ndim == 1 else cv
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    T = x.shape[0]
    if cv.shape[0] != T or w.shape[0] != T:
        raise ValueError(f"hidden_barrier: features ({T}), xi ({cv.shape[0]}) and weights ({w.shape[0]}) "
                         "must have one row per frame")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("hidden_barrier: weights must be finite and non-negative")
    r = np.zeros(T, dtype=np.int64) if runs is None else np.asarray(runs).reshape(-1)
    if r.shape[0] != T:
        raise ValueError(f"hidden_barrier: runs has {r.shape[0]} entries for {T} frames")
    d = cv.shape[1]
    gmin = np.broadcast_to(np.asarray(grid_min, dtype=np.float64), (d,))
    wid = np.broadcast_to(np.asarray(width, dtype=np.float64), (d,))
    shp = tuple(int(k) for k in np.broadcast_to(np.asarray(shape, dtype=np.int64), (d,)))
    per = np.zeros(d, bool) if periodic is None else np.broadcast_to(np.asarray(periodic, bool), (d,))
    total = float(w.sum())
    if total <= 0:
        raise ValueError("hidden_barrier: weights sum to zero")
    # Fine bins: the grid the bias acts on; examined bins: `factor` fine bins merged per dimension.
    fine = bin_indices(cv, gmin, wid, shp, per)
    factor = _coarsening(fine, w, shp, coarsen, min_frames, min_examined, min_coarsen)
    flat, cshp = _coarse_index(fine, shp, factor)
    cwid = wid * np.asarray(factor)

    # Time blocks within each run (position of the frame in its run).
    blocks = np.zeros(T, dtype=np.int64)
    _, inverse = np.unique(r, return_inverse=True)
    for k in range(int(inverse.max()) + 1 if T else 0):
        pos = np.nonzero(inverse == k)[0]
        size = block_frames if block_frames else max(1, int(np.ceil(pos.size / max(1, n_blocks))))
        blocks[pos] = k * (T + 1) + np.arange(pos.size) // size

    diag: List[BinDiagnostic] = []
    order = np.argsort(flat, kind="stable")  # stable: frames of a bin keep their time order
    fs = flat[order]
    starts = np.flatnonzero(np.r_[True, fs[1:] != fs[:-1]])
    ends = np.r_[starts[1:], fs.size]
    min_group = max(2, int(np.ceil(0.02 * min_frames)))
    for s, e in zip(starts, ends):
        b = int(fs[s])
        if b < 0 or e - s < min_frames:
            continue
        sel = order[s:e]
        wb = w[sel]
        wsum = float(wb.sum())
        if wsum <= 0:
            continue
        # why no detrending along xi: in a merged bin the two sets often sit at slightly different xi, and a fit
        # linear in xi then removes the very difference between them (measured on alanine dipeptide)
        xb = x[sel] - x[sel].mean(axis=0)
        # Leading principal directions of the within-bin features (SVD of the centred frames).
        _, sv, vt = np.linalg.svd(xb, full_matrices=False)
        best = None
        for c in range(min(n_components, vt.shape[0])):
            if sv[c] <= 1e-12 * max(sv[0], 1e-300):
                break
            proj = xb @ vt[c]
            _, lab = otsu_split(proj, min_group=min_group)
            q = float(wb[lab == 1].sum() / wsum)
            minority = 1 if q <= 0.5 else 0
            share = min(q, 1.0 - q)
            sep = _ashman_d(proj, lab)
            pers = _persistence(lab, r[sel])
            mixed = _mixed_weight(lab, wb, fine[sel], min_share)
            drift, disp = _block_drift(lab, wb, blocks[sel], minority, min_block_frames=max(5, min_frames // 10))
            slow = bool(np.isfinite(pers) and pers >= min_persistence
                        and (pers >= strong_persistence or (np.isfinite(disp) and disp >= min_dispersion)))
            ok = share >= 0.5 * min_share and sep >= min_separation and slow and mixed > 0
            # why: report the split that meets the criteria (most mixed weight), else the best separated one
            key = (ok, mixed if ok else sep)
            if best is None or key > best[0]:
                best = (key, c, share, sep, pers, drift, disp, mixed, ok)
        if best is None:
            continue
        _, c, share, sep, pers, drift, disp, mixed, ok = best
        idx = tuple(int(i) for i in np.unravel_index(b, cshp))
        center = tuple(float(gmin[k] + (idx[k] + 0.5) * cwid[k]) for k in range(d))
        diag.append(BinDiagnostic(index=idx, center=center, n_frames=int(sel.size), weight=wsum / total,
                                  share=share, separation=sep, persistence=pers, drift=drift, dispersion=disp,
                                  component=int(c), mixed_weight=(mixed / total if ok else 0.0), flagged=bool(ok)))
    diag.sort(key=lambda bd: -bd.weight)
    frac = float(sum(bd.mixed_weight for bd in diag if bd.flagged))
    return HiddenBarrierResult(
        coarsen=tuple(int(f) for f in factor),
        weight_fraction=frac,
        n_flagged=int(sum(bd.flagged for bd in diag)),
        n_examined=len(diag),
        examined_weight=float(sum(bd.weight for bd in diag)),
        flagged=bool(frac >= weight_threshold),
        weight_threshold=float(weight_threshold),
        bins=diag,
    )
