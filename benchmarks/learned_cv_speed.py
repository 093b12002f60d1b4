"""What users run: eABF along the loop's own exported autoencoder CV, per call and per MD step (issue 16).

    .venv/bin/python benchmarks/learned_cv_speed.py                      # all parts, default systems
    .venv/bin/python benchmarks/learned_cv_speed.py --systems alanine-dipeptide --no-contention
    .venv/bin/python benchmarks/learned_cv_speed.py --platform CPU --quick  # a short pass (CI-sized)

The CV is built exactly as the loop's training stage builds it (``cv.selection`` default, the system's built
structure as alignment reference, ``periodic`` fixed from the system, ``cv.hidden_layers``/``cv.dimension``,
tanh, exported to TorchScript by :func:`aesample.export.export_cv`); its weights are untrained (random), which
changes no op and no timing. eABF uses the loop's settings (30 bins on [-1.5, 1.5], kappa 3000 capped as the loop
caps it for the CV's stiffness and the outer time step, CZAR grid auto).

Part 1, module: microseconds per call of the CV's ``value_and_jacobian`` and of the whole eABF force module (what
openmm-torch calls once per step), aten ops per call (all / top level), timed as this thread's CPU time (robust
to other load on the machine) and as wall time, repeats interleaved, medians. The (phi, psi) eABF module is
timed beside it for alanine dipeptide, and for systems without a box the module with the compiled CPU step
(``eabf.cpu_kernel``).
Part 2, MD: ns/day unbiased and with eABF every step and with ``md.cv_interval`` K (MTS) where the stability
rule allows it at kappa 3000, interleaved chunks, medians; ratio = eABF / unbiased throughput. eABF applies the
package's default (smooth) bias with the TorchScript step; one more row, every step, the binned bias
(``eabf.smooth_bias`` false). Systems without a box on the CPU and Reference platforms add the compiled CPU step
(``eabf.cpu_kernel``, what runs there by default), every step and with MTS. ``--breakdown`` adds, for systems without a box, the eABF system without its force (the extended particles' cost in the other
forces), a TorchForce returning zero (openmm-torch's fixed cost per step) and one that evaluates only the CV's
value and Jacobian: the differences between the rows split the eABF step's cost.
Part 3, contention: ``aesample eabf --cv-model`` as a user runs it (the package's own thread defaults, no
OMP_NUM_THREADS in the environment), alone and beside one CPU-bound process; the ns/day it prints, and the
ratio loaded / quiet.
"""
from __future__ import annotations

import argparse
import json
import os
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

from aesample import cpukernel, cvs  # noqa: E402
from aesample.config import Config  # noqa: E402
from aesample.eabf import ExtendedABF  # noqa: E402
from aesample.export import cv_stiffness, export_cv, load_cv  # noqa: E402
from aesample.loopstages import MIN_STEPS_PER_CV_PERIOD  # noqa: E402
from aesample.features import AlignedPositions, spanning_tree_parents  # noqa: E402
from aesample.md import copy_system, make_integrator  # noqa: E402
from aesample.models import AutoEncoder, ModelSpec  # noqa: E402
from aesample.platforms import select_platform  # noqa: E402
from aesample.selection import select_atoms  # noqa: E402
from aesample.systems import build_system  # noqa: E402
from aesample.threads import apply_torch_threads  # noqa: E402
from aesample.torchbinding import make_torch_force  # noqa: E402
from aesample.training import fit_cv_scaling  # noqa: E402
from eabf_speed import _context  # noqa: E402  (this directory: a minimised, thermalised Context)

GRID = (-1.5, 1.5)
BINS = 30
KAPPA = 3000.0


