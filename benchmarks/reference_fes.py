"""Independent reference free energy for alanine dipeptide (vacuum, 300 K): OpenMM well-tempered Metadynamics.

    python benchmarks/reference_fes.py runs/reference --ns 20                  # (phi, psi), cached result
    python benchmarks/reference_fes.py runs/reference --cvs phi --ns 20        # phi only
    python benchmarks/reference_fes.py runs/reference --precomputed /work/val_phi/metad_phi_20ns.npy
    python benchmarks/reference_fes.py runs/reference --unbiased --ns 100 --blocks 10   # plain MD, see below

Method: OpenMM's own ``app.Metadynamics`` (not aesample's eABF code, only the system from
``aesample.systems.build_system``), well-tempered, bias factor 8, Gaussian height 1 kJ/mol every 250 steps,
width 0.3 rad, periodic grid of 72 points per dihedral, LangevinMiddleIntegrator 2 fs, friction 1/ps, 300 K,
Reference platform (fastest for 22 atoms). The free energy is OpenMM's ``getFreeEnergy()``
(-(T + dT)/dT times the bias) on ``numpy.linspace(-pi, pi, 72)`` per variable (the points OpenMM deposits on).

The result is cached as ``<out>/reference_<cvs>_<ns>ns_seed<seed>.npz`` (keys: ``cvs``, ``grid``, ``fes``
(2D fes is indexed [psi, phi], OpenMM's order), ``phi``, ``f_phi``, ``delta_f``, ``ns``, ``seed``,
``wall_seconds``, ``ns_per_day``, ``block_ns``, ``block_delta_f``). A second call with the same arguments
reads the cache.

``--precomputed FILE.npy`` accepts a phi-only free energy already computed with the same protocol
(e.g. ``benchmarks/eabf_validate_phi.py``'s cached ``metad_phi_20ns.npy``: 72 values on linspace(-pi, pi, 72),
kJ/mol; pass its length with --ns) and writes it into the same .npz format (wall time unknown: NaN).

Delta F = F(phi > 0) - F(phi < 0) = -kT ln( int_{phi>0} e^{-beta F} / int_{phi<=0} e^{-beta F} ): the same
definition as ``aesample.analysis.basin_free_energy_difference`` on frames. F(phi) is interpolated (periodic,
linear) onto 7200 points before integrating. For (phi, psi) runs F(phi) = -kT ln int e^{-beta F(phi, psi)} dpsi.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aesample.benchmarking import (  # noqa: E402  (after the path line above)
    REFERENCE_TEMPERATURE as TEMPERATURE, delta_f_from_profile, delta_f_or_nan, load_reference, marginal_phi,
)
from aesample.estimators import kT as _kT  # noqa: E402

GRID = 72


def kT(temperature: float = TEMPERATURE) -> float:
    return _kT(temperature)


def _save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def run_metadynamics(cvs: str, ns: float, seed: int, blocks: int, platform_name: str = "Reference") -> dict:
    """Well-tempered metadynamics on phi or (phi, psi); returns the arrays stored in the cache."""
    import mdtraj
    import openmm
    from openmm import app, unit

    from aesample.systems import build_system

    ms = build_system("alanine-dipeptide")
    traj = mdtraj.Trajectory(ms.positions[None], ms.mdtraj_topology)
    variables = []
    for name in cvs.split(","):
        idx = mdtraj.compute_phi(traj)[0][0] if name == "phi" else mdtraj.compute_psi(traj)[0][0]
        force = openmm.CustomTorsionForce("theta")
        force.addTorsion(*[int(i) for i in idx], [])
        variables.append(app.BiasVariable(force, -np.pi, np.pi, 0.3, periodic=True, gridWidth=GRID))
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE, 1.0, 0.002)
    integrator.setRandomNumberSeed(seed)
    meta = app.Metadynamics(ms.system, variables, TEMPERATURE * unit.kelvin, 8.0,
                            1.0 * unit.kilojoule_per_mole, 250)
    sim = app.Simulation(ms.topology, ms.system, integrator, openmm.Platform.getPlatformByName(platform_name))
    sim.context.setPositions(ms.positions)
    sim.minimizeEnergy()
    sim.context.setVelocitiesToTemperature(TEMPERATURE, seed)
    total = int(round(ns * 5e5))
    per_block = max(250, (total // blocks) // 250 * 250)
    grid = np.linspace(-np.pi, np.pi, GRID)
    done, block_ns, block_df = 0, [], []
    t0 = time.perf_counter()
    while done < total:
        n = min(per_block, total - done)
        meta.step(sim, n)
        done += n
        fes = np.asarray(meta.getFreeEnergy().value_in_unit(unit.kilojoule_per_mole))
        block_ns.append(done * 2e-6)
        block_df.append(delta_f_from_profile(grid, marginal_phi(fes)))
        print(f"  metadynamics {done * 2e-6:8.3f} ns: Delta F = {block_df[-1]:6.2f} kJ/mol "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    wall = time.perf_counter() - t0
    fes = np.asarray(meta.getFreeEnergy().value_in_unit(unit.kilojoule_per_mole))
    f_phi = marginal_phi(fes)
    return {
        "cvs": cvs, "grid": grid, "fes": fes, "phi": grid, "f_phi": f_phi,
        "delta_f": delta_f_from_profile(grid, f_phi), "ns": ns, "seed": seed, "wall_seconds": wall,
        "ns_per_day": ns / wall * 86400.0, "block_ns": np.array(block_ns), "block_delta_f": np.array(block_df),
    }


def run_unbiased(ns: float, seed: int, blocks: int, platform_name: str = "Reference", every: int = 250) -> dict:
    """Plain MD (no bias at all): Delta F from counting frames, F(phi) from their histogram on the 72-point grid.

    The brute-force check of the biased references, and its limit: without a CV force alanine dipeptide runs
    ~10^4 ns/day, but at 300 K in vacuum it does not reach C7ax on that scale (measured 2026-11-22: 100 ns, seed 2,
    not one frame with 0 < phi < 2.9 rad; its "phi > 0" frames are C5 frames past phi = +pi). It checks F(phi) in
    the phi < 0 basin; its Delta F is no reference. ``block_delta_f`` holds Delta F of each of ``blocks``
    consecutive blocks.
    """
    import mdtraj
    import openmm
    from openmm import app, unit

    from aesample.systems import build_system

    ms = build_system("alanine-dipeptide")
    idx = mdtraj.compute_phi(mdtraj.Trajectory(ms.positions[None], ms.mdtraj_topology))[0][0]
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE, 1.0, 0.002)
    integrator.setRandomNumberSeed(seed)
    sim = app.Simulation(ms.topology, ms.system, integrator, openmm.Platform.getPlatformByName(platform_name))
    sim.context.setPositions(ms.positions)
    sim.minimizeEnergy()
    sim.context.setVelocitiesToTemperature(TEMPERATURE, seed)
    sim.step(5000)  # 10 ps equilibration
    total = int(round(ns * 5e5)) // every
    phis = np.empty(total)
    t0 = time.perf_counter()
    for i in range(total):
        sim.step(every)
        x = sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        phis[i] = mdtraj.compute_dihedrals(mdtraj.Trajectory(np.asarray(x)[None], ms.mdtraj_topology), [idx])[0, 0]
        if (i + 1) % max(1, total // blocks) == 0:
            print(f"  unbiased {(i + 1) * every * 2e-6:8.3f} ns ({time.perf_counter() - t0:.0f} s)", flush=True)
    wall = time.perf_counter() - t0

    def df(p):  # unweighted frames
        return delta_f_or_nan(p, np.ones(len(p)))

    grid = np.linspace(-np.pi, np.pi, GRID)
    # histogram bins centred on the grid points (periodic: the first and last point are the same angle)
    h = np.bincount(np.round((phis + np.pi) / (2 * np.pi) * (GRID - 1)).astype(int) % (GRID - 1),
                    minlength=GRID - 1).astype(float)
    with np.errstate(divide="ignore"):
        f = -kT() * np.log(h / h.max())
    f = np.append(f, f[0])
    f[~np.isfinite(f)] = np.nanmax(f[np.isfinite(f)]) + 10.0  # unvisited: above everything visited
    n_block = total // blocks
    return {
        "cvs": "phi", "grid": grid, "fes": f, "phi": grid, "f_phi": f - f.min(), "delta_f": df(phis), "ns": ns,
        "seed": seed, "wall_seconds": wall, "ns_per_day": ns / wall * 86400.0,
        "block_ns": np.full(blocks, ns / blocks),
        "block_delta_f": np.array([df(phis[b * n_block:(b + 1) * n_block]) for b in range(blocks)]),
        "frames_phi": phis,
    }


def print_reference(ref: dict, every: int = 3) -> None:
    print(f"reference: {ref.get('source', '')} ({ref['cvs']}, {ref['ns']:g} ns)")
    if "wall_seconds" in ref and np.isfinite(float(ref["wall_seconds"])):
        print(f"  wall time {float(ref['wall_seconds']):.0f} s, {float(ref['ns_per_day']):.0f} ns/day")
    if "block_ns" in ref:
        print("  Delta F during the run: " + ", ".join(
            f"{t:g} ns {d:.2f}" for t, d in zip(ref["block_ns"], ref["block_delta_f"])))
    print(f"  Delta F = F(phi>0) - F(phi<0) = {ref['delta_f']:.2f} kJ/mol")
    print("  phi (rad)   F(phi) (kJ/mol)")
    for i in range(0, len(ref["phi"]), every):
        print(f"  {ref['phi'][i]:8.3f}   {ref['f_phi'][i]:8.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output folder (the .npz cache lives there)")
    p.add_argument("--cvs", default="phi,psi", choices=["phi", "phi,psi"], help="biased dihedrals")
    p.add_argument("--unbiased", action="store_true",
                   help="plain MD instead of metadynamics (F(phi) by counting frames; C7ax is not reached in 100 ns)")
    p.add_argument("--ns", type=float, default=20.0, help="metadynamics length, ns (with --precomputed: its length)")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--blocks", type=int, default=4, help="print/store Delta F this many times during the run")
    p.add_argument("--platform", default="Reference")
    p.add_argument("--precomputed", type=Path, help="phi-only F(phi) .npy (72 points on linspace(-pi, pi))")
    a = p.parse_args(argv)
    if a.precomputed is not None:
        ref = load_reference(a.precomputed)
        name = f"reference_phi_precomputed_{a.precomputed.stem}.npz"
        _save_npz(a.out / name, cvs="phi", grid=ref["phi"], fes=ref["f_phi"], phi=ref["phi"], f_phi=ref["f_phi"],
                  delta_f=ref["delta_f"], ns=a.ns, seed=-1, wall_seconds=float("nan"),
                  ns_per_day=float("nan"))
        ref = load_reference(a.out / name)
    elif a.unbiased:
        cache = a.out / f"reference_unbiased_{a.ns:g}ns_seed{a.seed}.npz"
        if not cache.exists():
            _save_npz(cache, **run_unbiased(a.ns, a.seed, a.blocks, a.platform))
        ref = load_reference(cache)
        b = np.asarray(ref["block_delta_f"], dtype=float)
        print(f"unbiased MD: Delta F {ref['delta_f']:.2f} kJ/mol; per block ({len(b)} x {a.ns / len(b):g} ns): "
              + ", ".join(f"{x:.2f}" for x in b)
              + f"; standard error of the block mean {b.std(ddof=1) / math.sqrt(len(b)):.2f} kJ/mol")
    else:
        cache = a.out / f"reference_{a.cvs.replace(',', '-')}_{a.ns:g}ns_seed{a.seed}.npz"
        if not cache.exists():
            _save_npz(cache, **run_metadynamics(a.cvs, a.ns, a.seed, a.blocks, a.platform))
        ref = load_reference(cache)
    print_reference(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
