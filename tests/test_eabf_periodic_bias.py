"""The applied ABF bias around a periodic CV is circulation-free once its ring is sampled (``closePeriodicBias``).

A free rotor (one particle held on a circle around a fixed axis; CV = its dihedral angle, flat free energy) and
accumulators prepared with a known gradient: the bias read back from the device must be the estimate minus its
ramp-weighted mean around each closed ring, and a pure circulation must stop driving lambda round the ring.
"""
import numpy as np
import openmm
import pytest

from aesample import cvs
from aesample.eabf import EABFState, ExtendedABF

REF = openmm.Platform.getPlatformByName("Reference")
T = 300.0
KAPPA = 500.0
FULL, MIN = 100, 50


def _rotor(theta: float):
    """Particles 0-2 are fixed (mass 0) and define the axis z; particle 3 is held on a circle of radius 0.3 nm
    around it, so the dihedral 0-1-2-3 is its angle about z."""
    system = openmm.System()
    for m in (0.0, 0.0, 0.0, 1.0):
        system.addParticle(m)
    f = openmm.CustomExternalForce("0.5*k*((sqrt(x^2+y^2)-r0)^2 + (z-0.5)^2)")
    f.addGlobalParameter("k", 5000.0)
    f.addGlobalParameter("r0", 0.3)
    f.addParticle(3, [])
    system.addForce(f)
    pos = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0],
                    [0.3 * np.cos(theta), 0.3 * np.sin(theta), 0.5]])
    return system, pos


def _state(bins, count, grad):
    d = len(bins)
    return EABFState(grid_min=np.full(d, -np.pi), grid_max=np.full(d, np.pi), bins=np.array(bins),
                     periodic=np.ones(d, bool), kappa=np.full(d, KAPPA), count=count, grad=grad,
                     zcount=np.zeros(bins), czar=np.zeros(tuple(bins) + (d,)), last=np.full(2 * d, 1e30))


def _applied(theta, cv, state, close, integrator=None):
    """(wrapped lambda, applied bias) read from the device at the rotor angle theta, sampling off."""
    system, pos = _rotor(theta)
    d = state.d
    e = ExtendedABF(system, cv, [-np.pi] * d, [np.pi] * d, list(state.bins), KAPPA, fullSamples=FULL, minSamples=MIN,
                    positions=pos, initialState=state, closePeriodicBias=close, smoothBias=False)
    ctx = openmm.Context(system, integrator or openmm.VerletIntegrator(0.001), REF)
    ctx.setPositions(e.extendPositions(pos))
    ctx.setParameter(e.sampleParameter, 0.0)
    _, lam, fbias = e.getInstantaneous(ctx)
    return e, ctx, lam, fbias


def _bin(value, n):
    return int(np.floor((value + np.pi) / (2 * np.pi) * n)) % n


def _ramp(count):
    return np.clip((count - MIN) / (FULL - MIN), 0.0, 1.0)


def _expected_closed(count, grad, axis_of_component):
    """The applied gradient: ramp (g - ramp-weighted ring mean), rings along each component's own axis, the mean
    taken out only where every bin of the ring was visited."""
    r = _ramp(count)
    g = grad / np.maximum(count, 1.0)[..., None]
    out = np.empty_like(g)
    for k, ax in enumerate(axis_of_component):
        rk = r * g[..., k]
        closed = (count > 0).all(axis=ax, keepdims=True)
        mean = np.where(closed, rk.sum(axis=ax, keepdims=True) / r.sum(axis=ax, keepdims=True), 0.0)
        out[..., k] = r * (g[..., k] - mean)
    return out


