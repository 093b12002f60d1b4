"""Free-energy estimators for eABF accumulators (numpy/scipy only).

Conventions: grids are regular, bin centres ``gmin + (i + 1/2) * width``; arrays have the grid shape (C order,
first component slowest); gradient arrays add a last axis of length d. Energies in kJ/mol, CV in its own units.

* :func:`naive_gradient`: ``dF_kappa/dlambda = <kappa (lambda - xi)>_lambda`` per lambda bin (the ABF estimate).
* :func:`czar_gradient`: ``dA/dz = -kT d ln rho~(z)/dz + <kappa (lambda - z)>~_z`` (CZAR, Lesage et al. JPCB 2017)
  per bin; :func:`czar_free_energy`: A(z) from the same identity taken between neighbouring bins (what the
  package reports and reweights with).
* :func:`integrate_1d` (cumulative trapezoid) and :func:`integrate_2d` (least-squares / Poisson solve of
  ``grad A = g`` on the grid, periodic or not, with scipy.sparse).
* :func:`reweighting_weights`: per-frame ``w ∝ exp(-beta F_kappa(lambda))`` (Belkacemi et al. JCTC 2022);
  :func:`czar_reweighting_weights`: per-frame ``w ∝ exp(-beta A(xi)) / n(xi)`` from the CZAR free energy and the
  biased histogram of xi; :func:`reweighted_free_energy` (weighted histogram -> free energy).
* :func:`free_energy_drift`: RMS change of a grid free energy between two times, where the frames are.
* :func:`basin_visits` and :func:`visit_delta_f_error`: the error of a Delta F between two basins that the number
  of independent visits to each basin allows, whatever the estimator (a block bootstrap with blocks shorter than
  the time between crossings understates it).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "kT",
    "naive_gradient",
    "czar_gradient",
    "czar_free_energy",
    "integrate_1d",
    "integrate_2d",
    "integrate_gradient",
    "closure_1d",
    "reweighting_weights",
    "czar_reweighting_weights",
    "reweighted_free_energy",
    "interpolate_on_grid",
    "values_in_bins",
    "free_energy_drift",
    "walker_standard_error",
    "basin_visits",
    "visit_delta_f_error",
]


def kT(temperature: float) -> float:
    """Thermal energy in kJ/mol at ``temperature`` K (or a Quantity)."""
    from openmm import unit

    if unit.is_quantity(temperature):
        temperature = temperature.value_in_unit(unit.kelvin)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 K, got {temperature}")
    return float(unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)) * float(temperature)


def naive_gradient(grad_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean of ``kappa (lambda - xi)`` per lambda bin = ``dF_kappa/dlambda``; NaN in empty bins.

    ``grad_sum`` has the grid shape plus a last axis d, ``count`` the grid shape.
    """
    g = np.asarray(grad_sum, dtype=np.float64)
    n = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = g / n[..., None]
    out[n == 0] = np.nan
    return out


def _log_density_gradient(zcount: np.ndarray, width: Sequence[float], periodic: Sequence[bool]) -> np.ndarray:
    """d ln n / dz_k per bin: central differences where both neighbours along k are sampled, one-sided where only
    one is (open edges included), NaN where the bin or both neighbours are empty.

    One-sided differences at the fringe of the sampled region keep the CZAR estimate defined in every sampled
    bin with a sampled neighbour: with central differences only, the fringe bins of a narrow basin had no free
    energy, and their frames (12 % of one basin's frames in a measured alanine dipeptide run) no weight.
    """
    n = np.asarray(zcount, dtype=np.float64)
    d = n.ndim
    with np.errstate(divide="ignore"):
        ln = np.where(n > 0, np.log(np.where(n > 0, n, 1.0)), np.nan)
    out = np.full(n.shape + (d,), np.nan)
    for k in range(d):
        h = float(width[k])
        fwd = (np.roll(ln, -1, axis=k) - ln) / h  # (ln[i+1] - ln[i]) / h
        bwd = (ln - np.roll(ln, 1, axis=k)) / h  # (ln[i] - ln[i-1]) / h
        if not periodic[k]:  # no neighbour beyond an open edge
            last = [slice(None)] * d
            last[k] = -1
            fwd[tuple(last)] = np.nan
            first = [slice(None)] * d
            first[k] = 0
            bwd[tuple(first)] = np.nan
        both = np.isfinite(fwd) & np.isfinite(bwd)
        # the mean of the two one-sided differences is the central difference
        out[..., k] = np.where(both, 0.5 * (fwd + bwd), np.where(np.isfinite(fwd), fwd, bwd))
    return out


