"""Checks on finished eABF walkers along a learned CV of alanine dipeptide (issue 14; no MD).

    python benchmarks/walker_checks.py WALKER_DIR [WALKER_DIR ...] [--time] [--unreached] [--links]
        [--unbiased UNBIASED_DIR --cv CV.pt]
    python benchmarks/walker_checks.py --make-unbiased UNBIASED_DIR [--ns 20 --seed 7]   # plain MD, frames every 0.2 ps

``--time``: Delta F(C7ax vs rest) at each block end (the accumulators of ``blocks/`` and the frames up to then),
and from the run's later parts alone (final minus earlier accumulators, later frames): does the walker converge,
and to what? ``--unreached``: the share of lambda samples in ABF cells where xi never had a sample (in any CZAR bin
overlapping the cell), from the final accumulators: where the ABF bias, unless gated
(``eabf.bias_only_where_reached``), only cancels the spring's pull back to xi. 2D grids whose CZAR bins refine the
ABF bins. ``--links``: Delta F with the package's CZAR free energy (link differences, A_j - A_i = -kT ln(n_j / n_i)
+ h (F_i + F_j) / 2, :func:`aesample.estimators.czar_free_energy`) beside ln n differentiated at bin centres and
integrated (the estimate before 2026-12-06). ``--unbiased``: an estimator-free check on the side of the phi
barrier that plain MD samples (it never reaches C7ax): the unbiased frames mapped through the CV give A(xi) by
histogram on the CZAR grid (bins with >= 30 frames); printed: the weighted SD of each estimate's A(xi) minus that
histogram, and C5 - C7eq, alphaR - C7eq of the unbiased frames as they are and reweighted to the walker's A(xi).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aesample import analysis  # noqa: E402
from aesample import estimators as est  # noqa: E402
from aesample.eabf import EABFState  # noqa: E402
from aesample.md import load_result  # noqa: E402
from aesample.systems import build_system  # noqa: E402

T = 300.0
KT = est.kT(T)


def delta_f(w: np.ndarray, lab: np.ndarray) -> float:
    pa, pb = w[lab == 0].sum(), w[lab == 1].sum()
    return float(-KT * np.log(pb / pa)) if pa > 0 and pb > 0 else float("nan")


def centred_czar(st: EABFState) -> np.ndarray:
    """A from ln n differentiated at bin centres, then integrated (the package's estimate before 2026-12-06)."""
    g = est.czar_gradient(st.czar, st.zcount, st.z_bin_width, T, st.periodic)
    return est.integrate_gradient(g, st.z_bin_width, st.periodic, counts=st.zcount)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("walkers", nargs="*", type=Path)
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--unreached", action="store_true")
    ap.add_argument("--links", action="store_true")
    ap.add_argument("--unbiased", type=Path, help="folder of a plain MD run (--make-unbiased)")
    ap.add_argument("--cv", type=Path, help="the walkers' CV (exported .pt), for --unbiased")
    ap.add_argument("--make-unbiased", type=Path, help="run plain MD of alanine dipeptide into this folder and stop")
    ap.add_argument("--ns", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    if a.make_unbiased is not None:
        from aesample.md import MDSettings, run_md

        md = MDSettings(temperature=T, timestep=0.002, friction=1.0, report_interval=100, segment_steps=500000,
                        equilibration_steps=5000, seed=a.seed, progress=False)
        res = run_md(build_system("alanine-dipeptide"), md, a.make_unbiased, int(round(a.ns * 500000)))
        print(f"{a.make_unbiased}: {a.ns} ns, {res.ns_per_day:.0f} ns/day")
        return 0
    top = build_system("alanine-dipeptide").mdtraj_topology
    unbiased = None
    if a.unbiased is not None:
        from learned_cv_walkers import differences

        from aesample.export import compute_cv, load_cv

        u = load_result(a.unbiased).load_trajectory(top)
        ang_u = analysis.phi_psi(u)
        rest_u = analysis.c7ax_labels(ang_u[:, 0]) == 0
        xi_u = compute_cv(load_cv(a.cv)[0], u.xyz.astype(np.float64), box=None)
        r = differences(ang_u[:, 0], ang_u[:, 1], np.ones(u.n_frames))
        print(f"{a.unbiased}: {u.n_frames} frames, {1 - rest_u.mean():.4f} in C7ax; C5 - C7eq {r['C5-C7eq']:.2f}, "
              f"alphaR - C7eq {r['alphaR-C7eq']:.2f}")
        unbiased = (ang_u, rest_u, xi_u, differences)
    for d in a.walkers:
        res = load_result(d)
        st = res.state
        if a.unreached:
            f = np.asarray(st.zbins) // np.asarray(st.bins)
            z = st.zcount.reshape(st.bins[0], f[0], st.bins[1], f[1]).sum(axis=(1, 3))
            un = (z == 0) & (st.count > 0)
            print(f"{d}: lambda samples in cells xi never reached {st.count[un].sum() / st.count.sum():.4f} "
                  f"({int(un.sum())} of {int((st.count > 0).sum())} cells)")
        if unbiased is not None:
            ang_u, rest_u, xi_u, differences = unbiased
            idx = np.floor((xi_u - st.grid_min) / st.z_bin_width).astype(int)
            on = (idx >= 0).all(1) & (idx < np.asarray(st.zbins)).all(1) & rest_u
            hist = np.zeros(tuple(st.zbins))
            np.add.at(hist, tuple(idx[on].T), 1.0)
            with np.errstate(divide="ignore"):
                a_u = np.where(hist >= 30, -KT * np.log(hist), np.nan)
            cells = tuple(np.clip(idx, 0, np.asarray(st.zbins) - 1).T)
            for name, A in (("centred gradients", centred_czar(st)), ("link differences", res.czar_pmf()[1])):
                both = np.isfinite(a_u) & np.isfinite(A)
                diff = (A - a_u)[both]
                off = np.average(diff, weights=hist[both])
                sd = np.sqrt(np.average((diff - off) ** 2, weights=hist[both]))
                dd = (A - a_u)[cells]
                w = np.where(on & np.isfinite(dd), np.exp(-(np.nan_to_num(dd) - off) / KT), 0.0)
                r = differences(ang_u[:, 0], ang_u[:, 1], w)
                print(f"{d}: {name}: A(xi) - unbiased histogram, weighted SD {sd:.2f} over {int(both.sum())} bins; "
                      f"unbiased frames reweighted to it: C5 - C7eq {r['C5-C7eq']:.2f}, alphaR - C7eq "
                      f"{r['alphaR-C7eq']:.2f}")
        if not (a.time or a.links):
            continue
        lab = analysis.c7ax_labels(analysis.phi_psi(res.load_trajectory(top))[:, 0])
        xi = res.colvar_xi()
        if a.links:
            for name, A in (("centred gradients", centred_czar(st)), ("link differences", res.czar_pmf()[1])):
                w = est.czar_reweighting_weights(xi, A, st.zcount, st.grid_min, st.z_bin_width, T, st.periodic)
                print(f"{d}: Delta F {name} {delta_f(w, lab):.2f}")
        if a.time:
            ri = int(res.run.get("report_interval", 100))
            dt = float(res.run.get("timestep", 0.002))
            snaps = sorted((d / "blocks").glob("step_*.npz"))
            rows = []
            for f in snaps:
                m = min(len(xi), int(f.stem.split("_")[1]) // ri)
                w = res.reweighting_weights("czar", state=EABFState.load(f), xis=xi[:m])
                rows.append(f"{m * ri * dt / 1000:.2f}:{delta_f(w, lab[:m]):.2f}")
            print(f"{d}: cumulative (ns:Delta F) " + " ".join(rows))
            for f in snaps[3:-1:4]:
                m = min(len(xi), int(f.stem.split("_")[1]) // ri)
                later = EABFState.weighted_sum([(1.0, st), (-1.0, EABFState.load(f))])
                w = res.reweighting_weights("czar", state=later, xis=xi[m:])
                print(f"   after {m * ri * dt / 1000:.2f} ns: {delta_f(w, lab[m:]):.2f} "
                      f"(C7ax frames {lab[m:].mean():.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