def test_1d_ring_bias_is_the_estimate_minus_its_ring_mean():
    n = 24
    centers = -np.pi + (np.arange(n) + 0.5) * 2 * np.pi / n
    count = np.full(n, 2.0 * FULL)
    count[::3] = 0.5 * (FULL + MIN)  # ramp 0.5 in every third bin: the mean is ramp-weighted
    count[10] = MIN - 10  # visited, no bias yet: the ring is closed all the same (a current can pass)
    g = 7.0 + 3.0 * np.sin(centers)  # a circulation of 7 kJ/mol/rad on top of a true (periodic) mean force
    grad = (g * count)[:, None]
    cv = cvs.Dihedral([0, 1, 2, 3])
    expected = _expected_closed(count, grad, [0])[:, 0]
    for theta in (0.4, 2.9, -1.3):
        _, _, lam, closed = _applied(theta, cv, _state([n], count, grad), close=True)
        _, _, _, raw = _applied(theta, cv, _state([n], count, grad), close=False)
        b = _bin(lam[0], n)
        assert closed[0] == pytest.approx(expected[b], rel=1e-9, abs=1e-9)
        assert raw[0] == pytest.approx(_ramp(count[b]) * g[b], rel=1e-9)
        assert abs(closed[0] - raw[0]) > 1.0  # the circulation is gone from the applied bias
    # an open ring (one bin never visited) is applied as estimated
    count[5] = 0.0
    grad = (g * count)[:, None]
    _, _, lam, closed = _applied(0.4, cv, _state([n], count, grad), close=True)
    b = _bin(lam[0], n)
    assert closed[0] == pytest.approx(_ramp(count[b]) * g[b], rel=1e-9)


def test_2d_rings_close_along_each_periodic_component():
    n = 12
    rng = np.random.default_rng(3)
    count = rng.uniform(MIN + 1, 3 * FULL, size=(n, n))
    count[4, 7] = 0.0  # the ring through (4, :) along component 1 and the ring (:, 7) along component 0 stay open
    count[2, 9] = MIN - 5  # visited without bias: its rings are closed
    grad = rng.normal(0.0, 5.0, size=(n, n, 2)) * count[..., None]
    cv = cvs.Dihedrals([[0, 1, 2, 3], [3, 2, 1, 0]])  # both the same angle: lambda sits in bin (b, b)
    expected = _expected_closed(count, grad, [0, 1])
    for theta in (0.4, 2.9, -1.3):
        _, _, lam, closed = _applied(theta, cv, _state([n, n], count, grad), close=True)
        b0, b1 = _bin(lam[0], n), _bin(lam[1], n)
        np.testing.assert_allclose(closed, expected[b0, b1], rtol=1e-9, atol=1e-9)


def test_a_circulating_estimate_drives_lambda_round_the_ring_only_when_applied_raw():
    """A pure circulation (the same gradient in every bin of a flat rotor) is a constant torque on lambda: raw,
    lambda and the rotor wind round the ring; closed, the applied bias is zero and they only diffuse."""
    n, c = 24, 10.0
    count = np.full(n, 10.0 * FULL)
    grad = np.full((n, 1), c) * count[:, None]
    windings = {}
    for close in (False, True):
        integ = openmm.LangevinMiddleIntegrator(T, 10.0, 0.002)
        integ.setRandomNumberSeed(5)
        e, ctx, lam0, fbias = _applied(0.4, cvs.Dihedral([0, 1, 2, 3]), _state([n], count, grad), close, integ)
        assert (abs(fbias[0]) < 0.5) if close else (fbias[0] == pytest.approx(c, rel=0.05))
        ctx.setParameter(e.sampleParameter, 1.0)
        ctx.setVelocitiesToTemperature(T, 5)
        unwrapped, last = 0.0, float(lam0[0])
        for _ in range(100):  # 10 ps
            integ.step(50)
            now = float(e.getLambda(ctx)[0])
            unwrapped += (now - last + np.pi) % (2 * np.pi) - np.pi  # steps of 50 x 2 fs move far less than pi
            last = now
        windings[close] = unwrapped
    # drift ~ c / (total mass x friction) ~ 1.7 rad/ps, diffusion ~ 3 rad SD over 10 ps
    assert windings[False] > 10.0, windings
    assert abs(windings[True]) < 8.0, windings
