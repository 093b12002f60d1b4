"""Tests of aesample.estimators (and the grid/COLVAR files of aesample.outputs) on exactly sampled data."""
import numpy as np
import pytest

from aesample import estimators as est
from aesample.outputs import ColvarWriter, read_colvar, read_grid, write_grid

T = 300.0
KT = est.kT(T)


def test_kT_value():
    assert KT == pytest.approx(2.494339, rel=1e-6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        est.kT(0.0)


def _bin(values, gmin, width, n):
    i = np.floor((values - gmin) / width).astype(int)
    return i, (i >= 0) & (i < n)


def test_czar_and_naive_on_exact_gaussian_samples():
    """A(z) = k z^2 / 2, coupling kappa, no bias: (z, lambda) is an exact bivariate Gaussian."""
    rng = np.random.default_rng(0)
    k, kappa, n = 40.0, 400.0, 2_000_000
    beta = 1 / KT
    # joint exp(-beta [k z^2/2 + kappa (z - lam)^2 / 2]): lam | z ~ N(z, 1/(beta kappa)), z ~ N(0, 1/(beta k))
    z = rng.normal(0, np.sqrt(1 / (beta * k)), n)
    lam = z + rng.normal(0, np.sqrt(1 / (beta * kappa)), n)
    gmin, gmax, nb = -0.6, 0.6, 24
    w = (gmax - gmin) / nb
    c = gmin + w * (np.arange(nb) + 0.5)
    f = kappa * (lam - z)
    zi, zin = _bin(z, gmin, w, nb)
    li, lin = _bin(lam, gmin, w, nb)
    zcount = np.bincount(zi[zin], minlength=nb).astype(float)
    czar = np.bincount(zi[zin], weights=f[zin], minlength=nb)[:, None]
    count = np.bincount(li[lin], minlength=nb).astype(float)
    gsum = np.bincount(li[lin], weights=f[lin], minlength=nb)[:, None]
    g = est.czar_gradient(czar, zcount, [w], T, [False], min_count=2000)[:, 0]
    ok = np.isfinite(g)
    assert ok.sum() >= 12
    # the CZAR estimate is the gradient of A itself (not of the smoothed F_kappa)
    np.testing.assert_allclose(g[ok], k * c[ok], atol=0.15 * k * 0.3 + 0.5)
    # naive: dF_kappa/dlambda with F_kappa(lam) = (k kappa / (k + kappa)) lam^2 / 2 -> positive slope, right value
    gn = est.naive_gradient(gsum, count)[:, 0]
    okn = count > 2000
    keff = k * kappa / (k + kappa)
    np.testing.assert_allclose(gn[okn], keff * c[okn], atol=0.6)
    A = est.integrate_1d(g, w)
    exact = 0.5 * k * c ** 2
    dev = (A - exact)[ok]
    dev -= dev.mean()
    assert np.abs(dev).max() < 0.1 * KT


def test_integrate_1d_longest_run_and_periodic():
    c = np.linspace(-1, 1, 21)
    g = 3 * c ** 2
    g[:2] = np.nan  # unsampled edge
    A = est.integrate_1d(g, c[1] - c[0])
    assert np.isnan(A[:2]).all()
    ref = c ** 3 - np.min(c[2:] ** 3)
    np.testing.assert_allclose(A[2:], ref[2:], atol=1.5e-2)  # trapezoid error h^2 g''/12
    assert np.all(np.isnan(est.integrate_1d(np.full(5, np.nan), 0.1)))


@pytest.mark.parametrize("periodic", [False, True])
def test_integrate_2d_recovers_potential(periodic):
    n0, n1 = 30, 24
    if periodic:
        x = -np.pi + 2 * np.pi / n0 * (np.arange(n0) + 0.5)
        y = -np.pi + 2 * np.pi / n1 * (np.arange(n1) + 0.5)
        X, Y = np.meshgrid(x, y, indexing="ij")
        F = np.cos(X) + 0.5 * np.sin(2 * Y) + 0.3 * np.cos(X - Y)
        gx = -np.sin(X) - 0.3 * np.sin(X - Y)
        gy = np.cos(2 * Y) + 0.3 * np.sin(X - Y)
        widths = [2 * np.pi / n0, 2 * np.pi / n1]
    else:
        x = np.linspace(-1, 1, n0)
        y = np.linspace(-1, 1, n1)
        X, Y = np.meshgrid(x, y, indexing="ij")
        F = X ** 4 - X ** 2 + Y ** 2 + 0.5 * X * Y
        gx = 4 * X ** 3 - 2 * X + 0.5 * Y
        gy = 2 * Y + 0.5 * X
        widths = [x[1] - x[0], y[1] - y[0]]
    g = np.stack([gx, gy], axis=-1)
    g[3:6, 4:8] = np.nan  # a hole
    A = est.integrate_2d(g, widths, [periodic, periodic])
    ok = np.isfinite(A)
    assert ok.sum() == n0 * n1 - 12
    d = A[ok] - F[ok]
    d -= d.mean()
    assert np.abs(d).max() < 0.02 * np.ptp(F)
    # the sign is right: gradient ascent direction has higher A
    assert np.corrcoef(A[ok], F[ok])[0, 1] > 0.999


def test_reweighting_weights_and_histogram():
    rng = np.random.default_rng(1)
    gmin, w, nb = -1.0, 0.1, 20
    c = gmin + w * (np.arange(nb) + 0.5)
    fk = 5.0 * c ** 2  # kJ/mol
    lam = rng.uniform(-1, 1, 200_000)  # flat biased sampling along lambda
    wts = est.reweighting_weights(lam, fk, [gmin], [w], T, [False])
    assert wts.shape == lam.shape and wts.sum() == pytest.approx(1.0)
    assert np.all(wts > 0)
    # the weight ratio is exp(-beta dF) (linear interpolation between centres)
    i, j = np.argmin(np.abs(lam - c[5])), np.argmin(np.abs(lam - c[15]))
    assert wts[i] / wts[j] == pytest.approx(np.exp(-(5.0 * lam[i] ** 2 - 5.0 * lam[j] ** 2) / KT), rel=0.05)
    # flat (fully biased) sampling reweighted by exp(-beta F): the histogram's -kT ln(p) is F (up to a constant)
    F, edges = est.reweighted_free_energy(lam, wts, 10, T, range_=[(-1, 1)])
    cc = 0.5 * (edges[0][1:] + edges[0][:-1])
    ref = 5.0 * cc ** 2
    ref -= ref.min()
    np.testing.assert_allclose(F, ref, atol=0.3)


def test_czar_reweighting_weights_undo_a_non_flat_bias():
    rng = np.random.default_rng(3)
    gmin, w, nb = -1.5, 0.05, 60
    c = gmin + w * (np.arange(nb) + 0.5)
    k = 40.0  # unbiased F(x) = k x^2 / 2, <x^2> = kT / k
    # biased samples: a wider Gaussian than the Boltzmann one, so the biased histogram n(x) is far from flat
    x = rng.normal(0.0, 0.5, 400_000)
    x = x[np.abs(x) < 1.4]
    n = np.histogram(x, bins=nb, range=(gmin, gmin + nb * w))[0].astype(float)
    A = 0.5 * k * c**2
    wts = est.czar_reweighting_weights(x, A, n, [gmin], [w], T, [False])
    assert wts.shape == x.shape and wts.sum() == pytest.approx(1.0) and np.all(wts > 0)
    # bins are 0.05 wide: the bin-level weights give <x^2> within the binning error
    assert np.sum(wts * x**2) == pytest.approx(KT / k, rel=0.03)
    # without dividing by the biased histogram the biased density stays in: the product of two Gaussians, too narrow
    naive = np.exp(-A[np.floor((x - gmin) / w).astype(int)] / KT)
    assert np.sum(naive * x**2) / naive.sum() < 0.85 * KT / k
    # frames off the grid or in an empty bin cannot be weighted: 0; none weighable: error
    n_hole = n.copy()
    n_hole[30] = 0.0
    wh = est.czar_reweighting_weights(np.array([0.02, 1.6, -0.3]), A, n_hole, [gmin], [w], T, [False])
    assert wh[0] == 0.0 and wh[1] == 0.0 and wh[2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no frame"):
        est.czar_reweighting_weights(np.array([2.0]), A, n, [gmin], [w], T, [False])
    with pytest.raises(ValueError, match="components"):
        est.czar_reweighting_weights(np.zeros((4, 2)), A, n, [gmin], [w], T, [False])


def test_free_energy_drift():
    rng = np.random.default_rng(2)
    gmin, w = [-1.0, -1.0], [0.1, 0.1]
    c = -1.0 + 0.1 * (np.arange(20) + 0.5)
    X, Y = np.meshgrid(c, c, indexing="ij")
    f = 3.0 * X**2 + Y
    lam = rng.uniform(-0.95, 0.95, (5000, 2))
    # a constant offset is no drift
    rms, frac = est.free_energy_drift(f, f + 7.0, lam, gmin, w, [False, False])
    assert rms == pytest.approx(0.0, abs=1e-12) and frac == 1.0
    # a tilt of 2 kJ/mol per unit along the first axis: RMS = 2 * std(bin centre of lambda_0)
    rms, _ = est.free_energy_drift(f, f + 2.0 * X, lam, gmin, w, [False, False])
    assert rms == pytest.approx(2.0 * c[np.floor((lam[:, 0] + 1.0) / 0.1).astype(int)].std(), rel=1e-9)
    # bins empty in the early estimate are left out, not filled with a large value
    early = f.copy()
    early[:10] = np.nan
    late = f + np.where(X < 0, 50.0, 0.0)
    rms, frac = est.free_energy_drift(early, late, lam, gmin, w, [False, False])
    assert rms == pytest.approx(0.0, abs=1e-9)
    assert frac == pytest.approx(np.mean(lam[:, 0] >= 0.0))
    # periodic components wrap the frames' lambda into the grid
    lam_p = np.concatenate([lam, lam + [2.0, 0.0]])
    r1, f1 = est.free_energy_drift(early, late, lam_p, gmin, w, [True, False])
    assert f1 == pytest.approx(frac) and r1 == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="shape"):
        est.free_energy_drift(f, f[:5], lam, gmin, w, [False, False])


def test_grid_files_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    v = rng.normal(size=(6, 4, 2))
    v[1, 2, 0] = np.nan
    write_grid(tmp_path / "g.grad", v, [-np.pi, 0.0], [np.pi / 3, 0.25], [True, False], units="kJ/mol/rad")
    back, gmin, width, per = read_grid(tmp_path / "g.grad")
    np.testing.assert_allclose(back, v, rtol=1e-11, equal_nan=True)
    np.testing.assert_allclose(gmin, [-np.pi, 0.0])
    np.testing.assert_allclose(width, [np.pi / 3, 0.25])
    assert per.tolist() == [True, False]
    text = (tmp_path / "g.grad").read_text().splitlines()
    assert text[0] == "# 2" and text[1].split()[-2:] == ["6", "1"] and text[2].split()[-2:] == ["4", "0"]
    write_grid(tmp_path / "c.count", np.arange(5.0), [0.0], [0.2], [False])
    c, *_ = read_grid(tmp_path / "c.count")
    np.testing.assert_array_equal(c, np.arange(5.0))
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_colvar_header_and_rows(tmp_path):
    with ColvarWriter(tmp_path / "COLVAR", 2) as w:
        w.write(0.5, [1, 2], [3, 4], [5, 6])
        with pytest.raises(ValueError, match="7 fields"):
            w.write(0.5, [1], [3], [5])
    fields, data = read_colvar(tmp_path / "COLVAR")
    assert (tmp_path / "COLVAR").read_text().startswith("#! FIELDS time xi_1 xi_2 lambda_1 lambda_2 fbias_1 fbias_2\n")
    np.testing.assert_array_equal(data, [[0.5, 1, 2, 3, 4, 5, 6]])


def test_czar_density_gradient_is_one_sided_at_the_sampled_fringe():
    # 1D histogram with a gap: bins 1..3 sampled, 4 empty, 5..6 sampled; width 0.5, no force (czar sums 0)
    n = np.array([0.0, 10.0, 20.0, 40.0, 0.0, 8.0, 0.0])
    g = est.czar_gradient(np.zeros((7, 1)), n, [0.5], T, [False])[:, 0]
    lnn = np.log(np.where(n > 0, n, 1.0))
    assert g[2] == pytest.approx(-KT * (lnn[3] - lnn[1]) / 1.0)  # central inside
    assert g[1] == pytest.approx(-KT * (lnn[2] - lnn[1]) / 0.5)  # left neighbour empty: forward difference
    assert g[3] == pytest.approx(-KT * (lnn[3] - lnn[2]) / 0.5)  # right neighbour empty: backward difference
    assert np.isnan(g[5]) and np.isnan(g[0]) and np.isnan(g[4])  # isolated or empty bins: no estimate


def _walker_state(z, lam, kappa, gmin, w, nb):
    """EABFState of exactly sampled (z, lambda) pairs, as the eABF force would accumulate them."""
    from aesample.eabf import EABFState

    f = kappa * (lam - z)
    zi, zin = _bin(z, gmin, w, nb)
    li, lin = _bin(lam, gmin, w, nb)
    return EABFState(
        grid_min=np.array([gmin]), grid_max=np.array([gmin + nb * w]), bins=np.array([nb]),
        periodic=np.array([False]), kappa=np.array([kappa]),
        count=np.bincount(li[lin], minlength=nb).astype(float),
        grad=np.bincount(li[lin], weights=f[lin], minlength=nb)[:, None],
        zcount=np.bincount(zi[zin], minlength=nb).astype(float),
        czar=np.bincount(zi[zin], weights=f[zin], minlength=nb)[:, None],
        last=np.zeros(1), n_samples=len(z),
    )


def test_pooled_walkers_with_different_biases_give_the_unbiased_free_energy():
    """Two walkers whose lambda-biases push them to opposite sides: neither covers the whole range, the pool does.

    A(z) = k z^2 / 2, bias on lambda -c lambda (walker 1) and +c lambda (walker 2): each joint (z, lambda) density is
    an exact Gaussian with precision [[k + kappa, -kappa], [-kappa, kappa]] and mean P^-1 (0, +-beta c).
    """
    from aesample.eabf import EABFError, EABFState

    rng = np.random.default_rng(5)
    k, kappa, c = 40.0, 400.0, 14.0
    beta = 1 / KT
    prec = beta * np.array([[k + kappa, -kappa], [-kappa, kappa]])
    cov = np.linalg.inv(prec)
    gmin, w, nb = -2.0, 0.1, 40
    states, zs = [], []
    for sign, n in ((+1, 1_500_000), (-1, 600_000)):  # unequal sizes: the pool must sum, not average
        mean = cov @ np.array([0.0, sign * beta * c])
        z, lam = rng.multivariate_normal(mean, cov, n).T
        states.append(_walker_state(z, lam, kappa, gmin, w, nb))
        zs.append(z)
    pooled = EABFState.pooled(states)
    assert pooled.n_samples == 2_100_000
    np.testing.assert_array_equal(pooled.zcount, states[0].zcount + states[1].zcount)
    cen = pooled.centers()[0]
    g = est.czar_gradient(pooled.czar, pooled.zcount, [w], T, [False], min_count=2000)[:, 0]
    ok = np.isfinite(g)
    # the pool covers both sides of z = 0 where each walker alone covers one
    for st, side in ((states[0], cen < -0.25), (states[1], cen > 0.25)):
        alone = np.isfinite(est.czar_gradient(st.czar, st.zcount, [w], T, [False], min_count=2000)[:, 0])
        assert ok[side].sum() >= 2 + alone[side].sum()
    A = est.integrate_1d(g, w)
    dev = (A - 0.5 * k * cen**2)[ok]
    assert np.abs(dev - dev.mean()).max() < 0.15 * KT
    # pooled frames reweighted with the pooled A and histogram: Boltzmann <z^2> = kT / k
    z = np.concatenate(zs)
    wts = est.czar_reweighting_weights(z, A, pooled.zcount, [gmin], [w], T, [False])
    assert np.sum(wts * z**2) == pytest.approx(KT / k, rel=0.05)
    # walkers of different runs are not pooled
    other = _walker_state(zs[0][:1000], zs[0][:1000], 2 * kappa, gmin, w, nb)
    with pytest.raises(EABFError, match="kappa"):
        EABFState.pooled([states[0], other])


def test_walker_standard_error_estimates_the_error_of_the_pooled_mean():
    """n walkers = truth + independent noise of SD s per bin; the pool is their average: SEM s / sqrt(n)."""
    rng = np.random.default_rng(11)
    nb, s, n = 50, 0.8, 4
    gmin, w = [-1.0, -1.0], [0.04, 0.04]
    truth = rng.normal(0, 5, (nb, nb))
    walkers = [truth + rng.normal(0, s, (nb, nb)) for _ in range(n)]
    pooled = np.mean(walkers, axis=0)
    points = rng.uniform(-1, 1, (20000, 2))
    sem, frac = est.walker_standard_error(walkers, pooled, points, gmin, w, [False, False])
    assert frac == 1.0 and sem == pytest.approx(s / np.sqrt(n), rel=0.1)
    # a bin a walker never estimated is left out, not counted as agreement
    walkers[0][:10] = np.nan
    sem2, frac2 = est.walker_standard_error(walkers, pooled, points, gmin, w, [False, False])
    assert frac2 == pytest.approx(0.8, abs=0.02) and sem2 == pytest.approx(s / np.sqrt(n), rel=0.1)
    assert np.isnan(est.walker_standard_error(walkers[:1], pooled, points, gmin, w, [False, False])[0])


def _band_accumulators(kb: float, bins: int = 60, kappa: float = 3000.0):
    """Exact (noise-free) CZAR accumulators of a 2D eABF run at equilibrium: a thin curved band A(z) (a ring arc of
    stiffness ``kb`` with a profile along it), a fixed bias V(lambda) = -0.7 min(A, 8 kT), coupling ``kappa``.
    zcount and the sums of kappa (lambda - z) per bin come from the extended density exp(-beta [A(z) + kappa/2
    |z - lambda|^2 + V(lambda)]) integrated on a 0.005 grid; also the exact bin free energies
    -kT ln int_bin e^-beta A."""
    from scipy.signal import fftconvolve

    beta = 1.0 / KT
    hf = 0.005
    f = -1.5 + hf * (np.arange(600) + 0.5)
    Z1, Z2 = np.meshgrid(f, f, indexing="ij")
    r, th = np.hypot(Z1 - 0.2, Z2), np.arctan2(Z2, Z1 - 0.2)
    A = 0.5 * kb * (r - 0.8) ** 2 + 6 * KT * np.sin(th) ** 2 + 2 * KT * np.cos(2 * th)
    V = -0.7 * np.minimum(A, 8 * KT)  # bounded: the FFT convolution is exact to 1e-16 of its largest value
    o = np.arange(-30, 31) * hf  # lambda - z, +-5 coupling widths
    O1, O2 = np.meshgrid(o, o, indexing="ij")
    ker = np.exp(-beta * 0.5 * kappa * (O1 ** 2 + O2 ** 2))
    eV = np.exp(-beta * (V - V.min()))
    g = fftconvolve(eV, ker, mode="same")  # int over lambda of e^-beta(spring + V)
    m = [fftconvolve(eV, -kappa * O * ker, mode="same") for O in (O1, O2)]  # ... times kappa (lambda - z)
    eA = np.exp(-beta * (A - A.min()))
    k = 600 // bins

    def binned(x):
        return x.reshape(bins, k, bins, k).sum(axis=(1, 3))

    scale = 2e7 / (eA * g).sum()  # 2e7 samples in all
    zcount = binned(eA * g) * scale
    czar = np.stack([binned(eA * mi) for mi in m], -1) * scale
    sampled = zcount >= 1.0
    zcount = np.where(sampled, zcount, 0.0)
    czar = np.where(sampled[..., None], czar, 0.0)
    with np.errstate(divide="ignore"):
        exact = -KT * np.log(binned(eA))
    return czar, zcount, exact, 3.0 / bins


def _band_error(A, exact, zcount):
    band = (zcount >= 100) & np.isfinite(A)
    p = np.exp(-(exact[band] - exact[band].min()) / KT)
    d = A[band] - exact[band]
    d -= np.average(d, weights=p)
    return np.sqrt(np.average(d ** 2, weights=p)) / KT, np.abs(d).max() / KT


def test_czar_free_energy_follows_a_thin_curved_band():
    # A 2D learned CV puts a basin in a band a few bins wide, curving through the grid. Taken between neighbouring
    # bins, CZAR's identity recovers the exact bin free energies from exact accumulators; differentiating ln n at
    # bin centres mixes the band's walls into the gradient along it (one-sided differences at its edges).
    czar, zcount, exact, w = _band_accumulators(kb=1500.0)
    links = est.czar_free_energy(czar, zcount, [w, w], T, [False, False])
    centred = est.integrate_gradient(est.czar_gradient(czar, zcount, [w, w], T, [False, False]), [w, w],
                                     [False, False], counts=zcount)
    rms_links, max_links = _band_error(links, exact, zcount)
    rms_centred, _ = _band_error(centred, exact, zcount)
    assert (zcount >= 100).sum() > 500  # the band spans hundreds of bins, a few wide
    assert rms_links < 0.06 and max_links < 0.35, (rms_links, max_links)
    assert rms_centred > 2 * rms_links, (rms_centred, rms_links)
    # min_count drops the sparse bins from the estimate (NaN) and keeps the rest
    sparse = (zcount > 0) & (zcount < 50)
    A50 = est.czar_free_energy(czar, zcount, [w, w], T, [False, False], min_count=50)
    assert np.isnan(A50[sparse]).all() and np.isfinite(A50[zcount >= 1000]).all()
