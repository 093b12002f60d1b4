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

__all__ = ["make_torch_force", "is_torch_force", "host_synchronisations", "resolve_cuda_graphs"]

#: aten ops that make a CUDA device wait for the host (a tensor read into Python, or a linear-algebra call that
#: checks its LAPACK-style error codes on the host, as torch documents for eigh/inv/solve/cholesky); a CUDA graph
#: cannot capture any of them.
_HOST_SYNC_OPS = ("item", "Bool", "Int", "Float", "IntImplicit", "FloatImplicit", "ScalarImplicit", "nonzero",
                  "masked_select", "linalg_eigh", "linalg_eigvalsh", "linalg_inv", "linalg_solve", "linalg_cholesky",
                  "linalg_svd", "linalg_eig")


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


def host_synchronisations(module: torch.nn.Module) -> list:
    """Names of the ops in a scripted module's forward (and what it calls) that synchronise a CUDA device with the
    host; empty: openmm-torch can capture it in a CUDA graph.

    A static reading of the TorchScript graph (``inlined_graph``), so it may list an op on a branch that never
    runs on CUDA (e.g. a host-only shortcut); it never misses one that does run.
    """
    import re

    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    graphs = [str(scripted.inlined_graph)]
    for name in ("value_and_jacobian",):  # methods the eABF force calls besides forward
        if hasattr(scripted, name):
            graphs.append(str(getattr(scripted, name).inlined_graph))
    pattern = re.compile(r"aten::(" + "|".join(_HOST_SYNC_OPS) + r")\b")
    return sorted({m for g in graphs for m in pattern.findall(g)})


def resolve_cuda_graphs(setting: str, platform_name: str, cv: torch.nn.Module) -> Tuple[bool, str]:
    """Whether the eABF force is captured in a CUDA graph, and why (for the log).

    Parameters
    ----------
    setting : {"auto", "on", "off"}
        ``eabf.cuda_graphs``. ``auto``: on the CUDA platform when the CV has no host synchronisation
        (:func:`host_synchronisations`); ``on``: always asked for (openmm-torch errors if capture fails);
        ``off``: never.
    platform_name : str
        The OpenMM platform the run uses (only CUDA captures graphs).
    cv : torch.nn.Module
        The CV module the force evaluates.
    """
    if setting == "on":
        return True, "eabf.cuda_graphs: on"
    if setting == "off":
        return False, "eabf.cuda_graphs: off"
    if setting != "auto":
        raise ValueError(f"eabf.cuda_graphs must be 'auto', 'on' or 'off', got {setting!r}")
    if platform_name != "CUDA":
        return False, f"no CUDA graphs on the {platform_name} platform"
    sync = host_synchronisations(cv)
    if sync:
        return False, f"no CUDA graphs: the CV synchronises with the host ({', '.join(sync)})"
    return True, "CUDA graphs on (the CV has no host synchronisation)"


def is_torch_force(force) -> bool:
    """True when ``force`` is an openmm-torch force (after OpenMM's cast of System.getForce results)."""
    try:
        openmmtorch = _openmmtorch()
    except ImportError:  # pragma: no cover - the pinned stack always has it
        return False
    return isinstance(force, openmmtorch.TorchForce)
