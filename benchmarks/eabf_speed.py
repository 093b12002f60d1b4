"""eABF overhead benchmark: the eABF TorchScript module per call, and MD throughput biased/unbiased (+ MTS).

    .venv/bin/python benchmarks/eabf_speed.py                       # everything, default cases for this machine
    .venv/bin/python benchmarks/eabf_speed.py --baseline-rev 50e675c # also time the module of an older commit
    .venv/bin/python benchmarks/eabf_speed.py --cases alanine-dipeptide:CPU --steps 2000 --mts 2 4
    .venv/bin/python benchmarks/eabf_speed.py --no-module            # MD part only (--no-md: module part only)

Part 1, module: the scripted eABF force module (what openmm-torch calls once per step) called directly in a tight
loop on alanine dipeptide, float64, unbatched, with a phi/psi CV (2D, periodic) and a PositionX CV (1D): aten
ops per call (torch.profiler: all / top-level) and microseconds per call. Variants: the closed-form CV Jacobian
route (default), the autograd route (``cvJacobian=False``) and, with ``--baseline-rev``, the module of that
git revision. Repeats are interleaved; medians and ratios to the first variant are printed.

Part 2, MD: for each (system, platform) it times the same dynamics without eABF, with eABF every step
(LangevinMiddleIntegrator) and with eABF on the slow group of an MTSLangevinIntegrator evaluated once per K inner
steps (``--mts K``, MDSettings.cv_interval), interleaved chunks, several repeats, medians. 2D CVs: phi/psi for
alanine dipeptide; CA end-to-end distance + one backbone dihedral for chignolin. "overhead" is the per-inner-step
time difference to the unbiased run. MTS settings that break the stability rule are reported as skipped.
Load caveat: on a shared machine only numbers from one run (interleaved) are comparable.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform as _pyplatform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openmm
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aesample import cvs  # noqa: E402
from aesample import eabf as eabf_mod  # noqa: E402
from aesample.md import copy_system, make_integrator  # noqa: E402


# ------------------------------------------------------------------------------------------------ module part
def _load_eabf_at(rev: str):
    """aesample/eabf.py of git revision ``rev`` as a module (relative imports redirected to the package)."""
    src = subprocess.run(["git", "show", f"{rev}:aesample/eabf.py"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    # every relative import of that revision (whatever modules it used) from today's installed package
    src = re.sub(r"^(\s*)from \.(\w*) import", lambda m: f"{m.group(1)}from aesample{'.' + m.group(2) if m.group(2) else ''} import",
                 src, flags=re.MULTILINE)
    path = Path(tempfile.mkdtemp()) / f"eabf_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"eabf_{rev}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _alanine_vacuum():
    from openmm import app, unit

    pdb = app.PDBFile(str(ROOT / "aesample" / "data" / "alanine_dipeptide_vacuum.pdb"))
    system = app.ForceField("amber14-all.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                             constraints=app.HBonds)
    return system, pdb.topology, np.array(pdb.positions.value_in_unit(unit.nanometer))


def _module_for(mod, kind, **kw):
    system, top, pos = _alanine_vacuum()
    if kind == "phi,psi":
        e = mod.ExtendedABF(system, cvs.parse_cv_spec("phi,psi", top), [-math.pi] * 2, [math.pi] * 2, [36, 36], 300.0,
                            positions=pos, **kw)
    else:
        e = mod.ExtendedABF(system, cvs.PositionX(0), -1.0, 1.0, 36, 300.0, positions=pos, periodic=False, **kw)
    return e.module, torch.tensor(e.extendPositions(pos), dtype=torch.float64)


def _count_ops(module, args):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        module(*args)
    ev = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ev if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return len(ev), len(top)


def module_part(baseline_rev, repeats, calls):
    variants = [("closed-form Jacobian", eabf_mod, {}), ("autograd route", eabf_mod, {"cvJacobian": False})]
    if baseline_rev:
        variants.append((f"baseline {baseline_rev}", _load_eabf_at(baseline_rev), {}))
    one = torch.tensor(1.0, dtype=torch.float64)
    zero = torch.tensor(0.0, dtype=torch.float64)
    print("\n## eABF module per call (alanine dipeptide, float64, unbatched, sampling on)\n")
    print("| CV | variant | aten ops (all) | aten ops (top-level) | us per call (median) | ratio |")
    print("|---|---|---|---|---|---|")
    for kind in ("phi,psi", "PositionX"):
        built = []
        for name, mod, kw in variants:
            module, pos = _module_for(mod, kind, **kw)
            args = (pos, one, zero, zero)
            for _ in range(50):  # profiling executor warm-up
                module(*args)
            built.append((name, module, args, _count_ops(module, args)))
        times = {name: [] for name, *_ in built}
        for _ in range(repeats):
            for name, module, args, _ in built:
                t0 = time.perf_counter()
                for _ in range(calls):
                    module(*args)
                times[name].append((time.perf_counter() - t0) / calls * 1e6)
        base = statistics.median(times[built[0][0]])
        for name, _, _, (n_all, n_top) in built:
            m = statistics.median(times[name])
            print(f"| {kind} | {name} | {n_all} | {n_top} | {m:.0f} | {m / base:.2f} |", flush=True)


# ------------------------------------------------------------------------------------------------ MD part
def _cv_for(ms):
    top = ms.mdtraj_topology
    if ms.name.startswith("alanine"):
        return cvs.parse_cv_spec("phi,psi", top), "phi,psi"
    ca = top.select("name CA")
    return cvs.Stack([cvs.Distance([int(ca[0]), int(ca[-1])]), cvs.peptide_dihedral(top, "psi", residue=4)]), \
        "d(CA1-CA10),psi5"


def _context(system, positions, box, platform, props, integrator, temperature):
    integrator.setRandomNumberSeed(1)
    ctx = openmm.Context(system, integrator, platform, props)
    if box is not None:
        ctx.setPeriodicBoxVectors(*box)
    ctx.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 100)
    ctx.setVelocitiesToTemperature(temperature, 1)
    return ctx


def md_case(name, plat_name, steps, mts_list, repeats, dt=0.002):
    from aesample.systems import build_system

    ms = build_system(name)
    platform = openmm.Platform.getPlatformByName(plat_name)
    props = {"Precision": "mixed"} if plat_name in ("CUDA", "OpenCL") else {}
    if plat_name == "CPU":
        props["Threads"] = str(os.cpu_count() or 1)
    T = ms.temperature
    box = None if ms.box is None else np.asarray(ms.box)
    runs = {}  # label -> (context, integrator, inner steps per integrator step)
    sys0 = copy_system(ms.system)
    integ = make_integrator(sys0, None, T, 1.0, dt)
    runs["unbiased"] = (_context(sys0, ms.positions, box, platform, props, integ, T), integ, 1)
    cv, label = _cv_for(ms)
    per = list(cv.periodic)
    gmin = [-math.pi if p else 0.2 for p in per]
    gmax = [math.pi if p else 2.5 for p in per]
    skipped = []
    for k in [1] + list(mts_list):
        sys1 = copy_system(ms.system)
        e = eabf_mod.ExtendedABF(sys1, cv, gmin, gmax, [36] * len(per), [300.0] * len(per), positions=ms.positions,
                                 box=box)
        try:
            integ = make_integrator(sys1, e, T, 1.0, dt, k)
        except ValueError as exc:
            skipped.append(f"MTS {k}: {exc}")
            continue
        runs["eABF" if k == 1 else f"eABF MTS {k}"] = (
            _context(sys1, e.extendPositions(ms.positions, box), box, platform, props, integ, T), integ, k)
    for ctx, integ, k in runs.values():  # warm-up: TorchScript profiling runs, neighbour lists
        integ.step(max(2, steps // (10 * k)))
        ctx.getState(getEnergy=True)
    times = {lab: [] for lab in runs}
    for _ in range(repeats):
        for lab, (ctx, integ, k) in runs.items():
            n = max(1, steps // k)
            t0 = time.perf_counter()
            integ.step(n)
            ctx.getState(getEnergy=True)  # synchronise
            times[lab].append((time.perf_counter() - t0) / (n * k))
    s0 = statistics.median(times["unbiased"])
    rows = []
    for lab in runs:
        s = statistics.median(times[lab])
        rows.append((lab, dt * 1e-3 / s * 86400, s0 / s, (s - s0) * 1e6))
    return ms.system.getNumParticles(), label, rows, skipped


def md_part(cases, steps, mts_list, repeats):
    print(f"\n## MD throughput ({steps} inner steps of 2 fs per timed chunk, {repeats} interleaved repeats, medians)\n")
    print("| system | platform | particles | CV | run | ns/day | ratio to unbiased | eABF overhead per inner step (us) |")
    print("|---|---|---|---|---|---|---|---|")
    notes = []
    for case in cases:
        name, plat = case.split(":")
        n = steps if "water" not in name else max(40, steps // 8)
        atoms, label, rows, skipped = md_case(name, plat, n, mts_list, repeats)
        for lab, nsd, ratio, over in rows:
            over_s = "" if lab == "unbiased" else f"{over:.0f}"
            print(f"| {name} | {plat} | {atoms} | {label} | {lab} | {nsd:.1f} | {ratio:.2f} | {over_s} |", flush=True)
        notes += [f"{name}:{plat} {s}" for s in skipped]
    for s in notes:
        print(f"\nskipped: {s}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", help="system:platform items for the MD part")
    p.add_argument("--steps", type=int, default=800, help="inner steps per timed chunk (water: steps/8)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (MD part)")
    p.add_argument("--mts", type=int, nargs="*", default=[2, 4], help="cv_interval values to time (default 2 4)")
    p.add_argument("--baseline-rev", default=None, help="also time aesample/eabf.py of this git revision (module)")
    p.add_argument("--module-calls", type=int, default=400, help="calls per timed module chunk")
    p.add_argument("--module-repeats", type=int, default=7)
    p.add_argument("--no-module", action="store_true")
    p.add_argument("--no-md", action="store_true")
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
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = ""
    print(f"# eABF speed ({_pyplatform.node()}, {os.cpu_count()} CPUs, {load}, torch {torch.__version__}, "
          f"openmm {openmm.__version__}, torch threads={torch.get_num_threads()})")
    if not a.no_module:
        module_part(a.baseline_rev, a.module_repeats, a.module_calls)
    if not a.no_md:
        md_part(cases, a.steps, a.mts, a.repeats)


if __name__ == "__main__":
    main()
