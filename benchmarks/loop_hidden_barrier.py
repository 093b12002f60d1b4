"""The hidden-barrier diagnostic of finished loop iterations as the loop computes it today, against phi's truth.

    python benchmarks/loop_hidden_barrier.py RUN_DIR 1 2 3

Re-reads each iteration's saved walkers (no MD; metrics.json is not touched) and prints, per iteration, the
detector's flagged share weighted two ways as ``aesample.loopstages._hidden_barrier_metrics`` weighs it (by the
reweighting weights and by frames), the truth from phi (share in the walkers' ABF grid bins holding >= 10 % of
each side of the phi barrier, C7ax 0 < phi < 2.3 rad vs the rest, weighted the same two ways), whether the loop's
criterion would be held back by it (``loop.hidden_barrier_tolerance``), the walkers' own Delta F(C7ax vs rest)
and their standard deviation. For dipeptide runs (the system must report phi).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from hidden_barrier_adp import truth_mixed_fraction  # noqa: E402  (this directory)
from loop_reader import run_and_iterations  # noqa: E402  (this directory)


def main() -> int:
    run, iterations = run_and_iterations(__doc__)
    from aesample import md
    from aesample import loopstages as ls
    from aesample.hiddenbarrier import bin_indices

    tol = run.config.loop.hidden_barrier_tolerance
    for k in iterations:
        traj, weights, _ = ls._frames(run, k)
        results = [md.load_result(d) for d in ls._md_dirs(run, k)]
        pooled = md.PooledRuns(results)
        walker = pooled.run_index()
        hb = ls._hidden_barrier_metrics(run, traj, pooled, weights, walker)
        phi = run.system.observables(traj)["phi"]
        st = pooled.state
        flat = bin_indices(pooled.colvar_xi(), st.grid_min, st.bin_width, st.bins, st.periodic)
        spread = ls._walker_spread(results, phi, run.config.eabf.estimator, ls._kT(run)) if len(results) > 1 else {}
        walkers = [v for v in spread.get("basin_delta_f_walkers", []) if v is not None]
        held = tol is not None and max(hb["hidden_barrier_fraction"], hb["hidden_barrier_sample_fraction"]) > tol
        print(json.dumps({
            "iteration": k,
            "weight": round(hb["hidden_barrier_fraction"], 4),
            "weight_truth": round(truth_mixed_fraction(phi, flat, weights), 4),
            "frames": round(hb["hidden_barrier_sample_fraction"], 4),
            "frames_truth": round(truth_mixed_fraction(phi, flat, np.ones(len(phi))), 4),
            "held_back": held,
            "walkers_delta_f": [round(v, 2) for v in walkers],
            "walkers_sd": round(float(np.std(walkers, ddof=1)), 2) if len(walkers) > 1 else None,
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
