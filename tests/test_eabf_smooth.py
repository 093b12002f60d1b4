"""The smooth (conservative) ABF bias: the applied force on lambda is the gradient of the multilinear interpolant of
the least-squares integral of the per-bin means (ExtendedABF(smoothBias=True)); one light particle, CV = its (x, y)."""
import numpy as np
import openmm
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from aesample import cvs
from aesample import estimators as est
from aesample.eabf import EABFError, EABFState, ExtendedABF

from .test_eabf_analytic import _particle_system

REF = openmm.Platform.getPlatformByName("Reference")
T = 300.0
KT = est.kT(T)
LO, HI, NB = -1.0, 1.0, 8
H = (HI - LO) / NB


def _field(x, y):
    """A smooth mean-force field: the gradient of x^2 + 4 x y - 0.6 y^2 + 0.5 x^3 (strong cross term)."""
    return np.stack([2 * x + 4 * y + 1.5 * x ** 2, 4 * x - 1.2 * y], axis=-1)


def _state(count=1000.0):
    c = LO + H * (np.arange(NB) + 0.5)
    X, Y = np.meshgrid(c, c, indexing="ij")
    n = np.full((NB, NB), count)
    return EABFState(grid_min=np.array([LO, LO]), grid_max=np.array([HI, HI]), bins=np.array([NB, NB]),
                     periodic=np.array([False, False]), kappa=np.array([500.0, 500.0]), count=n,
                     grad=_field(X, Y) * n[..., None], zcount=np.ones((NB, NB)), czar=np.zeros((NB, NB, 2)),
                     last=np.full(4, 1e300), n_samples=0, zbins=np.array([NB, NB]))


def _context(smooth, state, interval=500, expr="0.5*k*(x^2+y^2+z^2)", params=None, graphs=False):
    system = _particle_system(expr, params or {"k": 10.0})
    e = ExtendedABF(system, cvs.PositionXY(0), LO, HI, NB, 500.0, fullSamples=100, positions=np.zeros((1, 3)),
                    initialState=state, smoothBias=smooth, smoothBiasInterval=interval, useCUDAGraphs=graphs)
    integ = openmm.LangevinMiddleIntegrator(T, 10.0, 0.002)
    integ.setRandomNumberSeed(5)
    ctx = openmm.Context(system, integ, REF)
    e.setSampling(ctx, False)  # setting velocities evaluates the forces once: no sample from that
    ctx.setPositions(e.extendPositions(np.zeros((1, 3))))
    ctx.setVelocitiesToTemperature(T, 5)
    return e, ctx


def _applied(e, ctx, lam):
    """The applied ABF bias force on lambda at ``lam`` (sampling off, particle at the origin)."""
    e.setSampling(ctx, False)
    pos = e.extendPositions(np.zeros((1, 3)))
    pos[1:, 0] = lam
    ctx.setPositions(pos)
    return e.getInstantaneous(ctx)[2]


def _reference_potential(state):
    """The potential the force should hold: all links weight 1 (every bin fully ramped), solved with scipy."""
    g = state.grad / state.count[..., None]
    ii, jj, bb = [], [], []
    idx = np.arange(NB * NB).reshape(NB, NB)
    for k in range(2):
        lo = tuple(slice(0, NB - 1) if a == k else slice(None) for a in range(2))
        hi = tuple(slice(1, NB) if a == k else slice(None) for a in range(2))
        ii.append(idx[lo].ravel())
        jj.append(idx[hi].ravel())
        bb.append((0.5 * (g[..., k][lo] + g[..., k][hi]) * H).ravel())
    ii, jj, bb = map(np.concatenate, (ii, jj, bb))
    m = len(bb)
    D = sp.csr_matrix((np.r_[-np.ones(m), np.ones(m)], (np.r_[np.arange(m), np.arange(m)], np.r_[ii, jj])),
                      shape=(m, NB * NB))
    A = (D.T @ D + 1e-6 * sp.eye(NB * NB)).tocsc()
    return spla.spsolve(A, D.T @ bb).reshape(NB, NB)