def loop_cv(ms, path: Path, rotation_solver: str = "eigh") -> Path:
    """Export a CV with the loop's featurizer and architecture for system ``ms`` (random weights) to ``path``.

    ``rotation_solver="power"``: the alignment's rotation by power iteration (no host synchronisation on CUDA,
    so the eABF force can be captured in a CUDA graph).
    """
    cfg = Config()
    top = ms.mdtraj_topology
    idx = select_atoms(top, cfg.cv.selection or ms.selection, what="cv.selection")
    parents = spanning_tree_parents(top, idx) if ms.periodic else None
    feat = AlignedPositions(idx, ms.positions[idx], parents=parents, periodic=ms.periodic,
                            rotation_solver=rotation_solver)
    torch.manual_seed(0)
    model = AutoEncoder(ModelSpec(n_features=3 * len(idx), hidden=tuple(cfg.cv.hidden_layers), n_cv=cfg.cv.dimension,
                                  activation=cfg.cv.activation)).double()
    rng = np.random.default_rng(0)
    frames = ms.positions[None] + rng.normal(scale=0.02, size=(64,) + ms.positions.shape)
    with torch.no_grad():
        box = torch.zeros(64, 3, 3, dtype=torch.float64)
        if ms.box is not None:
            box = box + torch.as_tensor(np.asarray(ms.box), dtype=torch.float64)
        code = model.encode(feat(torch.as_tensor(frames), box))
    export_cv(feat, model, fit_cv_scaling(code), path)
    return path


def capped_kappa(ms, cv, outer_ps: float) -> float:
    """KAPPA capped as the loop caps it (loopstages.coupling_constant) for this CV and outer time step, over
    frames near the built structure."""
    rng = np.random.default_rng(1)
    frames = ms.positions[None] + rng.normal(scale=0.02, size=(20,) + ms.positions.shape)
    masses = np.array([ms.system.getParticleMass(i).value_in_unit(openmm.unit.dalton)
                       for i in range(ms.system.getNumParticles())])
    box = None if ms.box is None else np.asarray(ms.box)
    stiffness = cv_stiffness(cv, frames, masses, box)
    kappa_max = (2 * np.pi / (MIN_STEPS_PER_CV_PERIOD * outer_ps)) ** 2 / max(stiffness, 1e-300)
    return min(KAPPA, kappa_max)


def _eabf(ms, cv, system=None, graphs: bool = False, kappa: float = KAPPA, smooth=None, kernel: bool = False):
    """ExtendedABF with the loop's settings; ``smooth`` None: the package's default bias (the smooth one, which a
    CUDA graph excludes); ``kernel``: the compiled CPU step (``eabf.cpu_kernel``) instead of the TorchScript one."""
    d = int(cv.cv_dim) if hasattr(cv, "cv_dim") else len(cv.periodic)
    box = None if ms.box is None else np.asarray(ms.box)
    system = copy_system(ms.system) if system is None else system
    if not any(getattr(cv, "periodic", [False])):  # the loop's learned CV (torsion CVs carry cv_dim too)
        e = ExtendedABF(system, cv, [GRID[0]] * d, [GRID[1]] * d, [BINS] * d, [kappa] * d, positions=ms.positions,
                        box=box, periodic=[False] * d, useCUDAGraphs=graphs, smoothBias=smooth, cpuKernel=kernel)
    else:  # (phi, psi)
        e = ExtendedABF(system, cv, [-np.pi] * d, [np.pi] * d, [36] * d, [300.0] * d, positions=ms.positions,
                        box=box)
    return system, e


