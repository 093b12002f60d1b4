"""The slow split (aesample.slowsplit): two sets of CV bins the walkers rarely went between, counted exactly."""
import numpy as np
import pytest

from aesample.slowsplit import slow_split

GRID = ([-1.5, -1.5], [0.1, 0.1], [30, 30])


def _walk(n, hops, rng, step=0.06):
    """A 2D random walk reflected inside box A (x in [-1, -0.1]) or box B (x in [0.1, 1]), y in [-0.5, 0.5], that
    jumps to the other box exactly at the frames ``hops`` (and nowhere else)."""
    xi = np.empty((n, 2))
    p = np.array([-0.55, 0.0])
    side = -1
    for t in range(n):
        if t in hops:
            side = -side
            p = np.array([0.55 * side, p[1]])
        p = p + rng.normal(scale=step, size=2)
        lo, hi = (-1.0, -0.1) if side < 0 else (0.1, 1.0)
        for k, (a, b) in enumerate(((lo, hi), (-0.5, 0.5))):
            if p[k] < a:
                p[k] = 2 * a - p[k]
            if p[k] > b:
                p[k] = 2 * b - p[k]
        xi[t] = p
    return xi


@pytest.mark.parametrize("n_hops, flagged", [(1, True), (3, True), (30, False)])
def test_crossings_between_two_sets_are_counted_and_few_are_flagged(n_hops, flagged):
    rng = np.random.default_rng(n_hops)
    hops = set(np.linspace(500, 7500, n_hops).astype(int).tolist())
    xi = _walk(8000, hops, rng)
    r = slow_split(xi, None, *GRID)
    assert r.crossings == [n_hops]  # each jump between the boxes once, nothing else
    assert r.flagged is flagged
    side_a = np.mean(xi[:, 0] < 0)
    assert sorted(r.shares) == pytest.approx(sorted([side_a, 1 - side_a]), abs=1e-12)
    # the sets are the boxes: every bin of one box in one set
    a_sets = {v for b, v in r.set_of_bin.items() if np.unravel_index(b, (30, 30))[0] < 15}
    b_sets = {v for b, v in r.set_of_bin.items() if np.unravel_index(b, (30, 30))[0] >= 15}
    assert len(a_sets) == len(b_sets) == 1 and a_sets != b_sets


def test_one_freely_diffusing_region_is_not_flagged():
    """A single box: the slowest process splits it in two halves that the walk crosses often."""
    xi = _walk(8000, set(), np.random.default_rng(5))
    r = slow_split(xi, None, *GRID)
    assert min(r.shares) > 0.2 and r.crossings_per_run > 10 and not r.flagged


def test_crossings_are_counted_per_run_and_a_small_set_is_not_flagged():
    rng = np.random.default_rng(7)
    runs = [_walk(4000, {1000, 3000}, rng), _walk(4000, {2000}, rng)]
    r = slow_split(np.concatenate(runs), np.repeat([3, 8], 4000), *GRID)
    assert r.crossings == [2, 1]  # the second run starting in box A after the first ended there is no crossing
    assert r.crossings_per_run == 1.5 and r.flagged
    small = _walk(8000, {7900}, rng)  # box B holds 100 frames: below min_share 0.05
    r = slow_split(small, None, *GRID)
    assert r.crossings == [1] and min(r.shares) < 0.05 and not r.flagged


def test_the_loop_criterion_names_the_slow_split():
    from aesample.config import LoopConfig
    from aesample.verdict import convergence_blockers

    xi = _walk(8000, {4000}, np.random.default_rng(2))
    metrics = {"iteration": 3, "regression_score": 0.999, "slow_split": slow_split(xi, None, *GRID).as_dict()}
    loop = LoopConfig(free_energy_tolerance=None, hidden_barrier_tolerance=None, min_ess=None,
                      max_support_growth=None, min_iterations=1)
    blockers = convergence_blockers(metrics, loop)
    assert len(blockers) == 1 and "loop.min_split_crossings" in blockers[0] and "1.0 times" in blockers[0]
    assert convergence_blockers(metrics, loop.model_copy(update={"min_split_crossings": None})) == []
    crossed = {**metrics, "slow_split": slow_split(_walk(8000, set(range(200, 8000, 400)),
                                                         np.random.default_rng(3)), None, *GRID).as_dict()}
    assert convergence_blockers(crossed, loop) == []