def _bilinear_gradient(pot, lam):
    u = (np.asarray(lam) - LO) / H - 0.5
    i0 = np.clip(np.floor(u), 0, NB - 2).astype(int)
    f = u - i0
    p00, p10 = pot[i0[0], i0[1]], pot[i0[0] + 1, i0[1]]
    p01, p11 = pot[i0[0], i0[1] + 1], pot[i0[0] + 1, i0[1] + 1]
    gx = ((p10 - p00) * (1 - f[1]) + (p11 - p01) * f[1]) / H
    gy = ((p01 - p00) * (1 - f[0]) + (p11 - p10) * f[0]) / H
    return np.array([gx, gy])


def test_smooth_bias_is_the_gradient_of_the_interpolated_integral():
    state = _state()
    e, ctx = _context(True, state)
    pot = _reference_potential(state)
    rng = np.random.default_rng(0)
    for lam in [[0.1, -0.3], [0.01, 0.0], [-0.87, 0.62], [0.95, -0.95]] + list(rng.uniform(-0.99, 0.99, (6, 2))):
        got = _applied(e, ctx, lam)
        want = _bilinear_gradient(pot, lam)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    # the integral reproduces the field it integrates (up to the trapezoid and interpolation errors)
    got = _applied(e, ctx, [0.25, 0.25])  # a bin corner
    np.testing.assert_allclose(got, _field(0.25, 0.25), rtol=0.05)


def _circulation(e, ctx, x0, x1, y0, y1, n=60):
    """Line integral of the applied bias around the rectangle [x0, x1] x [y0, y1], anticlockwise (midpoints)."""
    t = (np.arange(n) + 0.5) / n
    total = 0.0
    for (ax, ay), (bx, by) in zip([(x0, y0), (x1, y0), (x1, y1), (x0, y1)],
                                  [(x1, y0), (x1, y1), (x0, y1), (x0, y0)]):
        for s in t:
            f = _applied(e, ctx, [ax + s * (bx - ax), ay + s * (by - ay)])
            total += f[0] * (bx - ax) / n + f[1] * (by - ay) / n
    return total


def test_smooth_bias_has_no_circulation_where_the_binned_bias_has():
    """Around a loop crossing a bin edge the per-bin mean (constant over each bin) has a circulation of about
    the jump of its tangential component times the loop's length; the smooth bias, a gradient, has none."""
    state = _state()
    loop = (0.05, 0.2, -0.1, 0.1)  # crosses the edge y = 0 between two rows of bins
    e, ctx = _context(False, state)
    binned = _circulation(e, ctx, *loop)
    # jump of g_x across y = 0: 4 * H (the cross term), over 0.15 of edge: 0.15; the sign is the loop's
    assert binned == pytest.approx(-4 * H * 0.15, rel=0.05)
    e, ctx = _context(True, state)
    assert abs(_circulation(e, ctx, *loop)) < 0.01 * abs(binned)


def test_smooth_bias_refreshes_and_a_saved_state_rebuilds_the_same_force(tmp_path):
    """The potential is refreshed from the accumulators every smoothBiasInterval samples, travels with the state
    (read-out, save, load), and a force rebuilt from it applies what the running one did, refreshed or not."""
    expr = "0.5*k*(x^2+y^2+z^2) + 2*sin(6*x)"
    probes = [[0.1, -0.3], [-0.4, 0.5], [0.6, 0.2]]
    e0, ctx0 = _context(True, _state(count=60.0), expr=expr)
    initial = np.array([_applied(e0, ctx0, lam) for lam in probes])
    for interval, refreshed in ((7, True), (10 ** 9, False)):
        e, ctx = _context(True, _state(count=60.0), interval=interval, expr=expr)
        e.setSampling(ctx, True)
        ctx.getIntegrator().step(400)
        saved = e.getState(ctx)
        assert saved.n_samples == 400 and saved.bias_potential.shape == (NB, NB)
        running = np.array([_applied(e, ctx, lam) for lam in probes])
        assert (np.abs(running - initial).max() > 1e-3) == refreshed
        saved.save(tmp_path / "s.npz")
        back = EABFState.load(tmp_path / "s.npz")
        np.testing.assert_array_equal(back.bias_potential, saved.bias_potential)
        np.testing.assert_array_equal(back.bias_potential_cover, saved.bias_potential_cover)
        e2, ctx2 = _context(True, back, interval=interval, expr=expr)
        np.testing.assert_array_equal(np.array([_applied(e2, ctx2, lam) for lam in probes]), running)
        if not refreshed:  # without its potential (a sum of states) a force integrates the accumulators afresh
            back.bias_potential = None
            e3, ctx3 = _context(True, back, interval=interval, expr=expr)
            assert np.abs(np.array([_applied(e3, ctx3, lam) for lam in probes]) - running).max() > 1e-3
    assert EABFState.pooled([saved, saved]).bias_potential is None