def _count_ops(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ev = [e for e in prof.events() if e.name.startswith(("aten::", "aesample::"))]  # aesample: the compiled step
    top = [e for e in ev if e.cpu_parent is None or not e.cpu_parent.name.startswith(("aten::", "aesample::"))]
    return len(ev), len(top)


class _ZeroForce(torch.nn.Module):
    """openmm-torch's fixed cost: a TorchForce that returns zero energy and forces."""

    def forward(self, positions):
        return torch.zeros((), dtype=positions.dtype), torch.zeros_like(positions)


class _CVOnlyForce(torch.nn.Module):
    """The CV's value and Jacobian inside a TorchForce, with zero energy and forces (the CV's share of the step)."""

    def __init__(self, cv):
        super().__init__()
        self.cv = cv

    def forward(self, positions):
        box = torch.zeros(3, 3, dtype=positions.dtype)
        v, j = self.cv.value_and_jacobian(positions, box)
        # why the product: keeps the CV's ops in the graph while the force stays zero (and finite)
        return torch.zeros((), dtype=positions.dtype), torch.zeros_like(positions) * (1.0 + 0.0 * (v.sum() + j.sum()))


class _Jac(torch.nn.Module):
    def __init__(self, cv):
        super().__init__()
        self.cv = cv

    def forward(self, positions, box):
        return self.cv.value_and_jacobian(positions, box)


def module_part(systems, workdir: Path, repeats: int, calls: int) -> list[dict]:
    print("\n## Per call (float64, unbatched, sampling on; CPU = this thread's CPU time)\n")
    print("| system | module | aten ops (all / top) | us per call, CPU | us per call, wall |")
    print("|---|---|---|---|---|")
    rows = []
    for name in systems:
        ms = build_system(name)
        cv, _ = load_cv(loop_cv(ms, workdir / f"{name}.pt"))
        built = []
        box = torch.zeros(3, 3, dtype=torch.float64) if ms.box is None else torch.as_tensor(np.asarray(ms.box))
        _, e = _eabf(ms, cv)
        x = torch.tensor(e.extendPositions(ms.positions, None if ms.box is None else np.asarray(ms.box)),
                         dtype=torch.float64)
        one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        jac = torch.jit.script(_Jac(cv))
        built.append(("learned CV value_and_jacobian", lambda j=jac, x=x, b=box: j(x, b)))
        args = (x, box, one, zero, zero) if e.usesPeriodic else (x, one, zero, zero)
        built.append(("eABF module, learned CV", lambda m=e.module, a=args: m(*a)))
        if ms.box is None and cpukernel.available():
            _, ek = _eabf(ms, cv, kernel=True)
            built.append(("eABF module, learned CV, compiled CPU step", lambda m=ek.module, a=args: m(*a)))
        if name.startswith("alanine-dipeptide"):
            _, e2 = _eabf(ms, cvs.parse_cv_spec("phi,psi", ms.mdtraj_topology))
            x2 = torch.tensor(e2.extendPositions(ms.positions, None if ms.box is None else np.asarray(ms.box)),
                              dtype=torch.float64)
            a2 = (x2, box, one, zero, zero) if e2.usesPeriodic else (x2, one, zero, zero)
            built.append(("eABF module, (phi, psi)", lambda m=e2.module, a=a2: m(*a)))
        for _, fn in built:
            for _ in range(50):  # profiling executor warm-up
                fn()
        ops = {lab: _count_ops(fn) for lab, fn in built}
        cpu = {lab: [] for lab, _ in built}
        wall = {lab: [] for lab, _ in built}
        for _ in range(repeats):
            for lab, fn in built:
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(calls):
                    fn()
                cpu[lab].append((time.thread_time() - c0) / calls * 1e6)
                wall[lab].append((time.perf_counter() - t0) / calls * 1e6)
        for lab, _ in built:
            row = dict(system=name, module=lab, ops=ops[lab], us_cpu=statistics.median(cpu[lab]),
                       us_wall=statistics.median(wall[lab]))
            rows.append(row)
            print(f"| {name} | {lab} | {ops[lab][0]} / {ops[lab][1]} | {row['us_cpu']:.0f} | {row['us_wall']:.0f} |",
                  flush=True)
    return rows


def md_part(systems, workdir: Path, platform_name: str, steps: int, repeats: int, mts: list[int],
            graphs: bool = False, dt: float = 0.002, breakdown: bool = False) -> list[dict]:
    print(f"\n## MD ({steps} inner steps of {dt * 1e3:g} fs per chunk (water: /8), {repeats} interleaved repeats)\n")
    print("| system | platform | run | ns/day | ratio to unbiased |")
    print("|---|---|---|---|---|")
    rows = []
    for name in systems:
        ms = build_system(name)
        n_steps = steps if "water" not in name else max(40, steps // 8)
        cv, _ = load_cv(loop_cv(ms, workdir / f"{name}.pt"))
        box = None if ms.box is None else np.asarray(ms.box)
        platform, props = select_platform(platform_name, ms.system.getNumParticles())
        if platform.getName() == "CPU":
            props["Threads"] = str(os.cpu_count() or 1)
        T = ms.temperature
        runs = {}
        sys0 = copy_system(ms.system)
        integ = make_integrator(sys0, None, T, 1.0, dt)
        runs["unbiased"] = (_context(sys0, ms.positions, box, platform, props, integ, T), integ, 1)
        skipped = []
        # the TorchScript step, then the compiled CPU step where eabf.cpu_kernel: auto would use it; every step
        # and with MTS
        compiled = ms.box is None and platform.getName() in ("CPU", "Reference") and cpukernel.available()
        for kernel in (False, True) if compiled else (False,):
            for k in [1] + list(mts):
                kappa = capped_kappa(ms, cv, dt * k)
                sys1, e = _eabf(ms, cv, kappa=kappa, kernel=kernel)
                try:
                    integ = make_integrator(sys1, e, T, 1.0, dt, k)
                except ValueError as exc:
                    if not kernel:  # the same rule refuses both steps: say it once
                        skipped.append(f"cv_interval {k}: {exc}")
                    continue
                runs["eABF learned CV" + (", compiled CPU step" if kernel else "")
                     + ("" if k == 1 else f", cv_interval {k}") + f" (kappa {kappa:.0f})"] = (
                    _context(sys1, e.extendPositions(ms.positions, box), box, platform, props, integ, T), integ, k)
        # the default (smooth) bias against the binned one, every step: what the smooth bias costs
        kappa = capped_kappa(ms, cv, dt)
        sys2, e = _eabf(ms, cv, kappa=kappa, smooth=False)
        integ = make_integrator(sys2, e, T, 1.0, dt)
        runs[f"eABF learned CV, binned bias (kappa {kappa:.0f})"] = (
            _context(sys2, e.extendPositions(ms.positions, box), box, platform, props, integ, T), integ, 1)
        if graphs:  # power-rotation CV (graph-capturable), without and with CUDA graphs, the default (smooth) bias
            # and the binned one (captured, the smooth bias solves for its next potential a few iterations per step)
            pcv, _ = load_cv(loop_cv(ms, workdir / f"{name}_power.pt", rotation_solver="power"))
            for smooth in (True, False):
                for g in (False, True):
                    sys1, e = _eabf(ms, pcv, graphs=g, kappa=capped_kappa(ms, pcv, dt), smooth=smooth)
                    integ = make_integrator(sys1, e, T, 1.0, dt)
                    runs[f"eABF learned CV, power rotation, {'smooth' if smooth else 'binned'} bias, graphs "
                         f"{'on' if g else 'off'}"] = (
                        _context(sys1, e.extendPositions(ms.positions, box), box, platform, props, integ, T), integ, 1)
        if breakdown and ms.box is None:  # where the step's time goes (non-periodic systems: no box argument)
            sys3, e3 = _eabf(ms, cv)
            sys3.removeForce(e3.forceIndex)  # the extended particles stay, inert: their cost in the other forces
            integ = make_integrator(sys3, None, T, 1.0, dt)
            runs["extended particles, no TorchForce"] = (
                _context(sys3, e3.extendPositions(ms.positions, box), box, platform, props, integ, T), integ, 1)
            for lab, mod in (("TorchForce returning zero", _ZeroForce()),
                             ("TorchForce, CV value and Jacobian only", _CVOnlyForce(cv))):
                sys2 = copy_system(ms.system)
                sys2.addForce(make_torch_force(torch.jit.script(mod)))
                integ = make_integrator(sys2, None, T, 1.0, dt)
                runs[lab] = (_context(sys2, ms.positions, box, platform, props, integ, T), integ, 1)
        for ctx, integ, k in runs.values():
            integ.step(max(2, n_steps // (10 * k)))
            ctx.getState(getEnergy=True)
        times = {lab: [] for lab in runs}
        for _ in range(repeats):
            for lab, (ctx, integ, k) in runs.items():
                n = max(1, n_steps // k)
                t0 = time.perf_counter()
                integ.step(n)
                ctx.getState(getEnergy=True)
                times[lab].append((time.perf_counter() - t0) / (n * k))
        s0 = statistics.median(times["unbiased"])
        for lab in runs:
            s = statistics.median(times[lab])
            row = dict(system=name, platform=platform.getName(), precision=props.get("Precision", ""), run=lab,
                       ns_per_day=dt * 1e-3 / s * 86400, ratio=s0 / s)
            rows.append(row)
            print(f"| {name} | {platform.getName()} | {lab} | {row['ns_per_day']:.0f} | {row['ratio']:.3f} |",
                  flush=True)
        for s in skipped:
            print(f"\n{name}: skipped {s}")
    return rows


def _cli_ns_per_day(args, env) -> float:
    proc = subprocess.run([sys.executable, "-m", "aesample.cli", *args], capture_output=True, text=True, env=env,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"aesample {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    match = re.search(r"([0-9.]+) ns/day", proc.stdout)
    return float(match.group(1))


def contention_part(workdir: Path, ns: float, repeats: int) -> dict:
    print(f"\n## Contention (aesample eabf --cv-model, alanine dipeptide vacuum, {ns} ns, package defaults, "
          f"no OMP_NUM_THREADS; {repeats} alternating repeats)\n")
    ms = build_system("alanine-dipeptide")
    cv_path = loop_cv(ms, workdir / "contention.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                            "OPENBLAS_NUM_THREADS")}
    quiet, loaded = [], []
    for r in range(repeats):
        for label, store in (("quiet", quiet), ("loaded", loaded)):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if label == "loaded" else None
            try:
                out = workdir / f"contention_{label}_{r}"
                store.append(_cli_ns_per_day(
                    ["eabf", "--system", "alanine-dipeptide", "--cv-model", str(cv_path), "--grid-min", "-1.5",
                     "--grid-max", "1.5", "--bins", str(BINS), "--kappa", str(KAPPA), "--ns", str(ns),
                     "--no-progress", "--out", str(out)], env))
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    q, ld = statistics.median(quiet), statistics.median(loaded)
    print("| run | ns/day (median) | all repeats |")
    print("|---|---|---|")
    print(f"| alone | {q:.0f} | {', '.join(f'{v:.0f}' for v in quiet)} |")
    print(f"| beside one CPU-bound process | {ld:.0f} | {', '.join(f'{v:.0f}' for v in loaded)} |")
    print(f"\nloaded / quiet = {ld / q:.2f}")
    return dict(quiet=quiet, loaded=loaded, ratio=ld / q)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="+", default=["alanine-dipeptide", "alanine-dipeptide-water", "chignolin"])
    p.add_argument("--platform", default="auto", help="OpenMM platform for the MD part (auto: as the package picks)")
    p.add_argument("--steps", type=int, default=1000, help="inner steps per timed MD chunk")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=300, help="module calls per timed chunk")
    p.add_argument("--mts", type=int, nargs="*", default=[2, 4], help="md.cv_interval values to time")
    p.add_argument("--contention-ns", type=float, default=0.004)
    p.add_argument("--no-module", action="store_true")
    p.add_argument("--no-md", action="store_true")
    p.add_argument("--no-contention", action="store_true")
    p.add_argument("--graphs", action="store_true",
                   help="MD part: add a power-rotation CV with CUDA graphs off/on (graphs only act on CUDA)")
    p.add_argument("--breakdown", action="store_true",
                   help="MD part, non-periodic systems: add the extended particles alone, a TorchForce returning zero "
                        "(openmm-torch's fixed cost) and one evaluating only the CV (its share of the eABF step)")
    p.add_argument("--quick", action="store_true", help="short chunks, two repeats, no contention part")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.calls, args.no_contention = 100, 2, 30, True
    apply_torch_threads()  # as the package runs: one torch thread
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
                    "openmm": openmm.__version__, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.no_module:
            result["module"] = module_part(args.systems, work, args.repeats, args.calls)
        if not args.no_md:
            result["md"] = md_part(args.systems, work, args.platform, args.steps, args.repeats, args.mts, args.graphs,
                                   breakdown=args.breakdown)
        if not args.no_contention:
            result["contention"] = contention_part(work, args.contention_ns, max(1, args.repeats // 2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
