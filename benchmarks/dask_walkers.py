"""Walkers on Dask (issue 17): the engine's overhead per iteration, and shared vs independent walkers.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/dask_walkers.py engine REPEATS
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/dask_walkers.py shared N_STEPS H_KT SEEDS...
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/dask_walkers.py adp CV NS SHARE_STEPS SEED OUT [REFERENCE] \
        [--together]
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/dask_walkers.py adp-summary OUT [REFERENCE]

``engine``: iteration 1 of the tiny alanine-dipeptide loop of tests/test_walkers_dask.py (2 walkers of 1000 steps,
Reference platform) from the same iteration-0 directory, REPEATS times alternately (a) through the loop's Dask
path (an embedded LocalCluster of 2 workers, started and closed per iteration as the loop does) and (b) through a
spawn ProcessPoolExecutor of 2 processes (the engine before issue 17); also a LocalCluster started, one no-op
task per worker, closed. One JSON line per measurement, wall seconds.

``shared``: 4 walkers on the 1D double well of the tests (barrier H_KT kT, 36 bins, full bias at 200 samples,
5 fs, Reference, exchange every 500 steps), shared vs independent, N_STEPS each, one LocalCluster of 4 workers;
per seed offset: every walker's first step past x = +0.25 and the pooled CZAR free energy's largest deviation
from the exact one (kT).

``adp``: alanine dipeptide (vacuum, the loop's MD settings: 2 fs, 1/ps, 10 ps equilibration, frames every 100
steps), 4 walkers of NS ns each, all started from the built structure (C7eq) with seeds SEED + j, once sharing
their bias (:class:`aesample.sharedbias.SharedBias`, exchange every SHARE_STEPS steps, the segment length) and once
independent (same seeds, same segments), on one LocalCluster of 4 single-thread workers (all walkers of a mode
at once, as shared walkers must run); ``--together``: all 8 at once on 8 workers. CV: a learned CV file
(``cv.pt``; the loop's eABF settings, ``EABFSettings.from_config`` of the default configuration: 30 bins on
[-1.5, 1.5], kappa 3000, full bias at 100 samples, period 0.2 ps, CZAR 120 bins) or ``phi,psi`` (the defaults of
``aesample eabf --cv phi,psi``: 36 x 36 bins, kappa kT / bin width^2, full bias at 100 samples). Walkers go to
OUT/{shared,independent}/w<j>. Per walker: the simulated time to its first C7ax frame (0 < phi < 2.3 rad),
Delta F(C7ax vs rest) from its own CZAR weights, committed transitions; pooled: Delta F from the walkers'
accumulators summed, with its error against REFERENCE (a free-energy grid along phi or (phi, psi), default
benchmarks/data/reference_phi_metad_20ns.npz). One JSON line per mode. A rerun with the same OUT resumes the walkers from their checkpoints (shared ones then read what the
others wrote). ``adp-summary``: the same numbers for the walkers in OUT as far as they have run (partial runs).
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
from aesample.config import Config, ExecutionConfig, effective_config, load_config  # noqa: E402
from aesample.runlayout import RunLayout  # noqa: E402
from aesample.threads import apply_torch_threads, plan_threads, single_thread_pools_for_children  # noqa: E402


def _pool_walker(run_dir: str, j: int, kappa: float, threads: int) -> None:
    apply_torch_threads()
    loopstages.run_eabf_walker(RunLayout.open(Path(run_dir)), 1, j, kappa, progress=False, threads=threads)


def _noop() -> int:
    return 0


ADP_WALKERS = 4


def _adp_cv(cv_spec: str, ms):
    """(CV module, EABFSettings) of the ``adp`` mode: a learned CV file with the loop's settings, or a standard
    CV spec with the defaults of ``aesample eabf``."""
    import math

    from aesample import cvs
    from aesample.config import Config, standard_cv_defaults
    from aesample.eabf import coupled_czar_bins
    from aesample.export import load_cv
    from aesample.md import EABFSettings

    if cv_spec.endswith(".pt"):
        cv, meta = load_cv(Path(cv_spec))
        return cv, EABFSettings.from_config(effective_config(Config()), int(meta.get("cv_dim", 1)))
    cv = cvs.parse_cv_spec(cv_spec, ms.mdtraj_topology)
    periodic = [bool(p) for p in cv.periodic]
    if not all(periodic):
        raise ValueError(f"adp: {cv_spec!r}: only angle CVs (or a cv.pt) have default grids here")
    d, T = len(periodic), float(ms.temperature)
    gmin, gmax = [-math.pi] * d, [math.pi] * d
    defaults = standard_cv_defaults(periodic, gmin, gmax, T)
    return cv, EABFSettings(grid_min=gmin, grid_max=gmax, bins=defaults["bins"], kappa=defaults["kappa"],
                            periodic=periodic, full_samples=defaults["full_samples"],
                            czar_bins=coupled_czar_bins(defaults["bins"], gmin, gmax, defaults["kappa"], T))


def _adp_walker(out: str, j: int, n: int, cv_spec: str, n_steps: int, seed: int, segment: int,
                shared: bool) -> float:
    """Alanine-dipeptide eABF walker ``j`` of ``n`` (one OpenMM thread); ``shared``: shares ``out/shared``.
    Resumes from its checkpoint. Returns its ns/day."""
    from aesample.md import MDSettings, run_eabf
    from aesample.sharedbias import SharedBias
    from aesample.systems import build_system

    apply_torch_threads()
    ms = build_system("alanine-dipeptide")
    cv, es = _adp_cv(cv_spec, ms)
    md = MDSettings.from_config(effective_config(Config()), seed)
    md.seed, md.segment_steps, md.cpu_threads, md.progress = seed, segment, 1, False
    bias = SharedBias(Path(out) / "shared", j, n) if shared else None
    return run_eabf(ms, cv, es, md, Path(out) / f"w{j}", n_steps, resume=True, log=None,
                    shared_bias=bias).ns_per_day


def _c7ax_delta_f(phi: np.ndarray, w: np.ndarray, kt: float) -> float:
    """Delta F(C7ax vs rest), kJ/mol, from weighted frames (nan where a side has no weight)."""
    from aesample.analysis import c7ax_labels
    from aesample.md import _delta_f

    return _delta_f(np.asarray(w, dtype=np.float64), c7ax_labels(phi), kt)


def _reference_delta_f(path: Path, kt: float) -> float:
    """Delta F(C7ax vs rest) of a reference free energy on a grid: ``fes`` (kJ/mol) over ``grid`` along phi, or
    indexed [psi, phi] on ``grid`` x ``grid`` (benchmarks/reference_fes.py writes either)."""
    ref = np.load(path)
    fes, grid = ref["fes"], ref["grid"]
    phi = grid if fes.ndim == 1 else np.meshgrid(grid, grid, indexing="ij")[1]
    return _c7ax_delta_f(np.ravel(phi), np.exp(-(fes - fes.min()) / kt).ravel(), kt)


def adp_summary(out: Path, n: int, reference_delta_f: float) -> dict:
    """Per walker and pooled numbers of the ``adp`` walkers in ``out/w0 .. w<n-1>`` (see the module docstring)."""
    from aesample import analysis
    from aesample.estimators import kT
    from aesample.md import PooledRuns, load_result
    from aesample.systems import build_system

    top = build_system("alanine-dipeptide").mdtraj_topology
    results = [load_result(out / f"w{j}") for j in range(n)]
    kt = kT(results[0].temperature)
    phis, first, own, transitions = [], [], [], []
    for res in results:
        phi = analysis.phi_psi(res.load_trajectory(top))[:, 0]
        phis.append(phi)
        frame_ps = float(res.run["report_interval"]) * float(res.run["timestep"])
        hit = np.flatnonzero(analysis.c7ax_labels(phi) == 1)
        first.append(float((hit[0] + 1) * frame_ps) if hit.size else float("inf"))
        own.append(_c7ax_delta_f(phi, res.reweighting_weights("czar"), kt))
        transitions.append(analysis.basin_transitions(phi))
    pooled = _c7ax_delta_f(np.concatenate(phis), PooledRuns(results).reweighting_weights("czar"), kt)
    ok = np.isfinite(own)
    return {"first_c7ax_ps": first, "delta_f_walkers": own, "transitions": transitions,
            "delta_f_pooled": pooled, "pooled_error": pooled - reference_delta_f,
            "walkers_mean_error": float(np.mean(np.asarray(own)[ok]) - reference_delta_f) if ok.any() else None,
            "walkers_sd": float(np.std(np.asarray(own)[ok], ddof=1)) if ok.sum() > 1 else None,
            "walkers_rms_error": float(np.sqrt(np.mean((np.asarray(own)[ok] - reference_delta_f) ** 2)))
            if ok.any() else None, "reference_delta_f": reference_delta_f}


def adp(cv_spec: str, ns: float, share_steps: int, seed: int, out: Path, reference: Path,
        together: bool = False) -> None:
    """The ``adp`` mode: shared then independent walkers on one LocalCluster of 4 workers, or (``together``) all 8
    at once on 8 workers (equal load on both; stopped early, both have run about as long)."""
    from aesample.estimators import kT

    n, ref = ADP_WALKERS, _reference_delta_f(reference, kT(300.0))
    n_steps = int(round(ns * 1000 / 0.002))
    modes = [[True, False]] if together else [[True], [False]]
    with execution.walker_client(ExecutionConfig(), 2 * n if together else n) as client:
        for shares in modes:
            wheres = [out / ("shared" if share else "independent") for share in shares]
            t0 = time.perf_counter()
            speeds = execution.run_tasks(
                client, _adp_walker,
                [(str(where), j, n, cv_spec, n_steps, seed + j, share_steps, share)
                 for share, where in zip(shares, wheres) for j in range(n)],
                [f"{where.name} walker {j}" for where in wheres for j in range(n)])
            wall = time.perf_counter() - t0
            for i, (share, where) in enumerate(zip(shares, wheres)):
                row = {"cv": cv_spec, "shared": share, "ns_per_walker": ns, "share_steps": share_steps, "seed": seed,
                       "together": together, "wall_s": wall, "ns_per_day": speeds[i * n:(i + 1) * n]}
                row.update(adp_summary(where, n, ref))
                print(json.dumps(row), flush=True)


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
    elif sys.argv[1] in ("adp", "adp-summary"):
        args = [a for a in sys.argv[2:] if a != "--together"]
        default_reference = Path(__file__).parent / "data" / "reference_phi_metad_20ns.npz"
        if sys.argv[1] == "adp":
            adp(args[0], float(args[1]), int(args[2]), int(args[3]), Path(args[4]),
                Path(args[5]) if len(args) > 5 else default_reference, together="--together" in sys.argv)
        else:
            from aesample.estimators import kT

            ref_df = _reference_delta_f(Path(args[1]) if len(args) > 1 else default_reference, kT(300.0))
            for mode in ("shared", "independent"):
                print(json.dumps({"mode": mode, **adp_summary(Path(args[0]) / mode, ADP_WALKERS, ref_df)}))
    else:
        shared(int(sys.argv[2]), float(sys.argv[3]), [int(s) for s in sys.argv[4:]])
