"""Does CZAR get the free energy along a learned 2D CV right when the ABF bias is held fixed? Which bias shape
breaks it?

    OMP_NUM_THREADS=1 python benchmarks/static_bias_check.py run OUT SEED MODE --cv CV.pt --source RUN_DIR [...]
        [--ns 1] [--kappa 3000] [--timestep-fs 2] [--no-cmm-remover]
    OMP_NUM_THREADS=1 python benchmarks/static_bias_check.py analyse RUN_DIR [...] --cv CV.pt --unbiased UNB_DIR

``run``: eABF of alanine dipeptide along ``CV.pt`` (the loop's settings: grid [-1.5, 1.5], kappa 3000, CZAR bins
0.025, 2 fs, Reference platform, default start) with a STATIC bias on lambda. The bias comes from the pooled
accumulators of ``--source`` (eABF runs along the same CV): its lambda-bin counts are set to 1e6, so the run's own
samples move it by < 1e-3 of a bin's mean force; the CZAR accumulators start empty (xi counts 1e-9 where the source
reached, so the 'bias only where reached' gate is open there from the first step). In a static conservative bias the
extended system is at equilibrium and CZAR is exact, so a wrong result here is the bias field's doing. MODE:

* ``staircase``: the source's mean force per ABF bin (30 bins, 0.1 wide), as eABF applies it: constant inside a bin;
* ``projected``: the gradient (central differences) of the source's count-weighted integral on the same 30 bins:
  curl-free between bins, still constant inside each;
* ``fineN``: the integral interpolated bilinearly to N bins per axis and its gradient there (N = 120: 0.025 wide,
  the coupling width sqrt(kT/kappa) is 0.029);
* ``interpN``: the source's raw mean forces interpolated bilinearly to N bins (what a core interpolating its running
  estimate would apply);
* ``storedN``: a smooth-bias run's own final potential (``--source`` one run made with ``eabf.smooth_bias``),
  interpolated to N bins and differentiated there.

``analyse``: per run, Delta F(C7eq - C5) inside the phi < 0 basin with the run's CZAR A(xi) and the unbiased run's
make-up per CZAR bin (``within_basin_check``'s ``A_unbiased_makeup``; the unbiased value is the truth), the scale
c of A against -kT ln(unbiased count) over the bins with >= 30 unbiased frames (count-weighted; 1 when A is right),
and the same with a plane; then the mean and SEM over runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BIG = 1.0e6  # lambda-bin count of the baked-in bias: the run's own ~1e4 samples per bin barely move it
_NO_SAMPLE = 1.0e300


def _integral(src):
    """Count-weighted integral of the source's mean forces on its own ABF grid (NaN where never sampled)."""
    from aesample import estimators as est

    g = np.where(src.count[..., None] > 0, src.grad / np.maximum(src.count, 1)[..., None], np.nan)
    return est.integrate_gradient(g, src.bin_width, src.periodic, counts=src.count)


