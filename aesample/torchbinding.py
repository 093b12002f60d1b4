"""The single place where aesample touches openmm-torch.

Everything else builds ``torch.jit.ScriptModule`` objects and calls :func:`make_torch_force`; swapping the
binding (e.g. for ``openmmtorch.PythonTorchForce`` or a future plugin) is then a change to this file only.

openmm-torch calling convention (verified with acellera-openmmtorch 1.10 on OpenMM 8.6.1): the module's
``forward`` receives ``positions`` (N, 3) in nm (float64 on Reference and CPU), then ``box`` (3, 3) only when
``usesPeriodicBoundaryConditions`` is set, then one 0-d float64 tensor per global parameter in the order they
were added. With ``setOutputsForces(True)`` it must return ``(energy, forces)``.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence, Tuple

import torch

__all__ = ["make_torch_force", "is_torch_force"]


class _DropSimtkNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "simtk.openmm" not in record.getMessage()


def _openmmtorch():
    """Import openmm-torch (the package's only import of it).

    openmmtorch 1.10 imports the deprecated ``simtk.openmm`` shim, which logs a deprecation
    warning on the root logger; it says nothing to users of aesample, so it is filtered.
    """
    root = logging.getLogger()
    notice = _DropSimtkNotice()
    root.addFilter(notice)
    try:
        import openmmtorch
    finally:
        root.removeFilter(notice)
    return openmmtorch


def make_torch_force(
    module: torch.jit.ScriptModule,
    global_parameters: Sequence[Tuple[str, float]] = (),
    periodic: bool = False,
    outputs_forces: bool = True,
    force_group: int = 0,
    use_cuda_graphs: bool = False,
    properties: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
):
    """Wrap a scripted module into an OpenMM force.

    Parameters
    ----------
    module : torch.jit.ScriptModule
        ``forward(positions[, box], *globals) -> energy`` or ``(energy, forces)`` when ``outputs_forces``.
    global_parameters : sequence of (name, default)
        Context parameters passed to ``forward`` as 0-d tensors, in this order.
    periodic : bool
        Pass the box to ``forward`` (OpenMM then hands wrapped positions on GPU platforms).
    outputs_forces : bool
        The module returns explicit forces (no autograd by openmm-torch).
    force_group : int
        OpenMM force group, 0..31.
    use_cuda_graphs : bool
        Sets the ``useCUDAGraphs`` property (only honoured by the CUDA platform).
    properties : dict, optional
        Extra properties for the force.
    """
    openmmtorch = _openmmtorch()

    if not isinstance(module, torch.jit.ScriptModule):
        module = torch.jit.script(module)
    if not 0 <= int(force_group) <= 31:
        raise ValueError(f"force_group must be in 0..31, got {force_group}")
    force = openmmtorch.TorchForce(module)
    force.setOutputsForces(bool(outputs_forces))
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    for pname, default in global_parameters:
        force.addGlobalParameter(str(pname), float(default))
    force.setForceGroup(int(force_group))
    props = dict(properties or {})
    if use_cuda_graphs:
        props["useCUDAGraphs"] = "true"
    for k, v in props.items():
        force.setProperty(str(k), str(v))
    if name:
        force.setName(str(name))
    return force


def is_torch_force(force) -> bool:
    """True when ``force`` is an openmm-torch force (after OpenMM's cast of System.getForce results)."""
    try:
        openmmtorch = _openmmtorch()
    except ImportError:  # pragma: no cover - the pinned stack always has it
        return False
    return isinstance(force, openmmtorch.TorchForce)
