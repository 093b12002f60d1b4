"""Diagnostics: regression score, dihedral features, basin free energies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aesample.analysis import (
    basin_free_energy_difference,
    basin_overlap,
    basin_transitions,
    dihedral_score,
    periodic_features,
    regression_score,
)


def test_regression_score_linear_and_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 2))
    y = x @ np.array([[2.0, -1.0], [0.5, 3.0]]) + 4.0  # any affine map of the previous CV scores 1
    assert regression_score(y, x) == pytest.approx(1.0, abs=1e-12)
    noise = rng.normal(size=(500, 2))
    assert regression_score(noise, x) < 0.05
    # Known value: y = x + e with var(x) = var(e) = 1 gives R^2 = 1/2.
    x1 = rng.normal(size=20000)
    y1 = x1 + rng.normal(size=20000)
    assert regression_score(y1, x1) == pytest.approx(0.5, abs=0.02)


def test_regression_score_weights_match_duplication():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 1))
    y = np.sin(x[:, 0]) + 0.1 * rng.normal(size=50)
    counts = rng.integers(1, 4, size=50)
    dup = regression_score(np.repeat(y, counts), np.repeat(x, counts, axis=0))
    assert regression_score(y, x, weights=counts.astype(float)) == pytest.approx(dup, rel=1e-10)


def test_regression_score_rejects_mismatch():
    with pytest.raises(ValueError, match="target has 10 frames but predictors have 9"):
        regression_score(np.zeros(10), np.zeros(9))


def test_dihedral_score_periodic():
    rng = np.random.default_rng(2)
    angles = rng.uniform(-math.pi, math.pi, size=(1000, 2))
    # A CV that is a smooth periodic function of phi: linear in cos/sin, so it scores 1,
    # while the raw angle (discontinuous at +-pi) would not.
    cv = np.stack([np.cos(angles[:, 0]) + 0.3 * np.sin(angles[:, 1]), np.sin(angles[:, 0])], axis=1)
    assert dihedral_score(cv, angles) == pytest.approx(1.0, abs=1e-10)
    assert periodic_features(angles).shape == (1000, 4)
    assert dihedral_score(rng.normal(size=(1000, 2)), angles) < 0.05


def test_basin_free_energy_difference():
    kT = 2.494
    phi = np.array([-1.0] * 3 + [1.0] * 1)
    w = np.ones(4)
    assert basin_free_energy_difference(phi, w, kT) == pytest.approx(kT * math.log(3))
    with pytest.raises(ValueError, match="never visited"):
        basin_free_energy_difference(np.array([-1.0, -2.0]), np.ones(2), kT)


def test_chignolin_observables_folded_vs_stretched():
    import mdtraj

    from aesample.analysis import chignolin_observables
    from aesample.systems import systems_dir

    folded = mdtraj.load(str(systems_dir() / "chignolin_cln025_5awl.pdb"))
    stretched = folded[0]
    stretched.xyz = folded.xyz * np.array([1.6, 1.0, 1.0], dtype=np.float32)  # pull the hairpin apart
    both = mdtraj.join([folded, stretched])
    obs = chignolin_observables(both, folded)
    assert obs["rmsd_ca"][0] < 1e-3 and obs["rmsd_ca"][1] > 0.15
    assert obs["hbond_d3n_t8o"][0] < 0.32  # the hairpin's Asp3 N-H ... O Thr8 hydrogen bond
    assert obs["hbond_d3n_t8o"][1] > obs["hbond_d3n_t8o"][0]
    assert obs["rg"][1] > obs["rg"][0]


def test_basin_transitions_ignore_barrier_recrossings():
    # C7eq -> barrier top -> back to C7eq is no transition; C7eq -> C7ax -> (barrier) -> C7eq is two
    phi = np.array([-1.5, -0.2, 0.1, -0.2, -1.4, 0.2, 1.0, 0.9, 0.1, -0.1, -1.2, -2.8, 3.0])
    assert basin_transitions(phi) == 2
    assert basin_transitions(np.full(5, -1.5)) == 0
    # two walkers one after another, one in each basin: the junction is not a transition
    two = np.r_[np.full(4, -1.5), np.full(4, 1.0)]
    assert basin_transitions(two) == 1 and basin_transitions(two, n_runs=2) == 0
    with pytest.raises(ValueError, match="equal length"):
        basin_transitions(np.zeros(5), n_runs=2)


def test_basin_overlap_counts_c7ax_mass_in_bins_shared_with_c7eq():
    phi = np.array([-1.5, -1.4, 1.0, 1.1, 1.2, 0.0])
    weights = np.array([1.0, 1.0, 1.0, 2.0, 1.0, 5.0])
    # separated: C7ax frames in bins of their own (the barrier frame at phi = 0 counts for neither basin)
    assert basin_overlap(phi, np.array([0, 0, 1, 1, 2, 1]), weights) == 0.0
    # the frame of weight 2 shares bin 0 with C7eq frames: half the C7ax mass
    assert basin_overlap(phi, np.array([0, 0, 1, 0, 2, 1]), weights) == pytest.approx(0.5)
    assert basin_overlap(phi, np.zeros(6, dtype=int), weights) == 1.0
    assert np.isnan(basin_overlap(np.full(3, -1.5), np.zeros(3, dtype=int), np.ones(3)))


def test_basin_report_says_not_sampled_until_crossed():
    from aesample.analysis import basin_report

    kT = 2.494
    rng = np.random.default_rng(0)
    # one C7ax frame across the seam-free boundary: a value, but not a result
    phi = np.concatenate([rng.uniform(-2.5, -1.0, 999), [1.0]])
    r = basin_report(phi, np.full(1000, 1e-3), kT)
    assert r["status"] == "not sampled" and r["transitions"] == 1 and "transitions" in r["reason"]
    assert r["definition"].startswith("C7ax (0 < phi < 2.3 rad)")
    # a frame at phi = +3.0 (the beta region past 2.3) belongs to the rest, not to C7ax
    assert basin_report(np.array([-1.0, 3.0]), np.array([0.5, 0.5]), kT)["value"] is None
    # blocks of each basin, crossed many times, equal weights: Delta F = -kT ln(n_ax / n_rest)
    phi = np.tile(np.concatenate([np.full(30, -1.5), np.full(10, 1.0)]), 10)
    r = basin_report(phi, np.ones(len(phi)), kT, error=0.3)
    assert r["status"] == "ok" and r["transitions"] == 19
    assert r["value"] == pytest.approx(-kT * np.log(100 / 300)) and r["error"] == 0.3


def test_c7ax_core_labels_count_the_same_visits_as_basin_transitions():
    from aesample import estimators as est
    from aesample.analysis import c7ax_core_labels

    phi = np.array([-1.2, -0.2, 0.1, -0.1, 0.5, 1.0, 2.1, 2.5, -3.0, -0.3, 1.5, 2.2])
    core = c7ax_core_labels(phi)
    assert core.tolist() == [0, -1, -1, -1, 1, 1, -1, -1, 0, -1, 1, -1]
    _, basins = est.basin_visits(core)
    assert basins.tolist() == [0, 1, 0, 1]
    assert len(basins) - 1 == basin_transitions(phi)
