"""The named basins' Delta F of finished loop iterations, with the error bar the loop reports today.

    python benchmarks/loop_error_bars.py RUN_DIR 3 4 5 6

Re-reads each iteration's saved walkers (no MD; metrics.json is not touched) and prints, per iteration, Delta F
(C7ax vs the rest) of the pooled walkers, its error bar and source (the pooled run's block bootstrap / basin visits,
or the walkers' SEM where larger: ``aesample.loopstages._basin_error``), the pooled run's own error, and each
walker's own Delta F. For dipeptide runs (the system must report phi).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_reader import run_and_iterations  # noqa: E402  (this directory)


def main() -> int:
    run, iterations = run_and_iterations(__doc__)
    from aesample import analysis, md
    from aesample import loopstages as ls

    estimator, kT = run.config.eabf.estimator, ls._kT(run)
    for k in iterations:
        traj, weights, lambdas = ls._frames(run, k)
        results = [md.load_result(d) for d in ls._md_dirs(run, k)]
        phi = run.system.observables(traj)["phi"]
        own = md.PooledRuns(results).free_energy_error(estimator, n_boot=40, seed=k, lambdas=lambdas,
                                                       delta_f_labels=analysis.c7ax_labels(phi))
        spread = ls._walker_spread(results, phi, estimator, kT) if len(results) > 1 else {}
        error, source = ls._basin_error(own, spread.get("basin_delta_f_sem"))
        report = analysis.basin_report(phi, weights, kT, n_runs=len(results), error=error, error_from=source)
        print(json.dumps({
            "iteration": k, "delta_f": report["value"], "error": error, "error_from": source,
            "status": report["status"], "pooled_error": own["delta_f_error"],
            "pooled_error_from": own["delta_f_error_from"],
            "walkers": [None if v is None else round(v, 2) for v in spread.get("basin_delta_f_walkers", [])],
        }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
