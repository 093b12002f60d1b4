"""Issue 14 benchmark 3: eABF walkers along one fixed learned CV, read back with the new estimator.

    # the CV: iteration 0 of the loop trained on unbiased frames from C7eq and C7ax (benchmarks/data/adp_c7ax.pdb),
    # see benchmarks/hidden_barrier_adp.py; then per walker j:
    aesample eabf --system alanine-dipeptide --cv-model CV.pt --grid-min -1.5 --grid-max 1.5 --bins 30 \\
        --kappa 3000 --full-samples 100 --extended-period 0.2 --report-interval 100 --seed $((11 + j)) --ns 1 --out W_j
    python benchmarks/learned_cv_walkers.py runs/reference/reference_phi-psi_20ns_seed2.npz W_0 W_1 ...

Per walker and as walkers' mean +- SD: free-energy differences between regions of (phi, psi) from the frames
reweighted with the walker's own CZAR weights (C5 - C7eq, alphaR/bridge - C7eq, alphaL - C7ax: within one side of
the phi barrier; Delta F(C7ax vs rest) across it, with its block-bootstrap error), against the (phi, psi)
metadynamics reference.
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


def main():
    ref = reference(sys.argv[1])
    print("reference:", {k: round(float(v), 2) for k, v in ref.items()})
    top = build_system("alanine-dipeptide").mdtraj_topology
    rows = []
    for d in sys.argv[2:]:
        res = load_result(d)
        traj = res.load_trajectory(top)
        ang = analysis.phi_psi(traj)
        w = res.reweighting_weights("czar")
        row = differences(ang[:, 0], ang[:, 1], w)
        err = res.free_energy_error("czar", n_boot=40, delta_f_labels=analysis.c7ax_labels(ang[:, 0]))
        row["C7ax vs rest"] = err["delta_f"]
        row["error"] = err["delta_f_error"]
        row["transitions"] = analysis.basin_transitions(ang[:, 0])
        rows.append(row)
        print(d, {k: round(float(v), 2) for k, v in row.items()}, flush=True)
    for key in [f"{a}-{b}" for a, b in PAIRS] + ["C7ax vs rest"]:
        v = np.array([r[key] for r in rows], dtype=float)
        print(f"{key}: mean {np.nanmean(v):.2f} SD {np.nanstd(v, ddof=1):.2f} (reference {ref[key]:.2f})")
    e = np.array([r["error"] for r in rows], dtype=float)
    print(f"per-walker bootstrap error of Delta F(C7ax vs rest): RMS {np.sqrt(np.nanmean(e ** 2)):.2f}")


if __name__ == "__main__":
    main()
