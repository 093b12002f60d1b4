"""Issue 14 benchmark 3: eABF walkers along one fixed learned CV, read back with the new estimator.

    # the CV: iteration 0 of the loop trained on unbiased frames from C7eq and C7ax (benchmarks/data/adp_c7ax.pdb),
    # see benchmarks/hidden_barrier_adp.py; then per walker j:
    aesample eabf --system alanine-dipeptide --cv-model CV.pt --grid-min -1.5 --grid-max 1.5 --bins 30 \\
        --kappa 3000 --full-samples 100 --extended-period 0.2 --report-interval 100 --seed $((11 + j)) --ns 1 --out W_j
    python benchmarks/learned_cv_walkers.py runs/reference/reference_phi-psi_20ns_seed2.npz W_0 W_1 ... [--json=F]

Per walker and as walkers' mean +- SD: free-energy differences between regions of (phi, psi) from the frames
reweighted with the walker's own CZAR weights (C5 - C7eq, alphaR/bridge - C7eq, alphaL - C7ax: within one side of
the phi barrier; Delta F(C7ax vs rest) across it, with its error bars: block bootstrap, basin visits, and the
larger of the two that FreeEnergyEstimates.free_energy_error reports), against the (phi, psi) metadynamics
reference; the same with the naive weights exp(-beta F_kappa(lambda)); transitions and the time of the first
C7ax visit. Walkers written by kappa_walkers.py are grouped by kappa; RMS z = RMS over walkers of
(Delta F - reference) / error bar (1 for an honest error bar of an unbiased estimate).
"""
import sys

import numpy as np

from aesample import analysis
from aesample import estimators as est
from aesample.md import load_result
from aesample.systems import build_system

T = 300.0
KT = est.kT(T)


def regions(phi, psi):
    ax = (phi > 0) & (phi < 2.3)
    eq_side = ~ax
    band = (psi > 0.5) | (psi < -2.5)
    return {
        "C7ax": ax & (psi < 0), "alphaL": ax & (psi >= 0),
        "C7eq": eq_side & (phi > -2) & (phi < 0) & band, "C5": eq_side & ((phi <= -2) | (phi >= 2.3)) & band,
        "alphaR": eq_side & (psi >= -2.5) & (psi <= 0.5),
    }


PAIRS = [("C5", "C7eq"), ("alphaR", "C7eq"), ("alphaL", "C7ax")]


def differences(phi, psi, w):
    r = regions(phi, psi)
    out = {}
    for a, b in PAIRS:
        pa, pb = w[r[a]].sum(), w[r[b]].sum()
        out[f"{a}-{b}"] = -KT * np.log(pa / pb) if pa > 0 and pb > 0 else np.nan
    return out


def reference(path):
    ref = np.load(path)
    g = ref["grid"]
    PSI, PHI = np.meshgrid(g, g, indexing="ij")  # fes is indexed [psi, phi]
    w = np.exp(-(ref["fes"] - ref["fes"].min()) / KT)
    d = differences(PHI.ravel(), PSI.ravel(), w.ravel())
    lab = analysis.c7ax_labels(PHI.ravel())
    d["C7ax vs rest"] = -KT * np.log(w.ravel()[lab == 1].sum() / w.ravel()[lab == 0].sum())
    return d


def _group(d):
    """kappa (and MTS interval) of a walker written by kappa_walkers.py; 'cli' for an `aesample eabf` walker."""
    import json
    from pathlib import Path

    f = Path(d) / "kappa_walker.json"
    if not f.is_file():
        return "cli"
    info = json.loads(f.read_text())
    return f"kappa {info['kappa']:g} (cv_interval {info['cv_interval']})"


