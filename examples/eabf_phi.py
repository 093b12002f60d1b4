"""eABF along the phi dihedral of alanine dipeptide with OpenMM's Simulation and reporters.

    python examples/eabf_phi.py [OUT_DIR] [STEPS]      (defaults: eabf_phi_out, 250000 steps = 0.5 ns)
"""
import math
import sys
from pathlib import Path

import openmm
from openmm import app, unit

from aesample import ColvarReporter, EABFCheckpointReporter, ExtendedABF, build_system, parse_cv_spec

out = Path(sys.argv[1] if len(sys.argv) > 1 else "eabf_phi_out")
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 250_000
out.mkdir(parents=True, exist_ok=True)

molecule = build_system("alanine-dipeptide")  # System, Topology, positions (nm), 300 K
phi = parse_cv_spec("phi", molecule.topology)  # a TorchScript CV; export_cv/load_cv give learned ones
# Adds one extended particle per CV component and the eABF force (in a free force group) to the System.
eabf = ExtendedABF(molecule.system, phi, gridMin=-math.pi, gridMax=math.pi, bins=36, kappa=500.0,
                   positions=molecule.positions)

integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 2 * unit.femtosecond)
simulation = app.Simulation(molecule.topology, molecule.system, integrator,
                            openmm.Platform.getPlatformByName("Reference"))
simulation.context.setPositions(eabf.extendPositions(molecule.positions))  # N atoms + lambda, starting at xi
simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)

interval = max(1, steps // 100)
simulation.reporters += [
    app.DCDReporter(str(out / "trajectory.dcd"), interval, atomSubset=eabf.moleculeAtoms),  # molecule only
    ColvarReporter(out / "COLVAR", eabf, interval),  # time, xi, lambda, bias force on lambda
    EABFCheckpointReporter(out / "checkpoint.chk", eabf, 10 * interval),  # + checkpoint.chk.eabf.npz
]
eabf.step(simulation, steps)

print("phi now:", eabf.getCollectiveVariables(simulation), "rad")
free_energy = eabf.getFreeEnergy().value_in_unit(unit.kilojoule_per_mole)  # CZAR, on the czarBins grid
centers = eabf.getState(simulation).z_centers()[0]
for x, f in list(zip(centers, free_energy))[::6]:
    print(f"phi {x:6.2f} rad   F {f:7.2f} kJ/mol")
