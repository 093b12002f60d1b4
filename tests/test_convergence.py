"""The loop's convergence criterion: one statement (verdict.convergence_blockers), not fooled by a collapsed sample
or by sampling that is still finding new states."""
import itertools

import numpy as np
import pytest

from aesample.analysis import support_growth
from aesample.config import LoopConfig
from aesample.loopstages import is_converged
from aesample.verdict import convergence_blockers


def test_support_growth_is_the_weight_first_reached_late():
    # two walkers of 10 frames; walker 1 enters bin 7 in its second half only, with weight 3 of 23
    bins = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0] + [1, 1, 2, 2, 1, 2, 7, 7, 7, 2])
    runs = np.repeat([0, 1], 10)
    w = np.ones(20)
    w[16:19] = [1.0, 1.0, 1.0]
    assert support_growth(bins, runs, w) == pytest.approx(3 / 20)
    # revisiting only what the first halves found: no growth; a bin seen early by the other walker counts as seen
    assert support_growth(np.where(bins == 7, 0, bins), runs, w) == 0.0
    # the late bin carries most of the weight: a basin entered at the end
    w2 = np.where(bins == 7, 100.0, 1.0)
    assert support_growth(bins, runs, w2) > 0.9
    # frames outside the grid (negative label) never count as new support
    assert support_growth(np.where(bins == 7, -1, bins), runs, w) == 0.0
    with pytest.raises(ValueError, match="one entry per frame"):
        support_growth(bins, runs[:5], w)


SETTLED = {"iteration": 3, "regression_score": 0.999, "free_energy_drift": 0.3, "free_energy_error": 0.4,
           "hidden_barrier_fraction": 0.0, "effective_sample_size": 250.0, "support_growth": 0.01}


def test_a_collapsed_sample_or_growing_support_holds_the_loop_back():
    loop = LoopConfig()
    assert is_converged(SETTLED, loop) and convergence_blockers(SETTLED, loop) == []
    # R^2 = 0.999996 from an ESS of 1.2 frames (a run seen in the reproduction issue) is no convergence
    collapsed = dict(SETTLED, regression_score=0.999996, effective_sample_size=1.2)
    assert not is_converged(collapsed, loop)
    assert any("loop.min_ess" in b for b in convergence_blockers(collapsed, loop))
    growing = dict(SETTLED, support_growth=0.3)
    assert not is_converged(growing, loop)
    assert any("loop.max_support_growth" in b and "30.0 %" in b for b in convergence_blockers(growing, loop))
    # both checks can be switched off
    off = LoopConfig(min_ess=None, max_support_growth=None)
    assert is_converged(collapsed, off) and is_converged(growing, off)


def test_is_converged_is_exactly_an_empty_blocker_list():
    loop = LoopConfig(walkers=2)
    values = {
        "iteration": [1, 3], "regression_score": [None, 0.95, 0.999], "free_energy_drift": [None, 0.5, 2.0],
        "free_energy_sem": [None, 0.5, 2.0], "effective_sample_size": [5.0, 100.0], "support_growth": [0.0, 0.2],
        "hidden_barrier_fraction": [0.0, 0.1], "hidden_barrier_sample_fraction": [None, 0.01, 0.1],
    }
    keys = list(values)
    n_converged = 0
    for combo in itertools.product(*values.values()):
        m = dict(zip(keys, combo))
        converged = is_converged(m, loop)
        assert converged == (convergence_blockers(m, loop) == []), m
        n_converged += converged
    assert n_converged == 2  # only the all-good combinations (the frames' hidden barrier absent or small)


def test_a_hidden_barrier_in_the_frames_alone_holds_the_loop_back():
    # the loop's CVs on alanine dipeptide: < 0.4 % of the weight but 5-17 % of the frames in bins mixing C7ax and
    # the rest, and walkers that disagree on Delta F by SD 3-8 kJ/mol
    loop = LoopConfig()
    junction = dict(SETTLED, hidden_barrier_fraction=0.001, hidden_barrier_sample_fraction=0.12)
    blockers = convergence_blockers(junction, loop)
    assert not is_converged(junction, loop)
    assert len(blockers) == 1 and "12.0 % of the frames" in blockers[0] and "hidden_barrier_tolerance" in blockers[0]
    assert is_converged(dict(junction, hidden_barrier_sample_fraction=0.015), loop)
    assert is_converged(junction, LoopConfig(hidden_barrier_tolerance=None))


def test_the_named_basins_delta_f_must_be_sampled_and_within_tolerance():
    # Seen on alanine dipeptide (cpu-long, seed 1, iteration 4): R^2 1.0000, the free energy's walkers' SEM 0.87,
    # but the walkers' Delta F(C7ax vs rest) 7.71, 5.33, 11.04, 9.28: SEM 1.21 > the 1 kJ/mol tolerance.
    loop = LoopConfig(walkers=4)
    basin = {"definition": "C7ax (0 < phi < 2.3 rad) vs the rest", "status": "ok", "value": 7.53, "reason": ""}
    ok = dict(SETTLED, free_energy_sem=0.87, delta_f_phi_sem=0.9, basin_delta_f=basin)
    assert is_converged(ok, loop)
    spread = dict(ok, delta_f_phi_sem=1.21)
    blockers = convergence_blockers(spread, loop)
    assert not is_converged(spread, loop)
    assert any("Delta F(C7ax (0 < phi < 2.3 rad) vs the rest) 1.21 kJ/mol > loop.free_energy_tolerance" in b
               for b in blockers), blockers
    # one walker has no spread to judge; a run without named basins (no such metric) is judged as before
    assert is_converged(spread, LoopConfig(walkers=1))
    assert is_converged({k: v for k, v in spread.items() if k != "delta_f_phi_sem"}, loop)
    # a basin pair the runs never crossed between is not a converged free energy, whatever R^2 says
    unsampled = dict(ok, basin_delta_f=dict(basin, status="not sampled", value=None, reason="0 transitions < 4"))
    blockers = convergence_blockers(unsampled, loop)
    assert not is_converged(unsampled, loop)
    assert any("not sampled (0 transitions < 4)" in b for b in blockers), blockers
    # no tolerance: the spread is not judged, the sampling still is
    assert is_converged(spread, LoopConfig(walkers=4, free_energy_tolerance=None))
    assert not is_converged(unsampled, LoopConfig(walkers=4, free_energy_tolerance=None))


