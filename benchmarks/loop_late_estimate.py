"""Does the start of each walker bias the loop's Delta F? The CZAR estimate from each half of the samples.

    python benchmarks/loop_late_estimate.py RUN_DIR 1 2 3 4

Re-reads each iteration's saved walkers (no MD). Every walker saves its accumulators at the first checkpoint past
half of its run (``half_state``), so the pooled accumulators split into the first half's samples (the half-time
state) and the second half's (final minus half-time). Printed per iteration, for the named basins' Delta F
(C7ax = 0 < phi < 2.3 rad vs the rest, kJ/mol) of all the iteration's frames weighted with w = exp(-beta A(xi)) / n(xi): A and n from
all samples (what the loop reports), from the first halves only and from the second halves only; then each
walker's own second-half Delta F. If the early samples, taken while the bias was still building, carry an error
that the later ones do not, the second-half value differs from the first-half one while the two halves of the
frames agree (the last column pair: the final A on the first / second half of the frames). For dipeptide runs.
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
    from aesample.estimators import czar_reweighting_weights

    kT = ls._kT(run)
    for k in iterations:
        results = [md.load_result(d) for d in ls._md_dirs(run, k)]
        pooled = md.PooledRuns(results)
        phi = run.system.observables(ls._frames(run, k)[0])["phi"]
        labels = analysis.c7ax_labels(phi)
        xi, walker = pooled.colvar_xi(), pooled.run_index()
        late_frames = np.concatenate([np.arange(n) >= n // 2 for n in np.bincount(walker)])

        def delta_f(state: EABFState, frames: np.ndarray) -> float:
            w = czar_reweighting_weights(xi[frames], state.czar_free_energy(pooled.temperature), state.zcount,
                                         state.grid_min, state.z_bin_width, pooled.temperature, state.periodic)
            lab = labels[frames]
            return float(-kT * np.log(w[lab == 1].sum() / w[lab == 0].sum()))

        every = np.ones(len(xi), dtype=bool)
        final, half = pooled.state, pooled.half_state
        if half is None:
            raise SystemExit(f"{run.run_dir}: iteration {k} has a walker without a half-time state (one segment only)")
        second = EABFState.weighted_sum([(1.0, final), (-1.0, half)])
        own_late = []
        for j, r in enumerate(results):
            try:
                own_late.append(round(delta_f(EABFState.weighted_sum([(1.0, r.state), (-1.0, r.half_state)]),
                                              walker == j), 2))
            except ValueError:  # a walker without a weighted frame
                own_late.append(None)
        row = {"iteration": k, "all_samples": round(delta_f(final, every), 2),
               "first_half_samples": round(delta_f(half, every), 2),
               "second_half_samples": round(delta_f(second, every), 2),
               "walkers_second_half": own_late,
               "final_A_first_half_frames": round(delta_f(final, ~late_frames), 2),
               "final_A_second_half_frames": round(delta_f(final, late_frames), 2),
               "transitions": analysis.basin_transitions(phi, n_runs=len(results))}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
