"""Fast checks of the scores the loop benchmarks report (aesample.benchmarking; no MD): Delta F from a profile,
marginals, AUC; and that the benchmark scripts still load."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from aesample import benchmarking as bench
from aesample.estimators import kT

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
KT300 = kT(300.0)


def test_delta_f_step_profile():
    phi = np.linspace(-np.pi, np.pi, 7201)
    f = np.where(phi > 0, 7.0, 0.0)
    # a step profile: the half-basins have equal widths, so Delta F is the step height (up to interpolation at 0, pi)
    assert bench.delta_f_from_profile(phi, f) == pytest.approx(7.0, abs=0.05)


def test_delta_f_matches_frame_estimator():
    """The grid definition agrees with aesample.analysis.basin_free_energy_difference on Boltzmann samples."""
    from aesample.analysis import basin_free_energy_difference

    phi = np.linspace(-np.pi, np.pi, 361)
    f = 4.0 * (1 - np.cos(phi + 1.3)) + 2.0 * np.sin(2 * phi)
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, 400000)
    w = np.exp(-np.interp(x, phi, f) / KT300)
    assert bench.delta_f_from_profile(phi, f) == pytest.approx(basin_free_energy_difference(x, w, KT300), abs=0.05)


def test_marginal_of_separable_2d():
    g = np.linspace(-np.pi, np.pi, 72)
    f_phi = 3.0 * (1 + np.cos(g))
    f_psi = 5.0 * (1 + np.sin(g))
    fes = f_psi[:, None] + f_phi[None, :]  # OpenMM order [psi, phi]
    assert np.allclose(bench.marginal_phi(fes), f_phi - f_phi.min(), atol=1e-9)


def test_load_precomputed_npy(tmp_path):
    f = np.where(np.linspace(-np.pi, np.pi, 72) > 0, 5.0, 1.0)
    np.save(tmp_path / "f.npy", f)
    r = bench.load_reference(tmp_path / "f.npy")
    assert r["cvs"] == "phi" and r["f_phi"].min() == 0.0
    assert r["delta_f"] == pytest.approx(4.0, abs=0.2)


def test_auc_and_tolerance():
    labels = np.array([False] * 5 + [True] * 5)
    assert bench.auc(np.arange(10.0), labels) == 1.0
    assert bench.auc(-np.arange(10.0), labels) == 0.0
    assert bench.auc(np.zeros(10), labels) == 0.5
    assert math.isnan(bench.auc(np.arange(3.0), np.zeros(3, bool)))
    series = [(1, 5.0), (2, 8.5), (3, 12.0), (4, 9.0), (5, 8.9)]
    assert bench.ns_to_tolerance(series, 8.8, 1.0) == 4
    assert bench.ns_to_tolerance(series[:3], 8.8, 1.0) is None


def test_half_delta_f_uses_each_half():
    phi = np.array([-1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    w = np.full(6, 1 / 6)
    h1, h2 = bench.half_delta_f(phi, w, 300.0)
    assert h1 == pytest.approx(-KT300 * math.log(1 / 2))
    assert h2 == pytest.approx(-KT300 * math.log(2))
    h1, _ = bench.half_delta_f(np.array([-1.0, -1.0, 1.0, 1.0]), np.full(4, 0.25), 300.0)
    assert h1 != h1  # no phi > 0 frame in the first half: NaN, not an error


@pytest.mark.parametrize("name", ["reference_fes", "adp_loop", "chignolin_loop", "synthetic_band_errorbars",
                                  "loop_error_bars", "walker_checks", "cv_jacobian_ops",
                                  "loop_late_estimate", "reference_basin_check", "within_basin_check",
                                  "static_bias_check"])
def test_benchmark_scripts_load(name):
    """The scripts themselves (loaded as files, not through sys.path) still import what they use."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert callable(mod.main)


def _load_bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ca_frames(protos, per, noise, rng):
    import mdtraj

    top = mdtraj.Topology()
    chain = top.add_chain()
    for i in range(protos[0].shape[0]):
        top.add_atom("CA", mdtraj.element.carbon, top.add_residue("GLY", chain))
    xyz = np.concatenate([p[None] + noise * rng.standard_normal((n, *p.shape)) for p, n in zip(protos, per)])
    return mdtraj.Trajectory(xyz.astype(np.float32), top)


def test_chignolin_misfolded_reference_is_the_compact_non_native_cluster():
    """Of folded, compact non-native and extended frames, the derived misfolded reference is a frame of the compact
    non-native set; the held-out AUC separates classes that xi separates linearly and not random labels."""
    import mdtraj

    chig = _load_bench("chignolin_loop")
    rng = np.random.default_rng(3)
    t = np.linspace(0.0, np.pi, 10)
    hairpin = np.stack([0.5 * np.cos(t), 0.5 * np.sin(t), np.zeros(10)], axis=1)           # folded
    k = np.arange(10)
    other = np.stack([0.3 * np.cos(1.75 * k), 0.3 * np.sin(1.75 * k), 0.06 * k], axis=1)  # a compact helix
    extended = np.stack([np.linspace(-1.6, 1.6, 10), np.zeros(10), np.zeros(10)], axis=1)
    ca = _ca_frames([hairpin, other, extended], [60, 40, 60], 0.01, rng)
    rmsd = mdtraj.rmsd(ca, ca, 0)  # frame 0 is folded: RMSD to "5AWL"
    heavy_rg = mdtraj.compute_rg(ca)
    i, n = chig.misfolded_reference(ca, rmsd, heavy_rg, min_frames=10)
    assert n == 40 and 60 <= i < 100
    # too few candidates: no reference
    assert chig.misfolded_reference(ca, rmsd, heavy_rg, min_frames=41)[0] is None
    xi = np.column_stack([rng.standard_normal(160), np.r_[np.zeros(60), np.ones(40), 2 * np.ones(60)]])
    assert chig.heldout_auc(xi, np.arange(160) >= 100) == pytest.approx(1.0)
    assert abs(chig.heldout_auc(xi, rng.random(160) < 0.5) - 0.5) < 0.2