def test_smooth_bias_refuses_bad_intervals():
    system = _particle_system("0.5*k*(x^2+y^2+z^2)", {"k": 10.0})
    with pytest.raises(EABFError, match="smoothBiasInterval"):
        ExtendedABF(system, cvs.PositionXY(0), LO, HI, NB, 500.0, positions=np.zeros((1, 3)), smoothBias=True,
                    smoothBiasInterval=0)


@pytest.mark.slow
def test_2d_czar_with_the_smooth_bias_matches_exact():
    """test_eabf_analytic's 2D double well with the smooth bias: the CZAR free energy and a quadrant's weight."""
    params = {"a": 3 * KT, "b": 2 * KT, "c": 1.5 * KT, "x0": 0.4, "kc": 1000.0}
    expr = "a*((x/x0)^2-1)^2 + b*((y/x0)^2-1)^2 + c*x*y/x0^2 + 0.5*kc*z^2"
    system = _particle_system(expr, params)
    e = ExtendedABF(system, cvs.PositionXY(0), [-0.8, -0.8], [0.8, 0.8], [16, 16], 600.0, extendedPeriod=0.2,
                    fullSamples=200, positions=np.zeros((1, 3)), smoothBias=True, smoothBiasInterval=200)
    integ = openmm.LangevinMiddleIntegrator(T, 10.0, 0.005)
    integ.setRandomNumberSeed(11)
    ctx = openmm.Context(system, integ, REF)
    ctx.setPositions(e.extendPositions(np.array([[-0.4, -0.4, 0.0]])))
    ctx.setVelocitiesToTemperature(T, 11)
    integ.step(100000)
    s = e.getState(ctx)
    X, Y = np.meshgrid(*s.centers(), indexing="ij")
    exact = (params["a"] * ((X / 0.4) ** 2 - 1) ** 2 + params["b"] * ((Y / 0.4) ** 2 - 1) ** 2
             + params["c"] * X * Y / 0.16)
    exact -= exact.min()
    A = s.czar_free_energy(T)
    region = np.isfinite(A) & (exact < 8 * KT)
    assert region.sum() > 0.6 * (exact < 8 * KT).sum()  # the smooth bias flattens: the four wells are reached
    dev = A[region] - exact[region]
    dev -= np.average(dev, weights=s.zcount[region])
    assert np.sqrt(np.average(dev ** 2, weights=s.zcount[region])) < 0.5 * KT


def test_a_run_with_the_smooth_bias_resumes_exactly(tmp_path):
    """md.run_eabf with eabf.smooth_bias: a run interrupted at its checkpoints and resumed ends bit-identical to an
    uninterrupted one (the potential travels in the checkpoint; its refreshes, every 7 samples, do not line up
    with the 100-step segments), and it records the settings it started with."""
    import dataclasses
    import json

    from aesample.md import run_eabf

    from .test_md import _alanine, _settings

    ms = _alanine()
    cv = cvs.parse_cv_spec("phi,psi", ms.topology)
    es, md = _settings()
    es = dataclasses.replace(es, smooth_bias=True, smooth_bias_interval=7)
    cont = run_eabf(ms, cv, es, md, tmp_path / "cont", 300, log=None)
    run_eabf(ms, cv, es, md, tmp_path / "split", 100, log=None)
    # a resume keeps the bias (and its refresh interval) the run started with, whatever the settings say now
    plain = dataclasses.replace(es, smooth_bias=False, smooth_bias_interval=500)
    run_eabf(ms, cv, plain, md, tmp_path / "split", 200, resume=True, log=None)
    res = run_eabf(ms, cv, plain, md, tmp_path / "split", 300, resume=True, log=None)
    for name in ("count", "grad", "zcount", "czar", "last", "bias_potential", "bias_potential_cover"):
        np.testing.assert_array_equal(getattr(res.state, name), getattr(cont.state, name), err_msg=name)
    np.testing.assert_array_equal(res.positions, cont.positions)
    run_info = json.loads((tmp_path / "split" / "run.json").read_text())
    assert run_info["smooth_bias"] is True and run_info["smooth_bias_interval"] == 7
    assert np.abs(cont.state.bias_potential).max() > 0  # the bias was on and refreshed


