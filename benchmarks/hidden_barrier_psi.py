"""A real-data positive case for the hidden-barrier diagnostic: eABF along psi alone hides the phi barrier.

    OMP_NUM_THREADS=1 python benchmarks/hidden_barrier_psi.py --out runs/hb_psi --ns 0.5 [--json out.json]

psi does not separate C7ax (phi > 0) from C7eq/alphaR (phi < 0): both sides cover the same psi values, and
biasing psi does not help phi cross. Two walkers along psi, one started in C7eq (the built structure) and one
in C7ax (``benchmarks/data/adp_c7ax.pdb``), each stay on their side; pooled as the loop pools walkers (summed
accumulators, one set of CZAR weights), the psi bins hold both sides and their shares are set by where the
walkers started: a hidden barrier. The same two starts along phi are the control (phi resolves the barrier:
nothing to flag). Each run alone is also reported (one side only: nothing to flag).

Runs (resumed when already there): ``<out>/{psi,phi}_{c7eq,c7ax}``, ``aesample eabf``'s defaults for a 1D torsion
(72 bins, kappa kT / bin width^2, full bias at 500 samples), frames every 0.2 ps, seeds 31/32. Detector:
:func:`aesample.hiddenbarrier.hidden_barrier` with its defaults on aligned heavy-atom coordinates (the loop's
default featurizer) and the runs' CZAR weights; truth from phi as in ``hidden_barrier_adp.py`` (weight in
eABF bins holding >= 10 % of each side).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from hidden_barrier_adp import analyse, load_run, _grid  # noqa: E402  (this directory)

C7AX_PDB = HERE / "data" / "adp_c7ax.pdb"


def run_walker(ms, cv_spec: str, start: str, out: Path, ns: float, seed: int) -> Path:
    """eABF along a torsion from the C7eq (built) or C7ax structure, with `aesample eabf`'s 1D defaults."""
    from aesample import cvs
    from aesample.config import standard_cv_defaults
    from aesample.md import EABFSettings, MDSettings, run_eabf

    cv = cvs.parse_cv_spec(cv_spec, ms.mdtraj_topology)
    pos = ms.positions if start == "c7eq" else ms.positions_from_pdb(C7AX_PDB, what="C7ax start")
    T = float(ms.temperature)
    dflt = standard_cv_defaults([True], [-np.pi], [np.pi], T)
    es = EABFSettings(grid_min=[-np.pi], grid_max=[np.pi], bins=dflt["bins"], kappa=dflt["kappa"], periodic=[True],
                      full_samples=dflt["full_samples"])
    md = MDSettings(temperature=T, timestep=0.002, friction=1.0, report_interval=100, segment_steps=50000,
                    equilibration_steps=5000, seed=seed, progress=False)
    d = out / f"{cv_spec}_{start}"
    run_eabf(ms, cv, es, md, d, int(round(ns * 5e5)), resume=True, positions=pos, log=lambda *a, **k: None)
    return d


def main(argv=None) -> int:
    import torch

    from aesample.features import AlignedPositions
    from aesample.md import PooledRuns, load_result
    from aesample.selection import select_atoms
    from aesample.systems import build_system

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder of the four runs")
    p.add_argument("--ns", type=float, default=0.5, help="length of each run, ns")
    p.add_argument("--json", type=Path, help="write the table here")
    a = p.parse_args(argv)

    ms = build_system("alanine-dipeptide")
    top = ms.mdtraj_topology
    idx = select_atoms(top, "protein and not element H", what="selection")
    aligned = AlignedPositions(idx, ms.positions[idx])
    zero_box = torch.zeros(3, 3, dtype=torch.float64)

    def features(xyz):
        with torch.no_grad():
            return aligned(torch.as_tensor(xyz, dtype=torch.float64), zero_box).numpy()

    rows = []
    for spec in ("psi", "phi"):
        dirs = [run_walker(ms, spec, s, a.out, a.ns, 31 + j) for j, s in enumerate(("c7eq", "c7ax"))]
        loaded = [load_run(d, features, top) for d in dirs]
        for d, (f, xi, w, phi, grid, kT) in zip(dirs, loaded):
            rows.append(analyse(d.name, f, xi, w, phi, grid, kT))
        pr = PooledRuns([load_result(d) for d in dirs])
        xi = np.concatenate([x for _, x, *_ in loaded])
        w = pr.reweighting_weights("czar", xis=xi)
        runs = np.concatenate([np.full(len(x), j) for j, (_, x, *_) in enumerate(loaded)])
        rows.append(analyse(f"{spec} pooled", np.concatenate([f for f, *_ in loaded]), xi, w,
                            np.concatenate([ph for _, _, _, ph, *_ in loaded]), _grid(pr), loaded[0][5], runs=runs))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
