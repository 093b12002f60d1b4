"""Count-weighted integration of mean-force fields, the periodic seam, and the eABF free energy along a curved
band (synthetic 2D model with an exact answer) with the error bar the loop reports for it."""
import numpy as np
import openmm
import pytest

from aesample import cvs
from aesample import estimators as est
from aesample.eabf import EABFState, ExtendedABF
from aesample.md import FreeEnergyEstimates

from .test_eabf_analytic import _particle_system

T = 300.0
KT = est.kT(T)


def _field(n0=24, n1=20):
    x = np.linspace(-1, 1, n0)
    y = np.linspace(-1, 1, n1)
    X, Y = np.meshgrid(x, y, indexing="ij")
    F = X ** 4 - X ** 2 + Y ** 2 + 0.5 * X * Y
    g = np.stack([4 * X ** 3 - 2 * X + 0.5 * Y, 2 * Y + 0.5 * X], axis=-1)
    return F, g, [x[1] - x[0], y[1] - y[0]]


def _rms_error(A, F):
    d = A - F
    d -= d.mean()
    return float(np.sqrt(np.mean(d ** 2)))


def test_weighted_integration_beats_unweighted_on_heteroscedastic_noise():
    F, g, widths = _field()
    rng = np.random.default_rng(3)
    counts = np.full(F.shape, 4.0)
    counts[6:18, 5:15] = 4000.0  # a well-sampled basin inside a sparse fringe
    errs_w, errs_u = [], []
    for _ in range(20):
        noisy = g + rng.normal(size=g.shape) * (3.0 / np.sqrt(counts))[..., None]
        # inside the basin, where the free energy is known well enough to matter, the fringe noise leaks in
        basin = counts > 100
        errs_w.append(_rms_error(est.integrate_gradient(noisy, widths, [False, False], counts=counts)[basin], F[basin]))
        errs_u.append(_rms_error(est.integrate_gradient(noisy, widths, [False, False])[basin], F[basin]))
    assert np.mean(errs_w) < 0.6 * np.mean(errs_u), (np.mean(errs_w), np.mean(errs_u))
    # uniform counts: weighting changes nothing
    noisy = g + rng.normal(size=g.shape) * 0.3
    np.testing.assert_allclose(est.integrate_gradient(noisy, widths, [False, False], counts=np.full(F.shape, 7.0)),
                               est.integrate_gradient(noisy, widths, [False, False]), atol=1e-9)


def test_periodic_1d_is_continuous_across_the_seam():
    n = 72
    h = 2 * np.pi / n
    z = -np.pi + h * (np.arange(n) + 0.5)
    F = 3 * np.cos(z) + np.sin(2 * z)
    g = -3 * np.sin(z) + 2 * np.cos(2 * z) + 0.4  # a constant bias: the closure is 0.4 * 2 pi, not 0
    assert abs(est.closure_1d(g, h) - 0.4 * 2 * np.pi) < 1e-9
    A = est.integrate_1d(g, h, periodic=True)
    dev = A - F
    dev -= dev.mean()
    # the trapezoid rule integrates the exact part to O(h^2); the closure is spread evenly, not dumped at the seam
    assert np.abs(dev).max() < 0.02
    assert abs((A[-1] - A[0]) - (F[-1] - F[0])) < 0.02
    # without the seam link (open grid) the constant bias accumulates into a 2.5 kJ/mol jump at the seam
    open_ = est.integrate_1d(g, h, periodic=False)
    assert abs((open_[-1] - open_[0]) - (F[-1] - F[0])) > 2.0