def czar_gradient(
    czar_sum: np.ndarray,
    zcount: np.ndarray,
    width: Sequence[float],
    temperature: float,
    periodic: Optional[Sequence[bool]] = None,
    min_count: int = 1,
) -> np.ndarray:
    """CZAR estimate of ``dA/dz`` (kJ/mol per CV unit) on the z = xi grid.

    ``dA/dz = -kT d ln n(z)/dz + <kappa (lambda - z)>_z`` where ``n`` is the biased histogram of xi and the average
    runs over the biased eABF samples in the z bin. Bins with fewer than ``min_count`` samples are NaN, and so is
    a component whose both neighbours along it are (one-sided differences where one neighbour is).
    """
    n_ok, mean, width, periodic = _czar_inputs(czar_sum, zcount, width, periodic, min_count)
    return -kT(temperature) * _log_density_gradient(n_ok, width, periodic) + mean


def _czar_inputs(czar_sum, zcount, width, periodic, min_count: int):
    """(counts with the bins below ``min_count`` zeroed, mean kappa (lambda - z) per bin (NaN where zeroed), widths
    (d,), periodic flags (d,)) of CZAR accumulators."""
    n = np.asarray(zcount, dtype=np.float64)
    d = n.ndim
    width = np.broadcast_to(np.asarray(width, dtype=np.float64), (d,))
    periodic = [False] * d if periodic is None else [bool(p) for p in np.broadcast_to(periodic, (d,))]
    n_ok = np.where(n >= min_count, n, 0.0)
    mean = naive_gradient(np.asarray(czar_sum, dtype=np.float64).reshape(n.shape + (d,)), n_ok)
    return n_ok, mean, width, periodic


def czar_free_energy(
    czar_sum: np.ndarray,
    zcount: np.ndarray,
    width: Sequence[float],
    temperature: float,
    periodic: Optional[Sequence[bool]] = None,
    min_count: int = 1,
) -> np.ndarray:
    """CZAR free energy A(z) (kJ/mol, minimum 0, NaN where not estimated) on the z = xi grid.

    CZAR's identity ``dA/dz = -kT d ln n(z)/dz + <kappa (lambda - z)>_z`` is taken across each pair of neighbouring
    bins i, j along axis k, ``A_j - A_i = -kT ln(n_j / n_i) + h_k (F_ik + F_jk) / 2`` with ``F`` the bins' mean
    ``kappa (lambda - z)``, and the links are solved by count-weighted least squares (as
    :func:`integrate_gradient`, weights ``n_i n_j / (n_i + n_j)``, the inverse variance of ``ln(n_j / n_i)``).
    Unlike differentiating ln n at bin centres (:func:`czar_gradient`), no one-sided differences are needed at the
    edge of the sampled region, and a link sees the density ratio of exactly the two bins it joins: where a 2D CV's
    sampled region is a thin curved band, centred differences mixed the band's walls into the gradient along it
    (1-2 kJ/mol between basins of one side measured along a learned CV; benchmarks/RESULTS.md). Around a
    periodic axis the ln n terms cancel, so only the mean force can leave a closure.

    Parameters
    ----------
    czar_sum : array, grid shape + (d,)
        Per xi bin the sum of ``kappa (lambda - xi)`` over its samples (kJ/mol per CV unit).
    zcount : array, grid shape
        Samples per xi bin.
    width : sequence of float
        Bin widths (CV units).
    temperature : float
        K.
    periodic : sequence of bool, optional
        Periodicity per axis (default: none).
    min_count : int
        Bins with fewer samples take no part.
    """
    n_ok, mean, width, periodic = _czar_inputs(czar_sum, zcount, width, periodic, min_count)
    ri, rj, b, w = _link_equations(mean, width, periodic, n_ok, None)
    flat = n_ok.reshape(-1)
    b = b - kT(temperature) * np.log(flat[rj] / flat[ri])
    return _solve_links(ri, rj, b, w, n_ok.shape)