def test_smooth_bias_extends_one_bin_beyond_the_sampled_region_as_a_gradient():
    """At the edge of the sampled region the potential continues one bin with the last sampled bin's slope (no push
    back from the bins the integral does not reach, and no curl); beyond that, where a cell has a corner that
    neither was sampled nor neighbours a sampled bin, the binned bias applies (zero without samples)."""
    state = _state()
    state.count[5:, :] = 0.0  # bins with x > 0.25 never sampled
    state.grad[5:, :] = 0.0
    e, ctx = _context(True, state)
    c = LO + H * (np.arange(NB) + 0.5)
    for y in (0.1, -0.6):  # cells between the x centres 0.125 (sampled) and 0.375 (not)
        t = (y - c[c <= y].max()) / H
        rows = _field(np.full(2, c[4]), np.array([c[c <= y].max(), c[c > y].min()]))[:, 0]
        for x in (0.2, 0.3, 0.37):
            np.testing.assert_allclose(_applied(e, ctx, [x, y])[0], (1 - t) * rows[0] + t * rows[1], rtol=1e-5, atol=1e-5)
    assert abs(_circulation(e, ctx, 0.2, 0.35, -0.1, 0.1)) < 1e-3  # crosses the row edge y = 0 in that strip
    np.testing.assert_array_equal(_applied(e, ctx, [0.5, 0.1]), [0.0, 0.0])  # cells between x centres 0.375, 0.625
    inner = _applied(e, ctx, [-0.3, 0.1])
    want = _field(-0.3, 0.1)
    np.testing.assert_allclose(inner, want, atol=0.1 * np.abs(want).max())


def test_a_bin_that_fills_between_refreshes_joins_the_smooth_bias_at_the_next_refresh():
    """Bins outside the integral at a refresh stay outside until the next one, however many samples they get
    meanwhile: the cells around them keep the binned bias (no jump to the solver's zero potential)."""
    state = _state()
    state.count[5:, :] = 0.0
    state.grad[5:, :] = 0.0
    e, ctx = _context(True, state, interval=10 ** 9, expr="0.5*k*((x-0.62)^2+(y-0.1)^2+z^2)", params={"k": 2e4})
    e.setSampling(ctx, True)
    ctx.setPositions(e.extendPositions(np.array([[0.62, 0.1, 0.0]])))
    ctx.getIntegrator().step(300)  # lambda stays near (0.62, 0.1): bin (6, 4), two beyond the sampled ones, fills
    s = e.getState(ctx)
    assert s.count[6, 4] > 100 and s.bias_potential_cover[6, 4] == 0.0
    e_b, ctx_b = _context(False, s)
    e_s, ctx_s = _context(True, s, interval=10 ** 9)  # rebuilt from the state: the same stale potential and cover
    for lam in ([0.6, 0.1], [0.55, 0.2]):  # in bin (6, 4), cells with corners in columns 5 and 6
        binned = _applied(e_b, ctx_b, lam)
        assert np.abs(binned).max() > 0.1
        np.testing.assert_array_equal(_applied(e, ctx, lam), binned)
        np.testing.assert_array_equal(_applied(e_s, ctx_s, lam), binned)
    s.bias_potential = s.bias_potential_cover = None  # integrated afresh: the filled bin is inside now
    e_f, ctx_f = _context(True, s)
    assert np.abs(_applied(e_f, ctx_f, [0.6, 0.1]) - _applied(e_b, ctx_b, [0.6, 0.1])).max() > 1e-3