def test_state_with_its_own_czar_grid_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    st = EABFState(grid_min=np.array([-1.0, -1.0]), grid_max=np.array([1.0, 1.0]), bins=np.array([4, 4]),
                   periodic=np.array([False, False]), kappa=np.array([10.0, 10.0]), count=rng.random((4, 4)),
                   grad=rng.random((4, 4, 2)), zcount=rng.random((12, 12)), czar=rng.random((12, 12, 2)),
                   last=np.zeros(4), n_samples=5, zbins=np.array([12, 12]))
    st.save(tmp_path / "s.npz", compressed=True)
    back = EABFState.load(tmp_path / "s.npz")
    assert list(back.zbins) == [12, 12] and back.z_bin_width[0] == pytest.approx(2 / 12)
    np.testing.assert_array_equal(back.czar, st.czar)
    two = EABFState.weighted_sum([(1.0, st), (2.0, back)])
    np.testing.assert_allclose(two.zcount, 3 * st.zcount)


# --------------------------------------------------------------------------------------------------------------
# synthetic 2D eABF: a curved low-free-energy band with a barrier, CV = the particle's (x, y)
# --------------------------------------------------------------------------------------------------------------
P = dict(kb=1000.0, R=1.0, cx=-0.5, h=6 * KT, th0=0.5, s=2 * KT, kc=1000.0)
EXPR = "0.5*kb*(r-R)^2 + h*((th/th0)^2-1)^2 + s*th + 0.5*kc*z^2; r=sqrt((x-cx)^2+y^2); th=atan2(y, x-cx)"
N_DUMMY = 300  # free particles: more read-out slots per force evaluation (one particle alone reads out slowly)


def _exact_delta_f():
    q = np.linspace(-1.5, 1.5, 1501)
    X, Y = np.meshgrid(q, q, indexing="ij")
    th = np.arctan2(Y, X - P["cx"])
    u = 0.5 * P["kb"] * (np.hypot(X - P["cx"], Y) - P["R"]) ** 2 + P["h"] * ((th / P["th0"]) ** 2 - 1) ** 2 + P["s"] * th
    p = np.exp(-(u - u.min()) / KT)
    return -KT * np.log(p[th > 0].sum() / p[th <= 0].sum())


def _grid_delta_f(st: EABFState) -> float:
    A = st.czar_free_energy(T)
    X, Y = np.meshgrid(*st.z_centers(), indexing="ij")
    th = np.arctan2(Y, X - P["cx"])
    p = np.where(np.isfinite(A), np.exp(-np.nan_to_num(A, nan=0.0) / KT), 0.0)
    return float(-KT * np.log(p[th > 0].sum() / p[th <= 0].sum()))


def theta(xy: np.ndarray) -> np.ndarray:
    """Angle along the band: the two basins are theta > 0 and theta <= 0."""
    return np.arctan2(xy[..., 1], xy[..., 0] - P["cx"])


WALKER_STEPS = 125000  # 250 ps: the walkers' SD falls below 0.4 kT by about 200 ps (benchmarks/RESULTS.md)


