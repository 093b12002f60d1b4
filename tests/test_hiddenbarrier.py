"""Hidden-barrier diagnostic on synthetic trajectories (numpy only, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aesample.hiddenbarrier import bin_indices, hidden_barrier, otsu_split

GRID = dict(grid_min=-1.5, width=0.1, shape=30, periodic=False)


def _trajectories(kind: str, seed: int = 0, n_runs: int = 4, T: int = 5000, F: int = 12):
    """Walkers whose CV xi relaxes fast (Ornstein-Uhlenbeck, ~10 frames) around a state-dependent centre.

    kind ``slow``: a hidden two-state coordinate (feature 1 at -1 or +1, noise 0.25) switches rarely (p = 3e-4 per
    frame, a few switches per run); state 0 sits around xi = -0.45, state 1 around +0.45 (SD 0.3), so both share
    the bins around xi = 0 -- the overlap band. ``fast``: the same two states switch every ~3 frames at the same
    xi. ``unimodal``: feature 1 is a single Gaussian coordinate that diffuses slowly (correlation ~500 frames).
    Returns features (T, F), xi (T, 1), run ids (T,), hidden state (T,).
    """
    rng = np.random.default_rng(seed)
    p_switch = {"slow": 3e-4, "fast": 0.3, "unimodal": 0.0}[kind]
    feats, xis, runs, states = [], [], [], []
    for k in range(n_runs):
        flips = rng.random(T) < p_switch
        flips[0] = False
        h = (k % 2 + np.cumsum(flips)) % 2
        centre = np.where(h == 1, 0.45, -0.45) if kind == "slow" else np.zeros(T)
        xi = np.zeros(T)
        noise = rng.normal(size=T)
        for t in range(1, T):
            xi[t] = xi[t - 1] + 0.1 * (centre[t] - xi[t - 1]) + np.sqrt(0.2) * 0.3 * noise[t]
        if kind == "unimodal":
            hid = np.zeros(T)
            noise = rng.normal(size=T)
            for t in range(1, T):
                hid[t] = hid[t - 1] * (1 - 0.002) + np.sqrt(0.004) * noise[t]
        else:
            hid = np.where(h == 1, 1.0, -1.0) + 0.25 * rng.normal(size=T)
        f = 0.2 * rng.normal(size=(T, F))
        f[:, 0] += xi
        f[:, 1] += hid
        feats.append(f)
        xis.append(xi)
        runs.append(np.full(T, k))
        states.append(h)
    return np.concatenate(feats), np.concatenate(xis)[:, None], np.concatenate(runs), np.concatenate(states)


def _truth_mixed(xi, h, w):
    """Weight in bins holding >= 10 % of each hidden state."""
    b = bin_indices(xi, GRID["grid_min"], GRID["width"], GRID["shape"])
    mixed = 0.0
    for bb in np.unique(b[b >= 0]):
        m = b == bb
        q = w[m & (h == 1)].sum() / w[m].sum()
        mixed += w[m].sum() if min(q, 1 - q) >= 0.1 else 0.0
    return mixed / w.sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_slow_hidden_coordinate_is_flagged(seed):
    f, xi, runs, h = _trajectories("slow", seed=seed)
    w = np.full(len(xi), 1.0 / len(xi))
    res = hidden_barrier(f, xi, w, runs, **GRID)
    truth = _truth_mixed(xi, h, w)
    assert truth > 0.1  # the model has an overlap band
    assert res.flagged
    # the flagged weight is the overlap band's, not everything
    assert res.weight_fraction == pytest.approx(truth, abs=0.05)
    flagged = [b for b in res.bins if b.flagged]
    assert all(abs(b.center[0]) < 0.6 for b in flagged)
    assert all(b.persistence > 0.8 and b.separation > 4 and b.share >= 0.05 and b.mixed_weight > 0 for b in flagged)
    # the mixture drifts between time blocks far beyond binomial noise
    assert np.nanmedian([b.dispersion for b in flagged]) > 10


def _stuck_walkers(seed: int, n_runs: int = 4, T: int = 5000, F: int = 12, p_out: float = 0.05,
                   p_back: float = 0.5):
    """Walkers stuck in different hidden sets at the same xi: run 1 in set 1, the others in set 0, each with short
    excursions to the other set (start probability ``p_out``, end ``p_back`` per frame). The excursions make the
    label switch often (persistence ~0.7) while each walker's share stays its own: the mixture the pooled weights
    see is decided by which set each walker started in (the loop's iteration 2 on alanine dipeptide, where one
    walker held C7ax at xi values the three others held C7eq/C5)."""
    rng = np.random.default_rng(seed)
    feats, xis, runs, states = [], [], [], []
    for k in range(n_runs):
        base = 1 if k == 1 else 0
        h = np.empty(T, dtype=int)
        cur = base
        u = rng.random(T)
        for t in range(T):
            cur = (1 - base if u[t] < p_out else base) if cur == base else (base if u[t] < p_back else cur)
            h[t] = cur
        xi = np.zeros(T)
        noise = rng.normal(size=T)
        for t in range(1, T):
            xi[t] = 0.9 * xi[t - 1] + np.sqrt(0.2) * 0.3 * noise[t]
        f = 0.2 * rng.normal(size=(T, F))
        f[:, 0] += xi
        f[:, 1] += np.where(h == 1, 1.0, -1.0) + 0.25 * rng.normal(size=T)
        feats.append(f)
        xis.append(xi)
        runs.append(np.full(T, k))
        states.append(h)
    return np.concatenate(feats), np.concatenate(xis)[:, None], np.concatenate(runs), np.concatenate(states)


@pytest.mark.parametrize("seed", [0, 1])
def test_walkers_stuck_in_different_sets_are_flagged_despite_short_excursions(seed):
    f, xi, runs, h = _stuck_walkers(seed)
    w = np.full(len(xi), 1.0 / len(xi))
    res = hidden_barrier(f, xi, w, runs, **GRID)
    assert _truth_mixed(xi, h, w) > 0.9
    assert res.flagged and res.weight_fraction > 0.9
    heavy = [b for b in res.bins if b.weight > 0.05]
    # persistence alone (>= 0.8) would miss it: the label switches at every excursion ...
    assert heavy and all(0.5 < b.persistence < 0.8 for b in heavy)
    assert not hidden_barrier(f, xi, w, runs, **GRID, min_persistence=0.8).flagged
    # ... but the share drifts between the walkers' blocks far beyond binomial noise
    assert all(b.dispersion > 10 for b in heavy)
    # one walker alone holds one set (with its excursions): nothing to flag
    one = runs == 0
    assert not hidden_barrier(f[one], xi[one], w[one], runs[one], **GRID).flagged


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_mixing_bimodal_coordinate_is_not_flagged(seed):
    f, xi, runs, h = _trajectories("fast", seed=seed)
    w = np.full(len(xi), 1.0 / len(xi))
    res = hidden_barrier(f, xi, w, runs, **GRID)
    assert _truth_mixed(xi, h, w) > 0.9  # both states share every bin ...
    assert not res.flagged  # ... but exchange fast: harmless
    assert res.weight_fraction < 0.01
    heavy = [b for b in res.bins if b.weight > 0.05]
    assert heavy and all(b.separation > 4 for b in heavy)  # well separated, so persistence decides
    assert all(b.persistence < 0.5 for b in heavy)


@pytest.mark.parametrize("seed", [0, 1])
def test_unimodal_slow_coordinate_is_not_flagged(seed):
    f, xi, runs, _ = _trajectories("unimodal", seed=seed)
    w = np.full(len(xi), 1.0 / len(xi))
    res = hidden_barrier(f, xi, w, runs, **GRID)
    assert not res.flagged
    assert res.weight_fraction < 0.01
    # slow and split in two, but a single mode: separation stays below the threshold
    assert max(b.separation for b in res.bins) < 4.0


def test_weights_decide_the_fraction_and_unbinned_weight_counts():
    f, xi, runs, _ = _trajectories("slow", seed=0)
    w = np.full(len(xi), 1.0 / len(xi))
    base = hidden_barrier(f, xi, w, runs, **GRID)
    # Doubling the weight of frames outside the band lowers the flagged fraction accordingly.
    w2 = np.where(np.abs(xi[:, 0]) > 0.6, 2.0, 1.0)
    res = hidden_barrier(f, xi, w2 / w2.sum(), runs, **GRID)
    assert res.weight_fraction < base.weight_fraction
    # Frames outside the grid are not examined but keep their weight in the total.
    xi_out = xi.copy()
    xi_out[: len(xi) // 2] = 5.0
    res_out = hidden_barrier(f, xi_out, w, runs, **GRID)
    assert res_out.examined_weight <= 0.5 + 1e-12


def test_a_band_at_high_free_energy_shows_in_the_frames_not_in_the_weight():
    # Where a learned CV squeezes a barrier, the bins that mix the two sets are the junction between them, at high
    # free energy: the biased run spends a fair share of its frames there, the Boltzmann weights almost nothing
    # (alanine dipeptide, the loop's CVs: 5-17 % of the frames, < 0.4 % of the weight). The loop runs the detector
    # with both weightings; only the frames see this band.
    f, xi, runs, h = _trajectories("slow", seed=0)
    band = np.abs(xi[:, 0]) < 0.35
    boltzmann = np.where(band, 1e-3, 1.0)  # A(xi) ~ 7 kT higher in the junction
    boltzmann /= boltzmann.sum()
    frames = np.full(len(xi), 1.0 / len(xi))
    by_weight = hidden_barrier(f, xi, boltzmann, runs, **GRID)
    by_frames = hidden_barrier(f, xi, frames, runs, **GRID)
    assert _truth_mixed(xi, h, boltzmann) < 0.01 and _truth_mixed(xi, h, frames) > 0.1
    assert not by_weight.flagged and by_weight.weight_fraction < 0.01
    assert by_frames.flagged
    assert by_frames.weight_fraction == pytest.approx(_truth_mixed(xi, h, frames), abs=0.05)


def test_auto_coarsening_merges_at_least_min_coarsen_bins():
    f, xi, runs, _ = _trajectories("slow", seed=0)
    w = np.full(len(xi), 1.0 / len(xi))
    # 20 000 frames on 30 bins: single bins would be enough to judge; two are merged anyway (sets in neighbouring
    # bins must be seen together)
    assert hidden_barrier(f, xi, w, runs, **GRID).coarsen == (2,)
    assert hidden_barrier(f, xi, w, runs, **GRID, min_coarsen=1).coarsen == (1,)
    assert hidden_barrier(f, xi, w, runs, **GRID, min_coarsen=1, min_examined=0.999).coarsen[0] > 1


def test_threshold_and_summary():
    f, xi, runs, _ = _trajectories("slow", seed=0)
    w = np.ones(len(xi))
    res = hidden_barrier(f, xi, w, runs, **GRID, weight_threshold=0.99)
    assert res.weight_fraction > 0.05 and not res.flagged
    d = res.as_dict(max_bins=3)
    json.dumps(d)  # JSON-ready (NaN -> None)
    assert len(d["bins"]) == 3 and d["bins"][0]["flagged"]
    assert set(d) >= {"weight_fraction", "n_flagged", "n_examined", "examined_weight", "flagged", "bins"}


def test_two_dimensional_periodic_grid_and_runs_none():
    rng = np.random.default_rng(3)
    T = 4000
    xi = np.column_stack([rng.uniform(-np.pi, np.pi, T), rng.normal(0, 0.05, T)])
    f = rng.normal(size=(T, 5))
    # One run, label set by the half of the run: never switches, separated, half/half -> flagged everywhere.
    f[:, 2] += np.where(np.arange(T) < T // 2, -3.0, 3.0)
    res = hidden_barrier(f, xi, np.ones(T), None, [-np.pi, -1.0], [2 * np.pi / 4, 0.5], [4, 4], [True, False],
                         min_frames=100, coarsen=1)
    assert res.flagged and res.weight_fraction > 0.9
    assert all(b.index[1] in (1, 2) for b in res.bins)
    # the wrap: xi = pi + 0.1 lands in the first bin of the periodic dimension
    assert bin_indices(np.array([[np.pi + 0.1, 0.0]]), [-np.pi, -1.0], [np.pi / 2, 0.5], [4, 4], [True, False])[0] == 2


def test_otsu_split_and_input_checks():
    p = np.r_[np.zeros(10), np.ones(5) * 3.0]
    thr, lab = otsu_split(p)
    assert 0 < thr < 3 and lab.sum() == 5
    assert otsu_split(np.ones(10))[1].sum() == 0  # nothing to split
    with pytest.raises(ValueError, match="one row per frame"):
        hidden_barrier(np.zeros((5, 2)), np.zeros((4, 1)), np.ones(5), None, **GRID)
    with pytest.raises(ValueError, match="non-negative"):
        hidden_barrier(np.zeros((5, 2)), np.zeros((5, 1)), -np.ones(5), None, **GRID)


def _slow_walk(rng, T, sd=0.5, a=0.002):
    x = np.zeros(T)
    noise = rng.normal(size=T)
    for t in range(1, T):
        x[t] = x[t - 1] * (1 - a) + np.sqrt(2 * a) * sd * noise[t]
    return x


def test_sets_side_by_side_in_xi_are_not_counted_in_coarse_bins():
    """Two separated, slowly exchanging sets that xi resolves (xi_1 < 0 vs > 0) share coarse bins but no grid bin."""
    rng = np.random.default_rng(5)
    T = 6000
    xi = np.column_stack([_slow_walk(rng, T), _slow_walk(rng, T)])
    f = 0.3 * rng.normal(size=(T, 6))
    f[:, 0] += np.where(xi[:, 0] > 0, 3.0, -3.0)
    grid = dict(grid_min=-1.5, width=0.1, shape=30)
    # min_persistence 0: separation, shares and persistence all pass; only the grid-bin mixing can reject
    res = hidden_barrier(f, xi, np.ones(T), None, **grid, coarsen=4, min_persistence=0.0)
    assert res.coarsen == (4, 4)
    straddling = [b for b in res.bins if b.index[0] == 3]  # fine bins 12..15: xi_1 in [-0.3, 0.1)
    assert straddling and max(b.separation for b in straddling) > 4 and max(b.share for b in straddling) > 0.1
    assert res.n_flagged == 0 and res.weight_fraction == 0.0 and not res.flagged
    # the same frames with the label hidden from xi (a slow two-state coordinate of its own) are flagged
    h = (np.cumsum(rng.random(T) < 2e-3) % 2).astype(bool)
    f[:, 0] = 0.3 * rng.normal(size=T) + np.where(h, 3.0, -3.0)
    res = hidden_barrier(f, xi, np.ones(T), None, **grid)
    assert res.coarsen[0] > 1  # 6000 frames over a 30 x 30 grid: too few per grid bin, merged automatically
    assert res.flagged and res.weight_fraction > 0.3
