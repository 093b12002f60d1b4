"""Cost of one evaluation of the alanine dipeptide autoencoder CV (forward + backward).

The CV is the MD hot path: openmm-torch evaluates it every step, unbatched, on the CPU
here, and eABF needs d(xi)/d(positions).  This benchmark times the exported TorchScript
CV (the default selection: the 10 heavy atoms, alignment, 30-40-2 tanh encoder, scaling)
for each alignment method, in float64 and float32, directly in torch
(``xi = cv(pos, box); grad(E = xi.sum(), pos)``) and, for the default method, inside an
OpenMM TorchForce on the Reference platform.  One run, printed as microseconds per
evaluation and ratios to the SVD method.

    python benchmarks/cv_speed.py [--repeats N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from aesample.export import build_cv_module
from aesample.features import AlignedPositions, default_selection, select_atoms, spanning_tree_parents
from aesample.models import ModelSpec, AutoEncoder
from aesample.training import CVScaling

ROOT = Path(__file__).resolve().parents[1]


class _RawEncoder(torch.nn.Module):
    def __init__(self, idx, encoder):
        super().__init__()
        self.register_buffer("idx", idx)
        self.encoder = encoder

    def forward(self, positions, box):
        x = positions.to(torch.float64) if self.encoder[0].weight.dtype == torch.float64 else positions.to(torch.float32)
        return self.encoder(x.index_select(0, self.idx).reshape(-1)).to(positions.dtype)


def _pair(cv, pos, box):
    """(forward without grad, forward + backward) closures, warmed up."""

    def fwd():
        with torch.no_grad():
            cv(pos, box)

    def fwdbwd():
        p = pos.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(cv(p, box).sum(), p)
        return g

    for _ in range(50):  # TorchScript profiling runs
        fwd()
        fwdbwd()
    return fwd, fwdbwd


def timeit(fn, repeats: int) -> float:
    for _ in range(max(20, repeats // 20)):
        fn()
    best = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        best.append((time.perf_counter() - t0) / repeats)
    return min(best) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import mdtraj as md

    traj = md.load(str(ROOT / "aesample" / "data" / "alanine_dipeptide_vacuum.pdb"))
    top = traj.topology
    idx = select_atoms(top, default_selection(top))
    parents = spanning_tree_parents(top, idx)
    ref = traj.xyz[0, idx].astype(np.float64)
    torch.manual_seed(0)
    model = AutoEncoder(ModelSpec(n_features=3 * len(idx), hidden=(40,), n_cv=2))
    scaling = CVScaling(factor=[0.7, 1.3], shift=[0.1, -0.2])
    rng = np.random.default_rng(0)
    pos0 = traj.xyz[0].astype(np.float64) + rng.normal(scale=0.01, size=traj.xyz[0].shape)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {len(idx)} atoms -> {3 * len(idx)} features, encoder {3 * len(idx)}-40-2 tanh")
    # all variants are timed in interleaved rounds (min over rounds): on a shared machine the
    # load changes during the run, and interleaving keeps the ratios meaningful
    variants = {}
    for dtype in (torch.float64, torch.float32):
        for method in ("svd", "eigh", "power", "implicit"):
            feat = AlignedPositions(idx, ref, parents, method=method, dtype=torch.float64)
            feat.set_standardization(np.zeros(3 * len(idx)), np.full(3 * len(idx), 0.05))
            scripted = torch.jit.script(build_cv_module(feat, model, scaling, dtype=dtype))
            pos = torch.tensor(pos0, dtype=dtype)
            box = torch.zeros(3, 3, dtype=dtype)
            for frozen in (False, True):
                # openmm-torch freezes modules (torch.jit.freeze) before running them: time both
                cv = torch.jit.freeze(scripted.eval()) if frozen else scripted
                variants[(method + ("+freeze" if frozen else ""), dtype)] = _pair(cv, pos, box)
            if method == "implicit":
                # closed-form value + Jacobian (no autograd engine), for force modules
                # with setOutputsForces(True); listed in the fwd+bwd column
                jac_fn = (lambda cv=scripted, pos=pos, box=box: cv.value_and_jacobian(pos, box))
                for _ in range(50):
                    jac_fn()
                variants[("implicit-jacobian", dtype)] = (jac_fn, jac_fn)
        # floor: the same encoder on the raw selected coordinates (no centring/alignment)
        enc = torch.jit.script(_RawEncoder(torch.as_tensor(idx), build_cv_module(AlignedPositions(idx, ref), model, scaling, dtype=dtype).encoder))
        variants[("no-align", dtype)] = _pair(enc, torch.tensor(pos0, dtype=dtype), torch.zeros(3, 3, dtype=dtype))
    best = {k: [float("inf"), float("inf")] for k in variants}
    rounds = 7
    n = max(1, args.repeats // rounds)
    for _ in range(rounds):
        for key, fns in variants.items():
            for j, fn in enumerate(fns):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                best[key][j] = min(best[key][j], (time.perf_counter() - t0) / n * 1e6)
    print(f"{'method':16s} {'dtype':8s} {'fwd us':>9s} {'fwd+bwd us':>11s} {'fwd+bwd / svd':>14s}")
    for (method, dtype), (t_f, t_fb) in best.items():
        ratio = t_fb / best[("svd", dtype)][1]
        print(f"{method:16s} {str(dtype).replace('torch.', ''):8s} {t_f:9.1f} {t_fb:11.1f} {ratio:14.2f}")
    # inside OpenMM (Reference platform): energy E = sum_k xi_k through TorchForce
    try:
        import openmm as mm
        import openmm.app as app
        import openmm.unit as u
        from openmmtorch import TorchForce

        class Energy(torch.nn.Module):
            def __init__(self, cv):
                super().__init__()
                self.cv = cv

            def forward(self, positions):
                return self.cv(positions, torch.zeros(3, 3, dtype=positions.dtype)).sum()

        class EnergyForces(torch.nn.Module):
            def __init__(self, cv):
                super().__init__()
                self.cv = cv
                self.register_buffer("idx", cv.atom_indices.clone())

            def forward(self, positions):
                xi, jac = self.cv.value_and_jacobian(positions, torch.zeros(3, 3, dtype=positions.dtype))
                forces = torch.zeros_like(positions)
                forces.index_copy_(0, self.idx, -jac.sum(0))
                return xi.sum(), forces

        pdb = app.PDBFile(str(ROOT / "aesample" / "data" / "alanine_dipeptide_vacuum.pdb"))
        ff = app.ForceField("amber14-all.xml")
        for method, route in (("svd", "autograd"), ("implicit", "autograd"), ("implicit", "outputsForces+jacobian")):
            for with_cv in (False, True):
                system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
                if with_cv:
                    feat = AlignedPositions(idx, ref, parents, method=method)
                    cvm = torch.jit.script(build_cv_module(feat, model, scaling))
                    if route == "autograd":
                        system.addForce(TorchForce(torch.jit.script(Energy(cvm))))
                    else:
                        force = TorchForce(torch.jit.script(EnergyForces(cvm)))
                        force.setOutputsForces(True)
                        system.addForce(force)
                integ = mm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.002 * u.picoseconds)
                ctx = mm.Context(system, integ, mm.Platform.getPlatformByName("Reference"))
                ctx.setPositions(pdb.positions)
                integ.step(50)
                n = 1000
                t0 = time.perf_counter()
                integ.step(n)
                dt = (time.perf_counter() - t0) / n * 1e6
                if not with_cv:
                    base = dt
                else:
                    print(f"OpenMM Reference MD step: plain {base:.1f} us, with CV ({method}, {route}) {dt:.1f} us "
                          f"-> CV adds {dt - base:.1f} us/step (throughput ratio {base / dt:.2f})")
    except Exception as exc:  # pragma: no cover - benchmark only
        print(f"OpenMM TorchForce timing skipped: {exc}")


if __name__ == "__main__":
    main()
