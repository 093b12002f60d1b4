"""Validate `aesample eabf --cv phi` against an independent reference: OpenMM well-tempered Metadynamics on phi.

    aesample eabf --system alanine-dipeptide --cv phi --ns 2 --out runs/phi        # the eABF run (resumable)
    python benchmarks/eabf_validate_phi.py runs/phi --metad-ns 20                    # reference + comparison

The reference (alanine dipeptide vacuum, 300 K, Reference platform, bias factor 8, height 1 kJ/mol every 250
steps, width 0.3 rad, 72-point periodic grid) is cached in <run>/metad_phi_<ns>ns.npy. Compares the CZAR PMF
(<run>/eabf.czar.pmf) in the low free-energy region (reference < 15 kJ/mol) after aligning the mean.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def metad_reference(ns: float, seed: int = 2) -> np.ndarray:
    import mdtraj
    import openmm
    from openmm import app, unit

    from aesample.systems import build_system

    ms = build_system("alanine-dipeptide")
    traj = mdtraj.Trajectory(ms.positions[None], ms.mdtraj_topology)
    phi_idx = [int(a) for a in mdtraj.compute_phi(traj)[0][0]]
    cvf = openmm.CustomTorsionForce("theta")
    cvf.addTorsion(*phi_idx, [])
    bv = app.BiasVariable(cvf, -np.pi, np.pi, 0.3, periodic=True, gridWidth=72)
    integ = openmm.LangevinMiddleIntegrator(300, 1.0, 0.002)
    integ.setRandomNumberSeed(seed)
    meta = app.Metadynamics(ms.system, [bv], 300 * unit.kelvin, 8.0, 1.0 * unit.kilojoule_per_mole, 250)
    sim = app.Simulation(ms.topology, ms.system, integ, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(ms.positions)
    sim.minimizeEnergy()
    sim.context.setVelocitiesToTemperature(300, seed)
    t0 = time.time()
    meta.step(sim, int(ns * 5e5))
    print(f"metadynamics reference: {ns} ns in {time.time() - t0:.0f} s")
    return np.asarray(meta.getFreeEnergy().value_in_unit(unit.kilojoule_per_mole))


def main(argv=None):
    from aesample.outputs import read_grid

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--metad-ns", type=float, default=20.0)
    p.add_argument("--cutoff", type=float, default=15.0, help="low free-energy region, kJ/mol")
    a = p.parse_args(argv)
    cache = a.run / f"metad_phi_{a.metad_ns:g}ns.npy"
    if cache.exists():
        ref = np.load(cache)
    else:
        ref = metad_reference(a.metad_ns)
        np.save(cache, ref)
    pmf, gmin, width, _ = read_grid(a.run / "eabf.czar.pmf")
    zc, *_ = read_grid(a.run / "eabf.zcount")
    c = gmin[0] + width[0] * (np.arange(len(pmf)) + 0.5)
    r = np.interp(c, np.linspace(-np.pi, np.pi, len(ref)), ref)
    r -= r.min()
    low = np.isfinite(pmf) & (r < a.cutoff)
    dev = pmf - r - np.mean(pmf[low] - r[low])
    print(f"eABF samples {int(zc.sum())}; {low.sum()} bins with reference < {a.cutoff} kJ/mol")
    print(f"CZAR vs metadynamics there: max |dev| {np.abs(dev[low]).max():.2f} kJ/mol, "
          f"rms {np.sqrt(np.mean(dev[low] ** 2)):.2f} kJ/mol")
    for i in range(0, len(c), 3):
        print(f"  phi {c[i]:7.3f}  eABF-CZAR {pmf[i] - np.mean(pmf[low] - r[low]):8.2f}  metaD {r[i]:8.2f}  "
              f"n={int(zc[i])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
