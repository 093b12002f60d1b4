"""Is the loop's free energy along its CV right inside one basin? Unbiased frames decide (no reference needed).

    OMP_NUM_THREADS=1 python benchmarks/within_basin_check.py unbiased OUT_DIR [--ns 10] [--seed 7]
    OMP_NUM_THREADS=1 python benchmarks/within_basin_check.py check RUN_DIR K [K ...] --unbiased OUT_DIR
    OMP_NUM_THREADS=1 python benchmarks/within_basin_check.py eabf EABF_DIR [...] --cv CV.pt --unbiased OUT_DIR

``unbiased``: plain MD of alanine dipeptide in vacuum from C7eq (the loop's MD settings, Reference platform), long
enough to sample C7eq and C5 at equilibrium (they exchange in tens of ps; C7ax is not reached). ``check``: for
loop iteration K (eABF along xi_{K-1}), Delta F(C7eq - C5) (C7eq: -2 < phi < 0; C5: phi <= -2 or phi >= 2.3;
kJ/mol) four ways:

* ``true``: the unbiased frames' own populations;
* ``loop``: the iteration's frames with the loop's weights exp(-beta A(xi)) / n(xi);
* ``loop_A_unbiased_makeup``: the loop's CZAR A(xi) with the unbiased frames' make-up per CZAR bin (each unbiased
  frame weighted exp(-beta A(xi)) / its bin's unbiased count): equal to ``loop`` when the error is in A(xi);
* ``unbiased_A_loop_makeup``: the unbiased histogram of xi as exp(-beta A) with the iteration's frames' make-up per
  bin (over the bins the unbiased run reached): equal to ``true`` when the frames' make-up at fixed xi is right.

So a loop value off ``true`` is placed either in the free energy along xi or in what the frames hold at fixed xi.
Then where along xi: the loop's A(xi) minus -kT ln(unbiased count) over the CZAR bins with >= 30 unbiased frames
(count-weighted, mean removed): its RMS, the plane that fits it best (``A_minus_unbiased_tilt``, kJ/mol per CV
unit per component) and what the plane leaves (the unbiased histogram's own noise is part of it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_unbiased(out: Path, ns: float, seed: int) -> None:
    from aesample.config import apply_overrides, config_from_dict
    from aesample.md import MDSettings, run_md
    from aesample.systems import build_system

    cfg = apply_overrides(config_from_dict({}), ["md.segment_steps=500000", "md.report_interval=100",
                                                 f"md.seed={seed}", "system.platform=Reference"])
    system = build_system("alanine-dipeptide", temperature=cfg.system.temperature)
    run_md(system, MDSettings.from_config(cfg, 0), out, int(round(ns * 1e6 / (cfg.md.timestep))),
           resume=(out / "checkpoint.json").exists(), progress=False)


def delta_f(phi: np.ndarray, weights: np.ndarray, kT: float) -> float:
    """F(C7eq) - F(C5) from per-frame weights (``md._delta_f`` on C7eq = 1, C5 = 0, the rest -1)."""
    from aesample.md import _delta_f

    labels = np.where((phi > -2.0) & (phi < 0.0), 1, np.where((phi <= -2.0) | (phi >= 2.3), 0, -1))
    return _delta_f(weights, labels, kT)


def bins_of(state, xi: np.ndarray) -> np.ndarray:
    """Flat CZAR-bin index of each frame's xi (clipped to the grid)."""
    cell = np.clip(np.floor((xi - state.grid_min) / state.z_bin_width).astype(int), 0, state.zbins - 1)
    return np.ravel_multi_index(tuple(cell.T), tuple(state.zbins))


def along_xi(state, a: np.ndarray, n_u: np.ndarray, kT: float) -> dict:
    """A(xi) minus -kT ln(unbiased count) over the bins with >= 30 unbiased frames: RMS, best plane, residual."""
    full = n_u >= 30
    d = a.ravel() - np.where(full, -kT * np.log(np.maximum(n_u, 1)), np.nan)
    ok_bins = full & np.isfinite(d)
    d_ok, w_ok = d[ok_bins], n_u[ok_bins]
    d_ok = d_ok - np.average(d_ok, weights=w_ok)
    centres = state.grid_min + (np.argwhere(ok_bins.reshape(a.shape)) + 0.5) * state.z_bin_width
    design = np.column_stack([np.ones(len(d_ok)), centres])
    root = np.sqrt(w_ok)
    plane = np.linalg.lstsq(design * root[:, None], d_ok * root, rcond=None)[0]
    resid = d_ok - design @ plane
    return {"A_minus_unbiased_rms": round(float(np.sqrt(np.average(d_ok ** 2, weights=w_ok))), 2),
            "A_minus_unbiased_tilt": [round(float(t), 2) for t in plane[1:]],
            "A_minus_unbiased_residual_rms": round(float(np.sqrt(np.average(resid ** 2, weights=w_ok))), 2),
            "bins_compared": int(ok_bins.sum())}


