"""Walkers on Dask (issue 17): the engine's overhead per iteration, and shared vs independent walkers.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/dask_walkers.py engine REPEATS
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/dask_walkers.py shared N_STEPS H_KT SEEDS...

``engine``: iteration 1 of the tiny alanine-dipeptide loop of tests/test_walkers_dask.py (2 walkers of 1000 steps,
Reference platform) from the same iteration-0 directory, REPEATS times alternately (a) through the loop's Dask
path (an embedded LocalCluster of 2 workers, started and closed per iteration as the loop does) and (b) through a
spawn ProcessPoolExecutor of 2 processes (the engine before issue 17); also a LocalCluster started, one no-op
task per worker, closed. One JSON line per measurement, wall seconds.

``shared``: 4 walkers on the 1D double well of the tests (barrier H_KT kT, 36 bins, full bias at 200 samples,
5 fs, Reference, exchange every 500 steps), shared vs independent, N_STEPS each, one LocalCluster of 4 workers;
per seed offset: every walker's first step past x = +0.25 and the pooled CZAR free energy's largest deviation
from the exact one (kT).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aesample import execution, loopstages  # noqa: E402
from aesample.config import ExecutionConfig, effective_config, load_config  # noqa: E402
from aesample.runlayout import RunLayout  # noqa: E402
from aesample.threads import apply_torch_threads, plan_threads, single_thread_pools_for_children  # noqa: E402


def _pool_walker(run_dir: str, j: int, kappa: float, threads: int) -> None:
    apply_torch_threads()
    loopstages.run_eabf_walker(RunLayout.open(Path(run_dir)), 1, j, kappa, progress=False, threads=threads)


def _noop() -> int:
    return 0


def engine(repeats: int) -> None:
    import multiprocessing

    from tests.test_walkers_dask import LOOP, _kappa

    from aesample.driver import LoopDriver

    tmp = Path(tempfile.mkdtemp(prefix="dask_walkers_"))
    (tmp / "loop.yaml").write_text(LOOP)
    base = LoopDriver.create(effective_config(load_config(tmp / "loop.yaml")), tmp / "base")
    loopstages.run_md_stage(base, 0, progress=False)
    loopstages.write_iteration_trajectory(base, 0)
    loopstages.run_train_stage(base, 0)
    kappa = _kappa(base)
    threads = plan_threads(None, 2).openmm
    for r in range(repeats):
        for how in ("dask", "pool"):
            dst = tmp / f"{how}_{r}"
            shutil.copytree(tmp / "base", dst)
            run = RunLayout.open(dst)
            t0 = time.perf_counter()
            if how == "dask":
                loopstages._run_walkers_on_cluster(run, 1, kappa, 2, False)
            else:
                with single_thread_pools_for_children(), \
                        ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
                    list(pool.map(_pool_walker, [str(dst)] * 2, range(2), [kappa] * 2, [threads] * 2))
            print(json.dumps({"engine": how, "repeat": r, "iteration_md_seconds": time.perf_counter() - t0}),
                  flush=True)
        t0 = time.perf_counter()
        with execution.walker_client(ExecutionConfig(), 2) as client:
            t1 = time.perf_counter()
            execution.run_tasks(client, _noop, [()] * 2, ["noop 0", "noop 1"])
            t2 = time.perf_counter()
        print(json.dumps({"engine": "dask cluster only", "repeat": r, "start": t1 - t0, "two_noop_tasks": t2 - t1,
                          "start_to_closed": time.perf_counter() - t0}), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


def shared(n_steps: int, h_kt: float, seeds: list[int]) -> None:
    from tests.test_walkers_dask import KT, _first_crossings, _particle_walker

    from aesample.md import PooledRuns, load_result

    h, n = h_kt * KT, 4
    tmp = Path(tempfile.mkdtemp(prefix="shared_walkers_"))
    with execution.walker_client(ExecutionConfig(), n) as client:
        for seed in seeds:
            for share in (True, False):
                out = tmp / f"{'shared' if share else 'independent'}_{seed}"
                t0 = time.perf_counter()
                execution.run_tasks(client, _particle_walker,
                                    [(str(out), j, n, h, n_steps, seed + j, share) for j in range(n)],
                                    [f"walker {j}" for j in range(n)])
                wall = time.perf_counter() - t0
                pooled = PooledRuns([load_result(out / f"w{j}") for j in range(n)])
                st = pooled.state
                a = pooled.free_energy("czar")
                c = st.z_centers()[0]
                exact = h * ((c / 0.5) ** 2 - 1) ** 2
                ok = np.isfinite(a) & (st.zcount >= 0.005 * st.zcount.sum())
                dev = a[ok] - exact[ok]
                dev -= dev.mean()
                print(json.dumps({"shared": share, "seed": seed, "steps_per_walker": n_steps, "wall_s": wall,
                                  "first_crossing_steps": _first_crossings(out, n), "bins": int(ok.sum()),
                                  "max_dev_kT": float(np.abs(dev).max() / KT)}), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1] == "engine":
        engine(int(sys.argv[2]))
    else:
        shared(int(sys.argv[2]), float(sys.argv[3]), [int(s) for s in sys.argv[4:]])