def grid_links(shape: Sequence[int], periodic: Sequence[bool]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of neighbouring bins of a regular grid: flat (C order) indices ``i``, ``j`` and the ``axis`` each pair
    lies along, axis by axis. Along a periodic axis of more than two bins the last bin links to the first (the
    seam); two bins are already neighbours once."""
    shape = tuple(int(n) for n in shape)
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    out_i, out_j, out_k = [], [], []
    for k in range(len(shape)):
        if shape[k] < 2:
            continue
        if periodic[k] and shape[k] > 2:
            ii, jj = idx, np.roll(idx, -1, axis=k)
        else:
            ii = idx[tuple(slice(0, shape[k] - 1) if a == k else slice(None) for a in range(len(shape)))]
            jj = idx[tuple(slice(1, shape[k]) if a == k else slice(None) for a in range(len(shape)))]
        out_i.append(ii.ravel())
        out_j.append(jj.ravel())
        out_k.append(np.full(ii.size, k))
    if not out_i:
        empty = np.zeros(0, dtype=int)
        return empty, empty, empty
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_k)


def _link_equations(g: np.ndarray, width: Sequence[float], periodic: Sequence[bool], counts: Optional[np.ndarray],
                    mask: Optional[np.ndarray]):
    """Finite-difference equations ``A_j - A_i = h_k (g_ik + g_jk) / 2`` between neighbouring bins along each axis.

    Returns (i, j, rhs, weight) arrays over the links (:func:`grid_links`) whose both ends have a finite k-th
    gradient component (and ``mask``); periodic axes wrap (the seam link included). ``weight`` is
    ``n_i n_j / (n_i + n_j)``, the inverse variance of the mean of two bin means whose variances go as ``1/n``; 1
    without ``counts``.
    """
    shape = g.shape[:-1]
    d = len(shape)
    ok = np.isfinite(g)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool).reshape(shape)[..., None]
    ii, jj, kk = grid_links(shape, periodic)
    flat_g, flat_ok = g.reshape(-1, d), ok.reshape(-1, d)
    use = flat_ok[ii, kk] & flat_ok[jj, kk]
    ii, jj, kk = ii[use], jj[use], kk[use]
    rhs = 0.5 * (flat_g[ii, kk] + flat_g[jj, kk]) * np.asarray(width, dtype=np.float64)[kk]
    if counts is None:
        return ii, jj, rhs, np.ones(len(ii))
    n = np.asarray(counts, dtype=np.float64).reshape(-1)
    a, b = n[ii], n[jj]
    with np.errstate(invalid="ignore", divide="ignore"):
        return ii, jj, rhs, np.where(a + b > 0, a * b / (a + b), 0.0)


def integrate_gradient(
    gradient: np.ndarray,
    width: Sequence[float],
    periodic: Sequence[bool],
    counts: Optional[np.ndarray] = None,
    mask: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Free energy A on a regular grid (1D, 2D or 3D) whose finite differences best match a mean-force field.

    Each pair of neighbouring bins along axis k (wrapping on periodic axes, the seam included) whose k-th gradient
    components are both finite gives one equation ``(A_j - A_i) / h_k = (g_ik + g_jk) / 2``. The equations are
    solved in the weighted least-squares sense -- a discrete Poisson problem with natural (Neumann) boundaries at
    the edge of the sampled domain, solved sparsely with scipy -- weighting each by ``n_i n_j / (n_i + n_j)`` when
    ``counts`` (the samples per bin behind each gradient) are given: the inverse variance of the link's estimate.
    Unweighted, a fringe bin with a handful of samples pulls the solution as hard as a basin bin with 10^5 and its
    noise leaks into basin-to-basin differences.

    In 1D without loops (open grids, or a periodic grid with a gap) the solution is the trapezoid integral,
    whatever the weights; on a fully sampled periodic grid the closure ``∮ A' dz`` (see :func:`closure_1d`) is
    spread over the links in inverse proportion to their weights, so A is continuous across the seam.

    Parameters
    ----------
    gradient : array, grid shape + (d,) (or (n,) for 1D)
        Mean force dA/dz per bin, kJ/mol per CV unit; NaN where not estimated.
    width : sequence of float
        Bin widths per axis (CV units).
    periodic : sequence of bool
        Periodicity per axis.
    counts : array of grid shape, optional
        Samples per bin (weights of the equations); None: all equations weigh the same.
    mask : bool array of grid shape, optional
        Bins to use (default: all with finite gradients).

    Returns
    -------
    numpy.ndarray
        A (grid shape), minimum 0; NaN outside the largest connected set of linked bins.
    """
    g = np.asarray(gradient, dtype=np.float64)
    width = np.atleast_1d(np.asarray(width, dtype=np.float64))
    if g.ndim == 1:
        g = g[:, None]
    d = g.shape[-1]
    shape = g.shape[:-1]
    if len(shape) != d or len(width) != d:
        raise ValueError(f"integrate_gradient: gradient of shape {g.shape} does not match {len(width)} bin widths "
                         "(expected grid shape + (d,))")
    periodic = [bool(p) for p in np.broadcast_to(np.asarray(periodic, dtype=bool), (d,))]
    ri, rj, b, w = _link_equations(g, width, periodic, counts, mask)
    return _solve_links(ri, rj, b, w, tuple(shape))


def _solve_links(ri: np.ndarray, rj: np.ndarray, b: np.ndarray, w: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Weighted least squares A[rj] - A[ri] = b over the links with weight w > 0 (:func:`_link_equations`), on the
    largest connected set of linked bins; NaN elsewhere, minimum 0, grid ``shape``."""
    import scipy.sparse as sp
    import scipy.sparse.csgraph as csg
    import scipy.sparse.linalg as spla
    nn = int(np.prod(shape))
    out = np.full(nn, np.nan)
    keep_eq = w > 0
    ri, rj, b, w = ri[keep_eq], rj[keep_eq], b[keep_eq], w[keep_eq]
    if len(b) == 0:
        return out.reshape(shape)
    # the largest connected set of linked bins (by total weight of its links)
    adj = sp.csr_matrix((np.ones(len(b)), (ri, rj)), shape=(nn, nn))
    _, labels = csg.connected_components(adj, directed=False)
    link_weight = np.bincount(labels[ri], weights=w, minlength=labels.max() + 1)
    main = int(np.argmax(link_weight))
    use = labels[ri] == main
    ri, rj, b, w = ri[use], rj[use], b[use], w[use]
    nodes = np.unique(np.concatenate([ri, rj]))
    pos = np.full(nn, -1)
    pos[nodes] = np.arange(len(nodes))
    m = len(b)
    D = sp.csr_matrix((np.concatenate([-np.ones(m), np.ones(m)]),
                       (np.concatenate([np.arange(m)] * 2), np.concatenate([pos[ri], pos[rj]]))),
                      shape=(m, len(nodes)))
    # weights normalised to mean 1 keep the normal equations well scaled whatever the sample counts
    W = sp.diags(w / w.mean())
    L = (D.T @ W @ D).tocsc()
    r = D.T @ (W @ b)
    # gauge: pin the first node (drop its row and column; the reduced Laplacian is positive definite)
    sol = np.zeros(len(nodes))
    if len(nodes) > 1:
        sol[1:] = spla.spsolve(L[1:, 1:], r[1:])
    out[nodes] = sol
    out -= np.nanmin(out)
    return out.reshape(shape)


def closure_1d(gradient: np.ndarray, width: float) -> float:
    """``∮ A'(z) dz`` around a fully sampled periodic 1D grid (trapezoid, kJ/mol); NaN if any bin is missing.

    Zero for an exact gradient; its size says how much the estimator's noise or bias had to be spread around the
    circle by :func:`integrate_gradient` to make A continuous across the seam.
    """
    g = np.asarray(gradient, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(g)):
        return float("nan")
    return float(np.sum(0.5 * (g + np.roll(g, -1))) * float(width))


def integrate_1d(gradient: np.ndarray, width: float, periodic: bool = False,
                 counts: Optional[np.ndarray] = None) -> np.ndarray:
    """1D free energy from a gradient on bin centres (:func:`integrate_gradient`), minimum 0.

    Open grids (or periodic ones with a gap): the trapezoid integral over the longest run of finite values (the
    rest NaN). Periodic grids sampled all round: the least-squares solution with the seam link, continuous there.
    """
    g = np.asarray(gradient, dtype=np.float64).reshape(-1)
    return integrate_gradient(g[:, None], [width], [periodic], counts=counts)


def integrate_2d(
    gradient: np.ndarray,
    width: Sequence[float],
    periodic: Sequence[bool] = (False, False),
    mask: Optional[np.ndarray] = None,
    counts: Optional[np.ndarray] = None,
) -> np.ndarray:
    """2D free energy (gradient shape (n0, n1, 2)); see :func:`integrate_gradient`."""
    g = np.asarray(gradient, dtype=np.float64)
    if g.ndim != 3 or g.shape[2] != 2:
        raise ValueError(f"integrate_2d: gradient must have shape (n0, n1, 2), got {g.shape}")
    return integrate_gradient(g, width, periodic, counts=counts, mask=mask)


def interpolate_on_grid(
    values: np.ndarray, grid_min: Sequence[float], width: Sequence[float], points: np.ndarray,
    periodic: Sequence[bool],
) -> np.ndarray:
    """Linear interpolation of a grid function (bin centres) at points (M, d); clamps at open edges.

    NaN grid values are replaced by the maximum finite value before interpolating (unsampled = high energy).
    """
    from scipy.interpolate import RegularGridInterpolator

    v = np.asarray(values, dtype=np.float64)
    d = v.ndim
    pts = np.asarray(points, dtype=np.float64).reshape(-1, d)
    grid_min = np.asarray(grid_min, dtype=np.float64).reshape(d)
    width = np.asarray(width, dtype=np.float64).reshape(d)
    fill = np.nanmax(v) if np.isfinite(v).any() else 0.0
    v = np.where(np.isfinite(v), v, fill)
    axes = []
    pts = pts.copy()
    for k in range(d):
        n = v.shape[k]
        c = grid_min[k] + width[k] * (np.arange(n) + 0.5)
        if periodic[k]:
            span = width[k] * n
            pts[:, k] = grid_min[k] + np.mod(pts[:, k] - grid_min[k], span)
            # pad one bin each side so every point in [min, max) is inside the interpolation range
            c = np.concatenate([[c[0] - width[k]], c, [c[-1] + width[k]]])
            v = np.concatenate([np.take(v, [n - 1], axis=k), v, np.take(v, [0], axis=k)], axis=k)
        else:
            pts[:, k] = np.clip(pts[:, k], c[0], c[-1])
        axes.append(c)
    return RegularGridInterpolator(axes, v)(pts)


def reweighting_weights(
    lambdas: np.ndarray,
    f_kappa: np.ndarray,
    grid_min: Sequence[float],
    width: Sequence[float],
    temperature: float,
    periodic: Sequence[bool],
) -> np.ndarray:
    """Per-frame Boltzmann weights ``w_t ∝ exp(-beta F_kappa(lambda_t))``, normalised to sum 1.

    ``f_kappa`` is the free energy of the extended variable, the integrated naive estimator on the lambda grid
    (kJ/mol); it is interpolated linearly at each frame's lambda (``lambdas`` shape (T, d) or (T,)). The ABF bias
    potential on lambda is ``-F_kappa``, so the biased density carries a factor ``exp(+beta F_kappa)`` that the
    weight removes. (The form ``exp(+beta F_kappa)`` is right only where ``F_kappa`` denotes that bias
    potential; with the free energy, as here, the sign is minus. The old ``+`` sign here turned reweighted
    free energies upside down.)
    """
    lam = np.asarray(lambdas, dtype=np.float64)
    f = np.asarray(f_kappa, dtype=np.float64)
    if lam.ndim == 1:
        lam = lam[:, None]
    fk = interpolate_on_grid(f, grid_min, width, lam, periodic)
    x = -fk / kT(temperature)
    x -= x.max()
    w = np.exp(x)
    return w / w.sum()


def _bin_index(points: np.ndarray, grid_min: Sequence[float], width: Sequence[float], shape: Sequence[int],
               periodic: Sequence[bool]) -> Tuple[np.ndarray, np.ndarray]:
    """Bin indices (M, d) of points (M, d), wrapped on periodic and clipped on open components, and a flag per
    point that it lies inside the grid (always true on periodic components)."""
    d = len(shape)
    gmin = np.asarray(grid_min, dtype=np.float64).reshape(d)
    w = np.asarray(width, dtype=np.float64).reshape(d)
    idx = np.floor((np.asarray(points, dtype=np.float64).reshape(-1, d) - gmin) / w).astype(int)
    inside = np.ones(len(idx), dtype=bool)
    for k in range(d):
        n = int(shape[k])
        if periodic[k]:
            idx[:, k] = np.mod(idx[:, k], n)
        else:
            inside &= (idx[:, k] >= 0) & (idx[:, k] < n)
            idx[:, k] = np.clip(idx[:, k], 0, n - 1)
    return idx, inside


def values_in_bins(values: np.ndarray, grid_min: Sequence[float], width: Sequence[float], periodic: Sequence[bool],
                   points: np.ndarray) -> np.ndarray:
    """Grid values in the bin of each point (M, d) or (M,); NaN for points off an open grid."""
    v = np.asarray(values, dtype=np.float64)
    idx, inside = _bin_index(points, grid_min, width, v.shape, periodic)
    out = v[tuple(idx.T)].copy()
    out[~inside] = np.nan
    return out


def czar_reweighting_weights(
    xis: np.ndarray,
    free_energy: np.ndarray,
    zcount: np.ndarray,
    grid_min: Sequence[float],
    width: Sequence[float],
    temperature: float,
    periodic: Sequence[bool],
) -> np.ndarray:
    """Per-frame Boltzmann weights from the CZAR free energy of xi: ``w_t ∝ exp(-beta A(xi_t)) / n(xi_t)``.

    ``A`` is the CZAR free energy on the z = xi grid and ``n`` the biased histogram of xi accumulated during the
    same run (``zcount``), both read in the bin of each frame's xi (``xis`` shape (T, d) or (T,)). The frames of
    a bin then carry, together, that bin's unbiased probability ``exp(-beta A)``. The eABF bias acts on the atoms
    only through xi, so this is exact once xi's conditional distributions are sampled, whatever the bias on
    lambda was and however fast it changed -- unlike ``exp(-beta F_kappa(lambda))`` (:func:`reweighting_weights`),
    which also needs the atoms to have relaxed at each lambda (CZAR's point, Lesage et al. JPCB 2017).

    Frames whose xi lies off the grid, in a bin without samples or where ``A`` is undefined get weight 0 (their
    biased density is unknown). Normalised to sum 1.

    Raises
    ------
    ValueError
        If no frame can be weighted.
    """
    z = np.asarray(xis, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    a = np.asarray(free_energy, dtype=np.float64)
    n = np.asarray(zcount, dtype=np.float64).reshape(a.shape)
    if z.shape[1] != a.ndim:
        raise ValueError(f"czar_reweighting_weights: xis have {z.shape[1]} components, the grid has {a.ndim}")
    idx, inside = _bin_index(z, grid_min, width, a.shape, periodic)
    cells = tuple(idx.T)
    ok = inside & np.isfinite(a[cells]) & (n[cells] > 0)
    if not ok.any():
        raise ValueError("czar_reweighting_weights: no frame lies in a sampled bin of the CZAR free energy")
    x = np.full(len(z), -np.inf)
    x[ok] = -a[cells][ok] / kT(temperature) - np.log(n[cells][ok])
    x -= x[ok].max()
    w = np.exp(x)
    return w / w.sum()


def free_energy_drift(
    f_early: np.ndarray, f_late: np.ndarray, points: np.ndarray, grid_min: Sequence[float], width: Sequence[float],
    periodic: Sequence[bool],
) -> Tuple[float, float]:
    """RMS change between two estimates of the same grid free energy, at the frames' grid points (kJ/mol).

    Both grids are read in the bin of each frame's point (shape (T, d) or (T,): lambda for F_kappa, xi for the
    CZAR free energy); frames whose bin is empty in either grid are left out; the mean difference over the rest is
    removed (free energies are defined up to a constant). Averaging over frames weights the grid where the run
    actually went. With the free energy at half time and at the end of one eABF run, this is how much it -- hence
    every frame's reweighting weight -- still moved in the second half: a value well below kT says it settled.

    Returns
    -------
    rms : float
        NaN when no frame is in a bin estimated by both grids.
    fraction : float
        Fraction of the frames compared.
    """
    a = np.asarray(f_early, dtype=np.float64)
    b = np.asarray(f_late, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"free_energy_drift: grids differ in shape ({a.shape} vs {b.shape})")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts[:, None]
    idx, _ = _bin_index(pts, grid_min, width, a.shape, periodic)
    both = np.isfinite(a) & np.isfinite(b)
    use = both[tuple(idx.T)]
    if not use.any():
        return float("nan"), 0.0
    cells = tuple(idx[use].T)
    diff = b[cells] - a[cells]
    diff -= diff.mean()
    return float(np.sqrt(np.mean(diff**2))), float(use.mean())


def walker_standard_error(
    f_walkers: Sequence[np.ndarray], f_pooled: np.ndarray, points: np.ndarray, grid_min: Sequence[float],
    width: Sequence[float], periodic: Sequence[bool],
) -> Tuple[float, float]:
    """Standard error of a pooled grid free energy from the scatter of independent walkers' own estimates (kJ/mol).

    Each walker's free energy is compared with the pooled one at the pooled frames' grid points as in
    :func:`free_energy_drift` (constant offset removed, frames in bins a grid lacks left out). With n walkers whose
    errors are independent with variance s^2 and the pool their average, a walker deviates from the pool by
    s^2 (n - 1) / n on average, so the mean squared deviation over walkers divided by n - 1 estimates the pool's
    squared standard error s^2 / n. Unlike the drift, which compares one run with itself, this sees errors that a
    whole run shares (a slow process it sampled once or not at all).

    Returns
    -------
    sem : float
        NaN with fewer than two walkers or no frame compared.
    fraction : float
        Smallest fraction of frames compared over the walkers.
    """
    n = len(f_walkers)
    if n < 2:
        return float("nan"), 0.0
    rms, fractions = [], []
    for f in f_walkers:
        r, frac = free_energy_drift(f, f_pooled, points, grid_min, width, periodic)
        rms.append(r)
        fractions.append(frac)
    rms = np.asarray(rms)
    if not np.all(np.isfinite(rms)):
        return float("nan"), float(min(fractions))
    return float(np.sqrt(np.mean(rms**2) / (n - 1))), float(min(fractions))


def reweighted_free_energy(
    values: np.ndarray,
    weights: Optional[np.ndarray],
    bins,
    temperature: float,
    range_=None,
) -> Tuple[np.ndarray, list]:
    """Free energy ``-kT ln p`` (min 0, NaN for empty bins) from a weighted histogram of ``values`` (T, d).

    Returns ``(F, edges)`` as :func:`numpy.histogramdd` gives them.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    h, edges = np.histogramdd(v, bins=bins, range=range_, weights=weights)
    with np.errstate(divide="ignore"):
        F = -kT(temperature) * np.log(h)
    F[~np.isfinite(F)] = np.nan
    if np.isfinite(F).any():
        F -= np.nanmin(F)
    return F, edges


def _run_bounds(n: int, n_runs) -> list:
    """[(start, stop)] of the runs in a series of ``n`` frames: ``n_runs`` equal runs or a sequence of lengths."""
    if np.ndim(n_runs) == 0:
        k = int(n_runs)
        if k < 1 or n % k:
            raise ValueError(f"{n} frames do not split into {n_runs} runs of equal length")
        lengths = [n // k] * k
    else:
        lengths = [int(x) for x in n_runs]
        if sum(lengths) != n or min(lengths, default=0) < 0:
            raise ValueError(f"run lengths {lengths} do not add up to the {n} frames")
    ends = np.cumsum(lengths)
    return list(zip((ends - lengths).tolist(), ends.tolist()))


def basin_visits(labels: np.ndarray, n_runs=1, min_dwell: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Split a frame series into visits to basins: (visit index of each frame, basin label of each visit).

    A visit runs from the frame where the series commits to a basin to the frame before it commits to another one.
    Frames labelled -1 (in no basin: barriers, transition regions) and excursions into another basin shorter than
    ``min_dwell`` consecutive frames (recrossings of a basin edge that lies on a barrier) stay in the current visit.
    Frames before the first commitment get visit index -1.

    Parameters
    ----------
    labels : array (T,) of int
        Per frame: a basin label >= 0, or -1 for none.
    n_runs : int or sequence of int
        ``labels`` holds that many runs of equal length one after another (walkers), or runs of these lengths:
        a visit never spans two runs.
    min_dwell : int
        Frames another basin must hold in a row before the series commits to it (1: every change counts).

    Returns
    -------
    visit : array (T,) of int
    basin : array (number of visits,) of int

    Raises
    ------
    ValueError
        If the frames do not split into ``n_runs`` runs of equal length, or ``min_dwell`` < 1.
    """
    lab = np.asarray(labels, dtype=np.int64).ravel()
    try:
        bounds = _run_bounds(len(lab), n_runs)
    except ValueError as exc:
        raise ValueError(f"basin_visits: {exc}") from None
    if min_dwell < 1:
        raise ValueError(f"basin_visits: min_dwell must be >= 1, got {min_dwell}")
    visit = np.full(len(lab), -1, dtype=np.int64)
    basins: list = []
    for lo, hi in bounds:
        seg = lab[lo:hi]
        if seg.size == 0:
            continue
        # run-length encoding: (start, label, length) of each stretch of equal labels
        starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
        lengths = np.diff(np.r_[starts, seg.size])
        current = None  # basin of the open visit
        for start, length in zip(starts, lengths):
            b = int(seg[start])
            if b >= 0 and b != current and (current is None or length >= min_dwell):
                basins.append(b)
                current = b
            if current is not None:
                visit[lo + start:lo + start + length] = len(basins) - 1
    return visit, np.asarray(basins, dtype=np.int64)


def visit_delta_f_error(labels: np.ndarray, weights: np.ndarray, kT: float, n_runs: int = 1,
                        min_dwell: int = 1) -> dict:
    """Error of ``Delta F = F_1 - F_0 = -kT ln(P_1 / P_0)`` from reweighted frames that the basin visits allow.

    The population of a basin is the sum of its visits' weights. Visits of a metastable basin are independent
    (the system forgets its past at each crossing), so with ``n`` visits whose weight sums have the squared
    coefficient of variation ``c`` the relative variance of the basin's total is ``c / n``. Exit times of a
    memoryless (Markov) basin are exponential, ``c = 1``, and the total is Gamma distributed with
    ``var(ln total) = trigamma(n)``; here ``c`` is the larger of 1 and the visits' own squared coefficient of
    variation (reweighting makes visits that reached a basin's minimum weigh far more than fringe visits), and
    ``var(ln P_b) = trigamma(n_b / c_b)``. Then ``var(Delta F) = kT^2 (var(ln P_0) + var(ln P_1))``: for a
    two-state process with ``N`` crossings, about ``2 kT^2 / (N / 2)``. It is a lower bound in the sense that it
    ignores the error of the weights themselves (which a block bootstrap of the estimator sees): with a handful
    of crossings it dominates, and a block bootstrap whose blocks are shorter than the time between crossings
    misses it (measured: 1.3-2.3 kJ/mol per walker against a walker-to-walker SD of 4.8 on alanine dipeptide).

    Parameters
    ----------
    labels : array (T,) of int
        Per frame: 0 in basin 0, 1 in basin 1, -1 in neither (see :func:`basin_visits`).
    weights : array (T,)
        Per-frame reweighting weights (any normalisation).
    kT : float
        kJ/mol.
    n_runs, min_dwell
        As :func:`basin_visits`.

    Returns
    -------
    dict
        ``error`` (kJ/mol; ``inf`` if a basin has no visit with weight), ``visits`` ([n_0, n_1]),
        ``cv2`` ([c_0, c_1], the squared coefficients of variation used, >= 1) and ``transitions`` (commitments
        to a new basin within runs).
    """
    from scipy.special import polygamma

    w = np.asarray(weights, dtype=np.float64).ravel()
    visit, basin = basin_visits(labels, n_runs=n_runs, min_dwell=min_dwell)
    if w.shape != visit.shape:
        raise ValueError(f"visit_delta_f_error: {w.size} weights for {visit.size} labels")
    lab = np.asarray(labels).ravel()
    inside = (visit >= 0) & (lab >= 0) & (lab == np.where(visit >= 0, basin[np.maximum(visit, 0)], -2))
    sums = np.bincount(visit[inside], weights=w[inside], minlength=len(basin))
    opened = sum(bool(np.any(visit[lo:hi] >= 0)) for lo, hi in _run_bounds(len(visit), n_runs))
    transitions = int(len(basin) - opened)  # each run's first visit is no transition
    var, visits, cv2 = 0.0, [], []
    for b in (0, 1):
        s = sums[(basin == b) & (sums > 0)]
        visits.append(int(s.size))
        if s.size == 0:
            cv2.append(float("nan"))
            var = float("inf")
            continue
        c = max(1.0, float(np.var(s, ddof=1) / np.mean(s) ** 2)) if s.size > 1 else 1.0
        cv2.append(c)
        var += float(polygamma(1, s.size / c))
    return {"error": float(kT * np.sqrt(var)), "visits": visits, "cv2": cv2, "transitions": transitions}