def _walker(seed: int, n_steps: int = WALKER_STEPS, n_blocks: int = 20, frame_stride: int = 50):
    """One eABF walker: (its ``n_blocks`` cumulative snapshots, frames' xi = (x, y) every ``frame_stride`` steps,
    frames' block index). Also the model of ``benchmarks/synthetic_band_errorbars.py``."""
    system = _particle_system(EXPR, P)
    for _ in range(N_DUMMY):
        system.addParticle(1.0)
    # the loop's settings: 30 ABF bins on [-1.5, 1.5], CZAR bins near the coupling width, kappa 3000, ramp 50/100
    e = ExtendedABF(system, cvs.PositionXY(0), -1.5, 1.5, 30, 3000.0, extendedPeriod=0.2, fullSamples=100,
                    minSamples=50, positions=np.zeros((1 + N_DUMMY, 3)), czarBins=120)
    integ = openmm.LangevinMiddleIntegrator(T, 10.0, 0.002)
    integ.setRandomNumberSeed(seed)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    x0 = np.zeros((1 + N_DUMMY, 3))
    x0[0] = [P["cx"] + np.cos(-0.5), np.sin(-0.5), 0.0]
    x0[1:, 0] = np.arange(N_DUMMY) * 0.5
    ctx.setPositions(e.extendPositions(x0))
    ctx.setVelocitiesToTemperature(T, seed)
    snaps, xis, block_of = [], [], []
    for b in range(n_blocks):
        for _ in range(n_steps // n_blocks // frame_stride):
            integ.step(frame_stride)
            xis.append(ctx.getState(getPositions=True).getPositions(asNumpy=True)._value[0, :2].copy())
            block_of.append(b)
        snaps.append(e.getState(ctx))
    return snaps, np.array(xis), np.array(block_of)


class WalkerEstimates(FreeEnergyEstimates):
    """One walker's block snapshots and frames seen through the package's estimators (``md``'s error bars)."""

    temperature = T

    def __init__(self, snaps, xi: np.ndarray, block: np.ndarray):
        self.state = snaps[-1]
        self._xi = xi
        self._block = block
        self.blocks = [snaps[0]] + [EABFState.weighted_sum([(1, b), (-1, a)]) for a, b in zip(snaps, snaps[1:])]
        self.half_state = snaps[len(snaps) // 2 - 1]  # after half of the blocks, as a run's half-time state

    def colvar_xi(self) -> np.ndarray:
        return self._xi

    def first_half_frames(self) -> np.ndarray:
        return self._block < len(self.blocks) // 2

    def block_increments(self):
        return [(self._block, self.blocks)]

    def delta_f(self, seed: int, n_boot: int = 40) -> dict:
        """``free_energy_error`` of Delta F(theta > 0 vs theta <= 0) as the loop asks for it (n_boot 40)."""
        return self.free_energy_error(n_boot=n_boot, seed=seed, xis=self._xi,
                                      delta_f_labels=(theta(self._xi) > 0).astype(int))


def _walker_estimate(seed: int):
    """(grid Delta F, frames' Delta F, its shipped error bar, where that came from) of one walker, kJ/mol."""
    import torch

    torch.set_num_threads(1)
    snaps, xi, block = _walker(seed)
    r = WalkerEstimates(snaps, xi, block).delta_f(seed=seed)
    return _grid_delta_f(snaps[-1]), r["delta_f"], r["delta_f_error"], r["delta_f_error_from"]


@pytest.mark.slow
def test_curved_band_walkers_agree_with_exact_and_their_error_bars(monkeypatch):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from scipy.stats import chi2

    exact = _exact_delta_f()
    assert exact > 1.5 * KT  # the tilt makes the theta > 0 side unfavourable: a sign error cannot pass
    n_walkers = 8
    # two processes (CI's two cores), one thread each: the walkers are independent
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(_walker_estimate, range(100, 100 + n_walkers)))
    grid, dfs, errs = (np.array([r[i] for r in rows]) / KT for i in range(3))
    # ~30 crossings per walker (20-42 in the benchmark) against 20 blocks: the block bootstrap's own condition
    assert sum(r[3] == "bootstrap" for r in rows) >= n_walkers // 2, rows
    spread = dfs.std(ddof=1)
    # 48 other walkers of this length (benchmarks/synthetic_band_errorbars.py, seeds 3000-3047) scatter by SD
    # 0.25 kT (95 % interval 0.21-0.31), mean - exact +0.02 kT.
    assert abs(dfs.mean() - exact / KT) <= 0.4, (dfs, exact / KT)
    assert abs(grid.mean() - exact / KT) <= 0.4, (grid, exact / KT)
    assert spread <= 0.4, dfs
    # Error bar (RMS over walkers) against the walkers' SD. The 48-walker benchmark measures the ratio itself
    # (1.15). Eight walkers cannot: their SD has 7 degrees of freedom, within sqrt(chi2_7 / 7) = 0.38-1.70 x its
    # true value 99 % of the time, so an error bar within the factor 1.5 of the true spread shows a ratio
    # in [1 / 1.5 / 1.70, 1.5 / 0.38] = [0.39, 3.99].
    lo, hi = np.sqrt(chi2.ppf([0.005, 0.995], n_walkers - 1) / (n_walkers - 1))
    ratio = np.sqrt(np.mean(errs ** 2)) / spread
    assert 1 / 1.5 / hi <= ratio <= 1.5 / lo, (ratio, errs, spread)