def _fine_grid(src, n: int):
    """Centres of an n x n grid over the source's range, as (n*n, 2) points, and the bin width."""
    h = (src.grid_max - src.grid_min) / n
    axes = [src.grid_min[k] + h[k] * (np.arange(n) + 0.5) for k in range(2)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    return pts, h


def bias_field(src, mode: str):
    """(bias gradient per lambda bin (bins + (2,)), lambda bins where it applies) for MODE."""
    from scipy.interpolate import RegularGridInterpolator

    visited = src.count > 0
    if mode == "staircase":
        return np.where(visited[..., None], src.grad / np.maximum(src.count, 1)[..., None], 0.0), visited
    if mode == "projected":
        phi = _integral(src)
        ok = np.isfinite(phi)
        g = np.zeros(phi.shape + (2,))
        for k in range(2):  # central differences, one-sided where a neighbour is missing
            fwd = (np.roll(phi, -1, axis=k) - phi) / src.bin_width[k]
            bwd = (phi - np.roll(phi, 1, axis=k)) / src.bin_width[k]
            last, first = [slice(None)] * 2, [slice(None)] * 2
            last[k], first[k] = -1, 0
            fwd[tuple(last)] = np.nan
            bwd[tuple(first)] = np.nan
            both = np.isfinite(fwd) & np.isfinite(bwd)
            g[..., k] = np.where(both, 0.5 * (fwd + bwd), np.nan_to_num(np.where(np.isfinite(fwd), fwd, bwd)))
        return np.where(ok[..., None], g, 0.0), ok
    for prefix in ("fine", "interp", "stored"):
        if mode.startswith(prefix):
            n = int(mode[len(prefix):] or 120)
            break
    else:
        raise SystemExit(f"unknown mode {mode!r} (staircase, projected, fineN, interpN, storedN)")
    centres = src.centers()
    pts, h = _fine_grid(src, n)
    inside = RegularGridInterpolator(centres, visited.astype(float), method="nearest", bounds_error=False,
                                     fill_value=0.0)(pts).reshape(n, n) > 0.5
    if prefix == "interp":
        mean = np.where(visited[..., None], src.grad / np.maximum(src.count, 1)[..., None], 0.0)
        g = np.stack([RegularGridInterpolator(centres, mean[..., k], bounds_error=False, fill_value=None)(pts)
                      for k in range(2)], -1).reshape(n, n, 2)
    else:  # a potential on the source's bins, interpolated to n bins and differentiated there
        if prefix == "fine":
            phi = _integral(src)
            phi = np.where(np.isfinite(phi), phi, 0.0)
        elif src.bias_potential is None:
            raise SystemExit("mode stored needs --source runs made with the smooth bias (their state's potential)")
        else:  # the potential a smooth-bias run applied at its end
            phi = np.asarray(src.bias_potential)
        phi_f = RegularGridInterpolator(centres, phi, bounds_error=False, fill_value=None)(pts).reshape(n, n)
        g = np.stack(np.gradient(phi_f, h[0], h[1]), -1)
    return g * inside[..., None], inside


def run(args) -> None:
    import openmm

    from aesample import md
    from aesample.eabf import EABFState
    from aesample.export import load_cv
    from aesample.md import EABFSettings, MDSettings, run_eabf
    from aesample.systems import build_system

    states = [md.load_result(d).state for d in args.source]
    src = states[0] if len(states) == 1 else EABFState.pooled(states)  # one run keeps its smooth-bias potential
    g, keep = bias_field(src, args.mode)
    bins = np.array(keep.shape)
    count = np.where(keep, BIG, 0.0)
    init = EABFState(grid_min=src.grid_min, grid_max=src.grid_max, bins=bins, periodic=src.periodic,
                     kappa=np.full(2, args.kappa), count=count, grad=g * count[..., None],
                     zcount=np.where(src.zcount > 0, 1e-9, 0.0), czar=np.zeros_like(src.czar),
                     last=np.full(4, _NO_SAMPLE), n_samples=0, zbins=src.zbins, meta=dict(src.meta))
    cv, _ = load_cv(args.cv)
    ms = build_system("alanine-dipeptide")
    if args.no_cmm_remover:
        for i in reversed(range(ms.system.getNumForces())):
            if isinstance(ms.system.getForce(i), openmm.CMMotionRemover):
                ms.system.removeForce(i)
    es = EABFSettings(grid_min=list(src.grid_min), grid_max=list(src.grid_max), bins=[int(b) for b in bins],
                      kappa=[args.kappa] * 2, full_samples=100, czar_bins=[int(b) for b in src.zbins])
    mds = MDSettings(timestep=args.timestep_fs * 1e-3, seed=args.seed, progress=False, cpu_threads=1,
                     platform="Reference")
    run_eabf(ms, cv, es, mds, args.out, int(round(args.ns * 1e6 / args.timestep_fs)), initial_state=init, log=None)


def scale_of(a: np.ndarray, n_u: np.ndarray, centres: np.ndarray, kT: float):
    """(c, c with a plane) of A = c (-kT ln n_u) (+ plane) + const over the bins with >= 30 unbiased frames."""
    ok = (n_u >= 30) & np.isfinite(a)
    au, w = -kT * np.log(n_u[ok]), n_u[ok].astype(float)
    root = np.sqrt(w)
    one = np.column_stack([np.ones(ok.sum()), au])
    with_plane = np.column_stack([one, centres[ok]])
    c1 = np.linalg.lstsq(one * root[:, None], a[ok] * root, rcond=None)[0][1]
    c2 = np.linalg.lstsq(with_plane * root[:, None], a[ok] * root, rcond=None)[0][1]
    return float(c1), float(c2)


def analyse(args) -> None:
    import within_basin_check as wb

    from aesample import md
    from aesample.estimators import kT as kT_of
    from aesample.export import compute_cv, load_cv
    from aesample.systems import build_system

    phi_u, ref = wb.unbiased_frames(args.unbiased, build_system("alanine-dipeptide").mdtraj_topology)
    cv, _ = load_cv(args.cv)
    xi_u = compute_cv(cv, ref.xyz.astype(np.float64))
    rows = []
    for d in args.run_dirs:
        res = md.load_result(d)
        st, kT = res.state, kT_of(res.temperature)
        a = st.czar_free_energy(res.temperature)
        b_u = wb.bins_of(st, xi_u)
        n_u = np.bincount(b_u, minlength=a.size)
        w_u, _ = wb.a_with_unbiased_makeup(a, b_u, n_u, kT)
        centres = np.stack(np.meshgrid(*st.z_centers(), indexing="ij"), -1).reshape(-1, 2)
        c1, c2 = scale_of(a.ravel(), n_u, centres, kT)
        rows.append({"run": str(d), "delta_f_basin": round(wb.delta_f(phi_u, w_u, kT), 2), "scale": round(c1, 3),
                     "scale_with_plane": round(c2, 3)})
        print(json.dumps(rows[-1]), flush=True)
    dfs = np.array([r["delta_f_basin"] for r in rows])
    cs = np.array([r["scale"] for r in rows])
    sem = (lambda x: round(float(x.std(ddof=1) / np.sqrt(len(x))), 3)) if len(rows) > 1 else (lambda x: None)
    print(json.dumps({"runs": len(rows), "true": round(wb.delta_f(phi_u, np.ones(len(phi_u)), kT), 2),
                      "delta_f_basin_mean": round(float(dfs.mean()), 2), "delta_f_sem": sem(dfs),
                      "scale_mean": round(float(cs.mean()), 3), "scale_sem": sem(cs)}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("seed", type=int)
    r.add_argument("mode")
    r.add_argument("--cv", type=Path, required=True)
    r.add_argument("--source", type=Path, nargs="+", required=True)
    r.add_argument("--ns", type=float, default=1.0)
    r.add_argument("--kappa", type=float, default=3000.0)
    r.add_argument("--timestep-fs", type=float, default=2.0)
    r.add_argument("--no-cmm-remover", action="store_true")
    a = sub.add_parser("analyse")
    a.add_argument("run_dirs", type=Path, nargs="+")
    a.add_argument("--cv", type=Path, required=True)
    a.add_argument("--unbiased", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        analyse(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
