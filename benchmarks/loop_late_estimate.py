"""Does an iteration's Delta F drift over the walkers' runs? The CZAR estimate from each part of the samples.

    python benchmarks/loop_late_estimate.py RUN_DIR 1 2 3 4

Re-reads each iteration's saved walkers (no MD). For the named basins' Delta F (C7ax = 0 < phi < 2.3 rad vs the
rest, kJ/mol), per iteration: the loop's value (all samples, all frames); from the first and from the second half of
the samples (:meth:`aesample.md.FreeEnergyEstimates.delta_f_halves`: the half-time accumulators with the frames
recorded up to then, the later accumulators with the later frames), as the loop records them since the tenth
session; from each quarter of the samples (the walkers' time-block snapshots, ``blocks/``, summed over the
walkers, with each quarter's frames); each walker's own halves; and the basins' error bar as the loop gives it now
(the larger of the run's own error, the walkers' SEM, the pooled-vs-mean gap and half the halves' difference)
against the one recorded when the iteration ran. A trend that every walker shares moves the quarters one way while
the walkers agree with each other. For dipeptide runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_reader import run_and_iterations  # noqa: E402  (this directory)


def main() -> int:
    run, iterations = run_and_iterations(__doc__)
    from aesample import analysis, md
    from aesample import loopstages as ls
    from aesample.eabf import EABFState

    kT = ls._kT(run)
    for k in iterations:
        results = [md.load_result(d) for d in ls._md_dirs(run, k)]
        pooled = md.PooledRuns(results)
        phi = run.system.observables(ls._frames(run, k)[0])["phi"]
        labels = analysis.c7ax_labels(phi)
        xi, walker = pooled.colvar_xi(), pooled.run_index()
        if pooled.half_state is None:
            raise SystemExit(f"{run.run_dir}: iteration {k} has a walker without a half-time state (one segment only)")
        halves = pooled.delta_f_halves(labels)
        # quarters: cumulative block snapshots summed over the walkers, frames by their place in their walker's run
        snaps = [[EABFState.load(f) for _, f in r.block_snapshots()] for r in results]
        n_blocks = min(len(s) for s in snaps)
        place = np.concatenate([np.arange(n) / n for n in np.bincount(walker)])

        def cumulative(b: int) -> EABFState:
            return EABFState.weighted_sum([(1.0, s[b - 1]) for s in snaps])

        def delta_f(state: EABFState, rows: np.ndarray) -> float:
            try:
                w = pooled.reweighting_weights("czar", state, xis=xi[rows])
            except ValueError:  # no frame of these in a bin the state estimates
                return float("nan")
            return round(md._delta_f(w, labels[rows], kT), 2)

        quarters = []
        for j in range(4):
            lo, hi = j * n_blocks // 4, (j + 1) * n_blocks // 4
            state = cumulative(hi) if lo == 0 else EABFState.weighted_sum([(1.0, cumulative(hi)),
                                                                          (-1.0, cumulative(lo))])
            quarters.append(delta_f(state, (place >= lo / n_blocks - 1e-9) & (place < hi / n_blocks - 1e-9)))
        metrics = run.metrics(k) or {}
        basin = metrics.get("basin_delta_f") or {}
        own = {"delta_f_error": basin.get("error"), "delta_f_error_from": basin.get("error_from")}
        now = ls._basin_error(own, metrics.get("basin_delta_f_sem"), metrics.get("basin_delta_f_walkers_gap"), halves)
        row = {"iteration": k, "all_samples": round(md._delta_f(pooled.reweighting_weights("czar"), labels, kT), 2),
               "first_half": round(halves["first"], 2), "second_half": round(halves["second"], 2),
               "quarters": quarters,
               "walkers_halves": [[round(v, 2) for v in r.delta_f_halves(labels[walker == j]).values()]
                                  for j, r in enumerate(results)],
               "error_recorded": [basin.get("error"), basin.get("error_from")],
               "error_now": [None if now[0] is None else round(now[0], 2), now[1]],
               "transitions": analysis.basin_transitions(phi, n_runs=len(results))}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
