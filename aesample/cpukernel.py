"""The compiled CPU eABF step: one op instead of a few hundred TorchScript ones.

On CPUs the eABF force along a learned CV is dominated by TorchScript's per-op dispatch (~380 tiny aten ops per
step, ~10^4 flops; see ``benchmarks/RESULTS.md``, issue 16). ``aesample/csrc/eabf_step_cpu.cpp`` does the same
arithmetic in plain loops, as the TorchScript op ``torch.ops.aesample.eabf_step``, compiled on first use with the
machine's C++ compiler (``torch.utils.cpp_extension``; cached per torch version, a few seconds). The eABF module
calls it in place of its TorchScript step where :func:`supports` says the CV and force allow it; the read-out and
the smooth bias's refresh stay in TorchScript. Where it cannot be built, the TorchScript step is used.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path
from typing import Tuple

import torch

__all__ = ["load", "available", "supports"]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "eabf_step_cpu.cpp"
_lock = threading.Lock()
_state: dict = {}


def load() -> Tuple[bool, str]:
    """Build (or load the cached build of) the op once per process: (available, why not)."""
    with _lock:
        if "ok" not in _state:
            _state["ok"], _state["why"] = _build()
        return _state["ok"], _state["why"]


def _build() -> Tuple[bool, str]:
    if hasattr(torch.ops.aesample, "eabf_step"):
        return True, ""
    import logging

    # importing cpp_extension logs a warning about CUDA_HOME on machines without CUDA: not this build's concern
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension

        if shutil.which("ninja") is None:  # the pip package's binary, when the venv's bin is not on PATH
            try:
                import ninja

                os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
            except ImportError:
                pass
        # one build per torch version: the extension cache keys on the source and flags only, and a build against
        # another torch's headers would not load (or worse)
        tag = re.sub(r"\W", "_", torch.__version__)
        cpp_extension.load(name=f"aesample_eabf_step_cpu_{tag}", sources=[str(_SOURCE)], is_python_module=False,
                           extra_cflags=["-O3"], verbose=False)
        return True, ""
    except Exception as exc:  # no compiler, no ninja, headers missing: the TorchScript step is used
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    finally:
        log.setLevel(level)


def available() -> bool:
    """Whether the op can be used in this process (builds it on the first call)."""
    return load()[0]


def supports(cv: torch.nn.Module, periodic, box, graph_safe: bool, jacobian_route: bool) -> Tuple[bool, str]:
    """Whether the compiled step computes exactly what the TorchScript step would for this CV and force.

    It covers the loop's learned CVs (``ExportedCV``: implicit alignment with the eigh rotation, tanh, float64)
    along non-periodic components, in a System without a box, outside CUDA graphs.
    """
    if graph_safe:
        return False, "the force is built for a CUDA graph"
    if not jacobian_route:
        return False, "the CV has no closed-form Jacobian route"
    if any(bool(p) for p in periodic):
        return False, "periodic CV components"
    if box is not None:
        return False, "a periodic box"
    try:
        f = cv.features
        ok = (bool(cv.fused) and bool(cv.linear_features) and int(cv.activation_code) == 0
              and int(f.method_code) == 3 and not bool(f.power_solver) and not bool(f.standardize)
              and (not bool(f.unwrap) or int(f.box_mode) != 1)
              and f.reference.dtype == torch.float64 and all(w.dtype == torch.float64 for w in cv.weights))
    except (AttributeError, RuntimeError):
        return False, "not an exported learned CV"
    if not ok:
        return False, "a CV other than the implicit-alignment, eigh-rotation, tanh, float64 learned CV"
    if len(periodic) > 3:
        return False, "more than 3 CV components"
    return True, ""

