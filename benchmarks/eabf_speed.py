"""eABF overhead benchmark: throughput biased/unbiased and CV cost per step.

    .venv/bin/python benchmarks/eabf_speed.py                # default cases for this machine
    .venv/bin/python benchmarks/eabf_speed.py --cases alanine-dipeptide:CPU --steps 2000
    .venv/bin/python benchmarks/eabf_speed.py --mts 2 --cuda-graphs

For each (system, platform) it times the same LangevinMiddleIntegrator run without and with the eABF TorchForce
(2D CV: phi/psi for alanine dipeptide; CA end-to-end distance + one backbone dihedral for chignolin), and times
the CV alone (forward + one vector-Jacobian product, in Python on the host: the work the force does per step).
Levers: ``--mts K`` puts the eABF force on the slow group of an MTSLangevinIntegrator (evaluated once per K
inner steps); ``--cuda-graphs`` sets useCUDAGraphs on the TorchForce.
Prints one markdown table (paste into benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import math
import platform as _pyplatform
import sys
import time
from pathlib import Path

import numpy as np
import openmm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aesample import cvs  # noqa: E402
from aesample.eabf import ExtendedABF  # noqa: E402
from aesample.md import copy_system  # noqa: E402


def _cv_for(ms):
    top = ms.mdtraj_topology
    if ms.name.startswith("alanine"):
        return cvs.parse_cv_spec("phi,psi", top), "phi,psi"
    ca = top.select("name CA")
    return cvs.Stack([cvs.Distance([int(ca[0]), int(ca[-1])]), cvs.peptide_dihedral(top, "psi", residue=4)]), \
        "d(CA1-CA10),psi5"


def _time_steps(system, positions, box, platform, props, steps, dt, temperature, mts=0, fg=30):
    if mts:
        integ = openmm.MTSLangevinIntegrator(temperature, 1.0, dt * mts, [(0, mts), (fg, 1)])
        # put every other force in group 0, eABF in fg: the eABF force then runs once per outer step
        steps = max(1, steps // mts)
    else:
        integ = openmm.LangevinMiddleIntegrator(temperature, 1.0, dt)
    integ.setRandomNumberSeed(1)
    ctx = openmm.Context(system, integ, platform, props)
    if box is not None:
        ctx.setPeriodicBoxVectors(*box)
    ctx.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 100)
    ctx.setVelocitiesToTemperature(temperature, 1)
    integ.step(max(10, steps // 10))  # warm-up (TorchScript profiling runs, neighbour lists)
    ctx.getState(getEnergy=True)
    t0 = time.perf_counter()
    integ.step(steps)
    ctx.getState(getEnergy=True)  # synchronise
    el = time.perf_counter() - t0
    inner = steps * (mts or 1)
    ns_day = inner * dt * 1e-3 / el * 86400
    return ns_day, el / inner


def _cv_cost(cv, positions, n=300):
    pos = torch.tensor(positions, dtype=torch.float64)
    box = torch.zeros(3, 3, dtype=torch.float64)
    cv = torch.jit.script(cv) if not isinstance(cv, torch.jit.ScriptModule) else cv
    for _ in range(20):
        p = pos.clone().requires_grad_(True)
        torch.autograd.grad([cv(p, box).sum()], [p])
    t0 = time.perf_counter()
    for _ in range(n):
        p = pos.clone().requires_grad_(True)
        torch.autograd.grad([cv(p, box).sum()], [p])
    return (time.perf_counter() - t0) / n


def run_case(name, plat_name, steps, mts, cuda_graphs):
    from aesample.systems import build_system

    ms = build_system(name)
    platform = openmm.Platform.getPlatformByName(plat_name)
    props = {"Precision": "mixed"} if plat_name in ("CUDA", "OpenCL") else {}
    if plat_name == "CPU":
        props["Threads"] = "2"
    temperature = ms.temperature
    dt = 0.002
    box = None if ms.box is None else np.asarray(ms.box)
    # unbiased
    sys0 = copy_system(ms.system)
    ns0, s0 = _time_steps(sys0, ms.positions, box, platform, props, steps, dt, temperature)
    # biased
    sys1 = copy_system(ms.system)
    cv, label = _cv_for(ms)
    per = list(cv.periodic)
    gmin = [-math.pi if p else 0.2 for p in per]
    gmax = [math.pi if p else 2.5 for p in per]
    e = ExtendedABF(sys1, cv, gmin, gmax, [36] * len(per), [300.0] * len(per), positions=ms.positions, box=box,
                    useCUDAGraphs=cuda_graphs)
    ns1, s1 = _time_steps(sys1, e.extendPositions(ms.positions, box), box, platform, props, steps, dt, temperature,
                          mts=mts, fg=e.forceGroup)
    cv_s = _cv_cost(cv, ms.positions)
    return {
        "system": name, "platform": plat_name, "atoms": ms.system.getNumParticles(), "cv": label,
        "unbiased_ns_day": ns0, "biased_ns_day": ns1, "ratio": ns1 / ns0, "cv_us": cv_s * 1e6,
        "eabf_overhead_us": (s1 - s0) * 1e6,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", help="system:platform items")
    p.add_argument("--steps", type=int, default=1000, help="timed steps per run (default 1000)")
    p.add_argument("--mts", type=int, default=0, help="evaluate the eABF force every K inner steps (MTS)")
    p.add_argument("--cuda-graphs", action="store_true")
    a = p.parse_args(argv)
    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    cases = a.cases or [
        "alanine-dipeptide:Reference", "alanine-dipeptide:CPU", "alanine-dipeptide-water:CPU", "chignolin:CPU",
    ]
    if not a.cases and "CUDA" in names:
        try:
            openmm.Context(openmm.System(), openmm.VerletIntegrator(1.0), openmm.Platform.getPlatformByName("CUDA"))
            cases += ["alanine-dipeptide:CUDA", "alanine-dipeptide-water:CUDA", "chignolin:CUDA"]
        except Exception:
            pass
    print(f"# eABF speed ({_pyplatform.node()}, torch {torch.__version__}, openmm {openmm.__version__}, "
          f"{a.steps} steps, mts={a.mts}, cuda_graphs={a.cuda_graphs}, torch threads={torch.get_num_threads()})")
    print("| system | platform | particles | CV | unbiased ns/day | eABF ns/day | ratio | CV fwd+grad (us, host) "
          "| eABF overhead per step (us) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        name, plat = case.split(":")
        steps = a.steps if "water" not in name else max(100, a.steps // 4)
        r = run_case(name, plat, steps, a.mts, a.cuda_graphs)
        print(f"| {r['system']} | {r['platform']} | {r['atoms']} | {r['cv']} | {r['unbiased_ns_day']:.1f} | "
              f"{r['biased_ns_day']:.1f} | {r['ratio']:.2f} | {r['cv_us']:.0f} | {r['eabf_overhead_us']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