def a_with_unbiased_makeup(a: np.ndarray, b_u: np.ndarray, n_u: np.ndarray, kT: float) -> tuple:
    """Weights exp(-beta A(xi)) / (unbiased count of the bin) of the unbiased frames, and the share that has an A."""
    a_u = a.ravel()[b_u]
    ok = np.isfinite(a_u)
    w = np.where(ok, np.exp(-(np.where(ok, a_u, 0.0) - a_u[ok].min()) / kT), 0.0) / n_u[b_u]
    return w, float(ok.mean())


def unbiased_frames(unbiased: Path, topology):
    """phi of the unbiased run's frames, and the trajectory."""
    import mdtraj

    from aesample import md

    ref = md.load_result(unbiased).load_trajectory(topology)
    return mdtraj.compute_phi(ref)[1][:, 0], ref


def check_eabf(run_dirs: list, cv_path: Path, unbiased: Path) -> None:
    """The same along xi for plain eABF runs (``aesample eabf --cv-model``), pooled; with ``--full-samples`` huge
    they apply no bias, which separates the CZAR estimate itself from what the bias does to the sampling."""
    from aesample import md
    from aesample.export import compute_cv, load_cv
    from aesample.estimators import kT as kT_of
    from aesample.systems import build_system

    pooled = md.PooledRuns([md.load_result(d) for d in run_dirs])
    st, kT = pooled.state, kT_of(pooled.temperature)
    a = st.czar_free_energy(pooled.temperature)
    cv, _ = load_cv(cv_path)
    phi_u, ref = unbiased_frames(unbiased, build_system("alanine-dipeptide").mdtraj_topology)
    b_u = bins_of(st, compute_cv(cv, ref.xyz.astype(np.float64)))
    n_u = np.bincount(b_u, minlength=a.size)
    w_u, share = a_with_unbiased_makeup(a, b_u, n_u, kT)
    print(json.dumps({"runs": [str(d) for d in run_dirs], "samples": int(st.n_samples),
                      "true": round(delta_f(phi_u, np.ones(len(phi_u)), kT), 2),
                      "A_unbiased_makeup": round(delta_f(phi_u, w_u, kT), 2), "unbiased_frames_with_A": round(share, 4),
                      **along_xi(st, a, n_u, kT)}), flush=True)


def check(run_dir: Path, iterations: list, unbiased: Path) -> None:
    from aesample import md
    from aesample import loopstages as ls
    from aesample.export import compute_cv, load_cv
    from aesample.runlayout import RunLayout

    run = RunLayout.open(run_dir)
    kT = ls._kT(run)
    phi_u, ref = unbiased_frames(unbiased, run.system.mdtraj_topology)
    for k in iterations:
        pooled = md.PooledRuns([md.load_result(d) for d in ls._md_dirs(run, k)])
        st = pooled.state
        a = st.czar_free_energy(pooled.temperature)
        cv, _ = load_cv(run.iteration_dir(k - 1) / "cv.pt")
        b_u = bins_of(st, compute_cv(cv, ref.xyz.astype(np.float64)))
        n_u = np.bincount(b_u, minlength=a.size)
        traj, w, _ = ls._frames(run, k)
        phi_b = run.system.observables(traj)["phi"]
        b_b = bins_of(st, pooled.colvar_xi())
        n_b = np.bincount(b_b, minlength=a.size)
        w_u, share = a_with_unbiased_makeup(a, b_u, n_u, kT)
        w_b = n_u[b_b] / n_b[b_b]  # unbiased histogram as the Boltzmann mass of each bin, shared by its frames
        print(json.dumps({"iteration": k, "true": round(delta_f(phi_u, np.ones(len(phi_u)), kT), 2),
                          "loop": round(delta_f(phi_b, w, kT), 2),
                          "loop_A_unbiased_makeup": round(delta_f(phi_u, w_u, kT), 2),
                          "unbiased_A_loop_makeup": round(delta_f(phi_b, w_b, kT), 2),
                          "unbiased_frames_with_A": round(share, 4),
                          "loop_frames_in_unbiased_bins": round(float((n_u[b_b] > 0).mean()), 3),
                          **along_xi(st, a, n_u, kT)}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("unbiased")
    u.add_argument("out", type=Path)
    u.add_argument("--ns", type=float, default=10.0)
    u.add_argument("--seed", type=int, default=7)
    c = sub.add_parser("check")
    c.add_argument("run_dir", type=Path)
    c.add_argument("iterations", type=int, nargs="+")
    c.add_argument("--unbiased", type=Path, required=True)
    e = sub.add_parser("eabf")
    e.add_argument("run_dirs", type=Path, nargs="+")
    e.add_argument("--cv", type=Path, required=True, help="the cv.pt the runs used")
    e.add_argument("--unbiased", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "unbiased":
        run_unbiased(args.out, args.ns, args.seed)
    elif args.cmd == "eabf":
        check_eabf(args.run_dirs, args.cv, args.unbiased)
    else:
        check(args.run_dir, args.iterations, args.unbiased)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