def walker_row(d, top):
    """One walker's numbers: within-side differences and Delta F(C7ax vs rest) with CZAR and naive weights, the
    error bars (block bootstrap, basin visits on the phi cores and on the Delta F labels with 5-frame dwell),
    transitions and the time of the first C7ax visit."""
    res = load_result(d)
    traj = res.load_trajectory(top)
    ang = analysis.phi_psi(traj)
    phi = ang[:, 0]
    w = res.reweighting_weights("czar")
    row = differences(ang[:, 0], ang[:, 1], w)
    lab = analysis.c7ax_labels(phi)
    err = res.free_energy_error("czar", n_boot=40, delta_f_labels=lab, visit_labels=analysis.c7ax_core_labels(phi))
    row["C7ax vs rest"] = err["delta_f"]
    row["error"] = err["delta_f_error"]
    row["error_boot"] = err["delta_f_error_bootstrap"]
    row["error_visits"] = err["delta_f_error_visits"]
    row["error_visits_labels5"] = est.visit_delta_f_error(lab, w, KT, min_dwell=5)["error"]
    row["rms"] = err["rms"]
    row["rms_boot"] = err["rms_bootstrap"]
    row["transitions"] = analysis.basin_transitions(phi)
    core = analysis.c7ax_core_labels(phi)
    dt_frame = float(res.run.get("report_interval", 100)) * float(res.run.get("timestep", 0.002))  # ps
    first = np.flatnonzero(core == 1)
    row["first_c7ax_ps"] = float(first[0] + 1) * dt_frame if first.size else np.nan
    try:
        wn = res.reweighting_weights("naive")
        nv = differences(ang[:, 0], ang[:, 1], wn)
        for k, v in nv.items():
            row["naive " + k] = v
        pa, pb = wn[lab == 0].sum(), wn[lab == 1].sum()
        row["naive C7ax vs rest"] = -KT * np.log(pb / pa) if pa > 0 and pb > 0 else np.nan
        # the naive free energy over the lambda histogram actually sampled (what the time-dependent bias did):
        # w ~ exp(-beta F_kappa(lambda)) / n(lambda), the lambda analogue of the CZAR weights
        st = res.state
        lam = res.colvar_lambda()
        n_lam = est.values_in_bins(st.count, st.grid_min, st.bin_width, st.periodic, lam)
        wh = np.where(n_lam > 0, wn / np.where(n_lam > 0, n_lam, 1.0), 0.0)
        for k, v in differences(ang[:, 0], ang[:, 1], wh).items():
            row["naive/n " + k] = v
        pa, pb = wh[lab == 0].sum(), wh[lab == 1].sum()
        row["naive/n C7ax vs rest"] = -KT * np.log(pb / pa) if pa > 0 and pb > 0 else np.nan
    except ValueError:
        pass
    return row


def main():
    import json

    ref = reference(sys.argv[1])
    print("reference:", {k: round(float(v), 2) for k, v in ref.items()})
    top = build_system("alanine-dipeptide").mdtraj_topology
    groups = {}
    for d in sys.argv[2:]:
        if d.startswith("--json="):
            continue
        row = walker_row(d, top)
        groups.setdefault(_group(d), []).append(row)
        print(d, {k: round(float(v), 2) for k, v in row.items()}, flush=True)
    keys = [f"{a}-{b}" for a, b in PAIRS] + ["C7ax vs rest"]
    summary = {}
    for g, rows in groups.items():
        print(f"== {g}: {len(rows)} walkers")
        summary[g] = {}
        for prefix in ("", "naive ", "naive/n "):
            for key in keys:
                v = np.array([r.get(prefix + key, np.nan) for r in rows], dtype=float)
                sd = np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else np.nan
                summary[g][prefix + key] = [float(np.nanmean(v)), float(sd), float(ref[key])]
                print(f"{prefix}{key}: mean {np.nanmean(v):.2f} SD {sd:.2f} (reference {ref[key]:.2f})")
        dfv = np.array([r["C7ax vs rest"] for r in rows], dtype=float)
        for e in ("error", "error_boot", "error_visits", "error_visits_labels5", "rms", "rms_boot"):
            ev = np.array([r[e] for r in rows], dtype=float)
            z = (dfv - ref["C7ax vs rest"]) / ev
            summary[g][e] = [float(np.sqrt(np.nanmean(ev ** 2))), float(np.sqrt(np.nanmean(z ** 2)))]
            print(f"  {e}: RMS {np.sqrt(np.nanmean(ev ** 2)):.2f} kJ/mol; RMS z of Delta F against the reference "
                  f"{np.sqrt(np.nanmean(z ** 2)):.2f}")
        for e in ("transitions", "first_c7ax_ps"):
            ev = np.array([r[e] for r in rows], dtype=float)
            summary[g][e] = ev.tolist()
            print(f"  {e}: {ev.tolist()}")
    rows = [r for g in groups.values() for r in g]
    dfv = np.array([r["C7ax vs rest"] for r in rows], dtype=float)
    tr = np.array([r["transitions"] for r in rows], dtype=float)
    for label, sel in (("all walkers", np.isfinite(dfv)), (">= 4 transitions", np.isfinite(dfv) & (tr >= 4))):
        if not sel.any():
            continue
        line = []
        for e in ("error_boot", "error"):
            z = (dfv[sel] - ref["C7ax vs rest"]) / np.array([r[e] for r in rows], dtype=float)[sel]
            line.append(f"{e} RMS z {np.sqrt(np.mean(z ** 2)):.2f}, |z| <= 1 in {np.mean(np.abs(z) <= 1):.2f}")
        summary[label] = {"walkers": int(sel.sum()), "z": line}
        print(f"{label} ({int(sel.sum())}): " + "; ".join(line))
    for d in sys.argv[2:]:
        if d.startswith("--json="):
            with open(d[7:], "w") as fh:
                json.dump({"reference": {k: float(v) for k, v in ref.items()}, "groups": summary}, fh, indent=1)


if __name__ == "__main__":
    main()
