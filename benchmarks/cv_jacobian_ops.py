"""The learned CV's closed-form Jacobian before and after the first-layer rewrite, interleaved (issue 16, item 3).

    OMP_NUM_THREADS=1 python benchmarks/cv_jacobian_ops.py chignolin alanine-dipeptide alanine-dipeptide-water

"Before" is the full-matrix first layer shipped until 2026-12-07: the implicit alignment's (3n, 3n) map M built by
``AlignedPositions._implicit_map`` and multiplied by the first layer's weights. "After" is
``ExportedCV.value_and_jacobian`` as shipped (W1 M without forming M). Both CVs are the loop's own architecture
with the same random weights (``learned_cv_speed.loop_cv``). Printed per system: the largest difference of value
and Jacobian, aten ops per call (all / top level), microseconds per call (this thread's CPU time, medians of
interleaved repeats) of the CV and of the whole eABF force module (the loop's eABF settings), and the ratio
after / before per repeat (the number that load on the machine does not move).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learned_cv_speed as speed  # noqa: E402  (this directory)

from aesample import export  # noqa: E402
from aesample.systems import build_system  # noqa: E402


class FullMatrixCV(export.ExportedCV):
    """The exported CV with the first layer's Jacobian through the explicit (3n, 3n) alignment map."""

    def _first_layer_jacobian(self, xs: Tensor) -> Tensor:
        return torch.matmul(self.weights[0], self.features._implicit_map(xs.unsqueeze(0))[0])


def _interleaved(fns: dict, repeats: int = 7, calls: int = 1000) -> dict:
    for f in fns.values():
        for _ in range(100):  # the profiling executor's warm-up
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            c0 = time.thread_time()
            for _ in range(calls):
                f()
            times[k].append((time.thread_time() - c0) / calls * 1e6)
    return times


def compare(name: str, workdir: Path) -> None:
    ms = build_system(name)
    box = torch.zeros(3, 3, dtype=torch.float64) if ms.box is None else torch.as_tensor(np.asarray(ms.box))
    cvs = {}
    shipped = export.ExportedCV
    for label, cls in (("before", FullMatrixCV), ("after", shipped)):
        export.ExportedCV = cls  # export_cv builds the module class by this name
        try:
            cvs[label] = export.load_cv(speed.loop_cv(ms, workdir / f"{name}_{label}.pt"))[0]
        finally:
            export.ExportedCV = shipped
    x = torch.tensor(ms.positions, dtype=torch.float64)
    x = x + 0.01 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    jac = {k: torch.jit.script(speed._Jac(cv)) for k, cv in cvs.items()}
    (v0, j0), (v1, j1) = jac["before"](x, box), jac["after"](x, box)
    print(f"\n{name}: |value diff| {(v0 - v1).abs().max().item():.1e}, |Jacobian diff| "
          f"{(j0 - j1).abs().max().item():.1e} (largest entry {j0.abs().max().item():.1f})")
    parts = {f"CV {k}": (lambda j=j, x=x: j(x, box)) for k, j in jac.items()}
    one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for k, cv in cvs.items():
        _, e = speed._eabf(ms, cv)
        xe = torch.tensor(e.extendPositions(ms.positions, None if ms.box is None else np.asarray(ms.box)),
                          dtype=torch.float64)
        args = (xe, box, one, zero, zero) if e.usesPeriodic else (xe, one, zero, zero)
        parts[f"eABF {k}"] = (lambda m=e.module, a=args: m(*a))
    times = _interleaved(parts)
    for what in ("CV", "eABF"):
        b, a = times[f"{what} before"], times[f"{what} after"]
        ops_b, ops_a = speed._count_ops(parts[f"{what} before"]), speed._count_ops(parts[f"{what} after"])
        print(f"  {what:4s}: ops {ops_b[0]}/{ops_b[1]} -> {ops_a[0]}/{ops_a[1]}; us per call "
              f"{statistics.median(b):.0f} -> {statistics.median(a):.0f}; after/before per repeat "
              f"{', '.join(f'{y / x:.2f}' for x, y in zip(b, a))}")


def main(argv=None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or ["chignolin", "alanine-dipeptide"]
    torch.set_num_threads(1)
    with TemporaryDirectory() as tmp:
        for name in names:
            compare(name, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
