"""Is the reference's F(phi) right inside the C7eq/C5 basin? Each iteration's reweighted frames against it there.

    python benchmarks/reference_basin_check.py RUN_DIR 0 3

Re-reads loop iterations (no MD). For each: F(phi) of the iteration's frames with the loop's weights (uniform at
iteration 0, unbiased MD from C7eq) in 18 bins over [-pi, pi], and the difference to the reference
(``benchmarks/data/reference_phi_metad_20ns.npz``, its Boltzmann mass integrated over each bin) in the phi < 0
bins where the reference is below 15 kJ/mol, mean offset over those bins removed (kJ/mol). Unbiased MD samples
the C7eq/C5/alpha_R basin at equilibrium within a nanosecond (its states exchange in tens of ps): iteration 0
checks the reference there, the later iterations check the loop's weights against it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_reader import run_and_iterations  # noqa: E402  (this directory)

REFERENCE = Path(__file__).resolve().parent / "data" / "reference_phi_metad_20ns.npz"


def main() -> int:
    run, iterations = run_and_iterations(__doc__)
    from aesample import loopstages as ls
    from aesample.benchmarking import load_reference, reference_phi_on

    kT = ls._kT(run)
    ref = load_reference(REFERENCE)
    edges = np.linspace(-np.pi, np.pi, 19)
    centres = 0.5 * (edges[1:] + edges[:-1])
    # the reference per bin as the histogram sees it: -kT ln of its Boltzmann mass over the bin, not its value at
    # the centre (on a 0.35 rad bin those differ by up to 1.7 kJ/mol on the basin's walls and its minimum)
    fine = np.linspace(-np.pi, np.pi, 3600, endpoint=False) + np.pi / 3600
    f_fine = reference_phi_on(fine, ref)
    bin_of = np.digitize(fine, edges) - 1
    f_ref = np.array([-kT * np.log(np.mean(np.exp(-f_fine[bin_of == i] / kT))) for i in range(len(centres))])
    f_ref -= f_ref.min()
    for k in iterations:
        traj, weights, _ = ls._frames(run, k)
        phi = run.system.observables(traj)["phi"]
        mass, _ = np.histogram(phi, bins=edges, weights=weights)
        with np.errstate(divide="ignore"):
            f = -kT * np.log(mass / mass.sum())
        sel = (centres < 0) & np.isfinite(f) & (f_ref < 15.0)
        diff = (f - f_ref)[sel]
        diff -= diff.mean()
        print(json.dumps({"iteration": k, "phi": [round(c, 2) for c in centres[sel]],
                          "loop_minus_reference": [round(d, 2) for d in diff]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
