"""aesample: autoencoder-learned collective variables driving extended-system ABF (eABF) in OpenMM.

The public names below are imported on first use (``import aesample`` itself stays light: torch and OpenMM load
only when a name that needs them is touched)::

    from aesample import ExtendedABF, EABFState, LoopDriver, export_cv, load_cv

=============================  ===============================================================================
``ExtendedABF``                eABF as an OpenMM System modifier (like ``app.Metadynamics``)
``EABFState``                  the accumulators read out of a Context (save/load, free-energy estimates)
``ColvarReporter``             OpenMM reporter writing the COLVAR file (xi, lambda, bias force)
``EABFCheckpointReporter``     OpenMM reporter writing a checkpoint together with the eABF accumulators
``export_cv``, ``load_cv``     TorchScript CV files (an encoder with its featuriser and scaling)
``parse_cv_spec``              standard CVs (``"phi,psi"``, ``"distance:i,j"``) with the same contract
``build_system``               the built-in systems and custom PDB files, parametrised for OpenMM
``Config``, ``load_config``    the validated configuration of a loop run
``LoopDriver``                 the eABF <-> retraining loop in a run directory
=============================  ===============================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ExtendedABF", "EABFState", "ColvarReporter", "EABFCheckpointReporter", "export_cv", "load_cv",
    "parse_cv_spec", "build_system", "Config", "load_config", "LoopDriver",
]

_WHERE = {
    "ExtendedABF": "eabf", "EABFState": "eabf", "ColvarReporter": "outputs", "EABFCheckpointReporter": "outputs",
    "export_cv": "export", "load_cv": "export", "parse_cv_spec": "cvs", "build_system": "systems",
    "Config": "config", "load_config": "config", "LoopDriver": "driver",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'aesample' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