def test_the_basins_delta_f_error_bar_holds_the_loop_back():
    # one walker can be judged on its own: its Delta F error bar (block bootstrap or basin visits) joins the criterion
    basin = {"definition": "C7ax (0 < phi < 2.3 rad) vs the rest", "status": "ok", "value": 8.1, "reason": "",
             "error": 1.6, "error_from": "visits"}
    loop = LoopConfig()
    wide = dict(SETTLED, basin_delta_f=basin)
    blockers = convergence_blockers(wide, loop)
    assert not is_converged(wide, loop)
    assert any("error of Delta F(C7ax (0 < phi < 2.3 rad) vs the rest) 1.60 kJ/mol (visits)" in b for b in blockers)
    assert is_converged(dict(SETTLED, basin_delta_f=dict(basin, error=0.6)), loop)
    # the basins' error bar replaces the older phi-split walkers' SEM when both are there (one number, not two)
    both = dict(SETTLED, free_energy_sem=0.5, delta_f_phi_sem=1.8,
                basin_delta_f=dict(basin, error=0.7, error_from="walkers' SEM"))
    assert is_converged(both, LoopConfig(walkers=4))
    # an unsampled pair is held back for that, not for an error bar of a value that does not count
    unsampled = dict(SETTLED, basin_delta_f=dict(basin, status="not sampled", reason="2 transitions < 4"))
    blockers = convergence_blockers(unsampled, loop)
    assert len(blockers) == 1 and "not sampled (2 transitions < 4)" in blockers[0]
    assert is_converged(wide, LoopConfig(free_energy_tolerance=None))


def test_walkers_scatter_is_the_least_error_bar_of_the_basins_delta_f():
    from aesample.loopstages import _basin_error

    pooled = {"delta_f_error": 0.67, "delta_f_error_from": "bootstrap"}
    assert _basin_error(pooled, 2.84) == (2.84, "walkers' SEM")  # seed 2, iteration 5 of the cpu-long loop
    assert _basin_error(pooled, 0.3) == (0.67, "bootstrap")
    assert _basin_error(pooled, None) == (0.67, "bootstrap")
    assert _basin_error({"delta_f_error": float("inf"), "delta_f_error_from": "visits"}, None) == (None, None)
    assert _basin_error(None, 1.2) == (1.2, "walkers' SEM")


def test_gap_between_pooled_and_walkers_mean_joins_the_basins_error_bar():
    """Seed 3 of the cpu-long loop, iteration 4: six walkers agree (SD 1.15, SEM 0.47) but the pooled Delta F, 6.18,
    lies below all but one of them; an error bar of 0.55 would have put it 4.8 error bars from the reference."""
    from aesample.loopstages import _basin_error, _walkers_gap

    walkers = [8.04, 9.50, 6.85, 7.99, 6.20, 7.19, None]  # a walker without a value does not count
    gap = _walkers_gap(6.18, walkers)
    assert gap == pytest.approx(7.628333 - 6.18, abs=1e-4)
    pooled = {"delta_f_error": 0.55, "delta_f_error_from": "visits"}
    assert _basin_error(pooled, 0.47, gap) == (pytest.approx(1.448333, abs=1e-4), "pooled vs walkers' mean")
    assert _basin_error(pooled, 0.47, 0.2) == (0.55, "visits")  # agreeing walkers change nothing
    assert _walkers_gap(6.18, [8.0]) is None and _walkers_gap(None, walkers) is None


def test_a_drift_shared_by_the_walkers_joins_the_basins_error_bar():
    """Seed 1 of the cpu-long loop, iteration 2 (LOOP_RESULTS.md): six walkers agree (SEM 0.67), but the first
    half of their samples gives Delta F 5.05 and the second 7.68; half the difference is the error bar."""
    from aesample.loopstages import _basin_error

    pooled = {"delta_f_error": 0.41, "delta_f_error_from": "bootstrap"}
    drifting = {"first": 5.05, "second": 7.68}
    assert _basin_error(pooled, 0.67, 0.1, drifting) == (pytest.approx(1.315), "first vs second half of the samples")
    assert _basin_error(pooled, 0.67, 0.1, {"first": 8.55, "second": 8.64}) == (0.67, "walkers' SEM")
    assert _basin_error(pooled, None, None, {"first": float("nan"), "second": 8.0}) == (0.41, "bootstrap")
    assert _basin_error(None, None, None, drifting)[0] == pytest.approx(1.315)