def _drive(e, ctx, points, every=1):
    """Sample the (xi, lambda) pairs ``points`` (k, 2, 2) one force evaluation each; the potential (and, on a
    graph-safe force, the solver state) after every ``every``-th sample."""
    e.setSampling(ctx, True)
    pots = []
    for k, (xi, lam) in enumerate(points):
        pos = e.extendPositions(np.array([[xi[0], xi[1], 0.0]]))
        pos[1:, 0] = lam
        ctx.setPositions(pos)
        ctx.getState(getForces=True)
        if (k + 1) % every == 0:
            st = e.getState(ctx)
            pots.append((st.bias_potential.copy(), None if st.bias_solver is None else st.bias_solver.copy()))
    return pots


def _points(n, seed):
    rng = np.random.default_rng(seed)
    xi = rng.uniform(-0.9, 0.9, (n, 2))
    return np.stack([xi, np.clip(xi + rng.normal(scale=0.05, size=(n, 2)), -0.99, 0.99)], axis=1)


def test_graph_safe_smooth_bias_applies_the_ordinary_potential_one_interval_later():
    """Captured in a CUDA graph the refresh cannot branch: the samples between two refreshes solve for the next
    potential. With the same samples, the graph-safe force's potential after each refresh is, bit for bit, the
    one the ordinary force integrated at the refresh before (the same conjugate-gradient iterations)."""
    interval = 20
    points = _points(4 * interval, 1)
    runs = {}
    for graphs in (False, True):
        e, ctx = _context(True, _state(count=60.0), interval=interval, graphs=graphs)
        assert e.smoothBias and (e._core.solve_steps == -(-8 * NB // interval) if graphs else True)
        runs[graphs] = [p for p, _ in _drive(e, ctx, points, every=interval)]
    plain, graph = runs[False], runs[True]
    for j in range(1, len(plain)):
        assert np.abs(plain[j] - plain[j - 1]).max() > 1e-3  # each refresh changed the potential
        np.testing.assert_array_equal(graph[j], plain[j - 1])
    e0, ctx0 = _context(True, _state(count=60.0), interval=interval)
    np.testing.assert_array_equal(graph[0], e0.getState(ctx0).bias_potential)  # the first: the initial integral


def test_graph_safe_smooth_bias_resumes_exactly_mid_solve(tmp_path):
    """A graph-safe force rebuilt from a state read between two refreshes (the solve half done) goes on exactly
    as the running one: the solver's state travels with the eABF state."""
    interval = 20
    points = _points(3 * interval, 2)
    e, ctx = _context(True, _state(count=60.0), interval=interval, graphs=True)
    straight = _drive(e, ctx, points, every=10)  # read after samples 10, 20, ..., 60 (a read-out samples nothing)
    e1, ctx1 = _context(True, _state(count=60.0), interval=interval, graphs=True)
    _drive(e1, ctx1, points[:30], every=30)
    saved = e1.getState(ctx1)
    assert 0 < saved.bias_solver[-1] < 8 * NB  # iterations done in the current solve
    saved.save(tmp_path / "s.npz")
    e2, ctx2 = _context(True, EABFState.load(tmp_path / "s.npz"), interval=interval, graphs=True)
    resumed = _drive(e2, ctx2, points[30:], every=10)  # after samples 40, 50, 60
    assert len(resumed) == 3
    for (p0, s0), (p1, s1) in zip(straight[3:], resumed):
        np.testing.assert_array_equal(p0, p1)
        np.testing.assert_array_equal(s0, s1)
    # without the solver's state, the potential committed at sample 40 comes from the accumulators at sample 30
    lost = EABFState.load(tmp_path / "s.npz")
    lost.bias_solver = None
    e3, ctx3 = _context(True, lost, interval=interval, graphs=True)
    assert np.abs(_drive(e3, ctx3, points[30:], every=10)[0][0] - straight[3][0]).max() > 1e-3
