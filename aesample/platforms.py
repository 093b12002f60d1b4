"""Choice of the OpenMM platform and its properties."""

from __future__ import annotations

import openmm

__all__ = ["TINY_SYSTEM_ATOMS", "available_platforms", "select_platform"]

#: Below this many particles the Reference platform beats the CPU platform: the CPU
#: platform's threading and neighbour-list set-up cost more than they save
#: (measured for 22-atom alanine dipeptide; see benchmarks/RESULTS.md).
TINY_SYSTEM_ATOMS = 100

_GPU_ORDER = ("CUDA", "OpenCL")


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms whose plugins loaded on this machine."""
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def _gpu_usable(name: str) -> bool:
    # A registered GPU plugin can still fail at context creation (no device, driver
    # too old), so probe with a one-particle context.
    try:
        platform = openmm.Platform.getPlatformByName(name)
        system = openmm.System()
        system.addParticle(1.0)
        openmm.Context(system, openmm.VerletIntegrator(0.001), platform)
        return True
    except Exception:
        return False


def select_platform(
    name: str = "auto", n_atoms: int | None = None, precision: str = "auto"
) -> tuple[openmm.Platform, dict[str, str]]:
    """Pick an OpenMM platform and its properties.

    Parameters
    ----------
    name
        ``"auto"`` or a platform name (``Reference``, ``CPU``, ``CUDA``, ``OpenCL``).
        ``auto`` prefers CUDA, then OpenCL, then CPU; systems smaller than
        :data:`TINY_SYSTEM_ATOMS` particles run on Reference when no GPU is usable.
    n_atoms
        Number of particles of the system (for the tiny-system rule).
    precision
        ``auto`` (mixed on GPUs), ``single``, ``mixed`` or ``double``; ignored on CPU/Reference.

    Returns
    -------
    platform, properties
        Ready to pass to :class:`openmm.Context` or :class:`openmm.app.Simulation`.

    Raises
    ------
    ValueError
        If the named platform is not available here (the message lists the available ones).
    """
    names = available_platforms()
    if name == "auto":
        gpu = next((p for p in _GPU_ORDER if p in names and _gpu_usable(p)), None)
        if gpu is not None:
            chosen = gpu
        elif n_atoms is not None and n_atoms < TINY_SYSTEM_ATOMS:
            chosen = "Reference"
        else:
            chosen = "CPU" if "CPU" in names else "Reference"
    elif name in names:
        chosen = name
    else:
        raise ValueError(f"system.platform: platform {name!r} is not available here (available: {', '.join(names)})")
    properties: dict[str, str] = {}
    if chosen in _GPU_ORDER:
        properties["Precision"] = "mixed" if precision == "auto" else precision
    return openmm.Platform.getPlatformByName(chosen), properties
