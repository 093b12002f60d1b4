"""Output files users know: a PLUMED-style COLVAR and Colvars-style eABF grid files.

COLVAR
    ``#! FIELDS time xi_1 .. xi_d lambda_1 .. lambda_d fbias_1 .. fbias_d``, a ``# units:`` comment line, then one
    row per report; time in ps, CVs in their own units, ``fbias`` is the ABF force applied on lambda (kJ/mol per CV unit).
    :class:`ColvarReporter` is an OpenMM reporter (``describeNextReport``/``report``) around an
    :class:`~aesample.eabf.ExtendedABF`; :class:`ColvarWriter` writes rows you supply.
    :class:`EABFCheckpointReporter` saves an OpenMM checkpoint together with the eABF accumulators.

Grids (Colvars multicol format)
    ``<prefix>.grad`` (naive eABF gradient of F_kappa, per lambda bin), ``.count`` (lambda samples), ``.pmf``
    (integrated naive estimate), ``.czar.grad``, ``.czar.pmf``, ``.zcount`` (xi histogram); bins without an estimate hold ``nan`` and the file then says so in a comment
    line (:data:`UNESTIMATED_NOTE`). Header::

        # d
        # min width n periodic      (one line per dimension; periodic 0/1)

    then one row per bin: bin-centre coordinates followed by the value(s), a blank line after each block of the
    last index (2D), like Colvars. Energies in kJ/mol; the CV units go in a trailing ``#`` comment line
    before the data. Files are written atomically. :func:`read_grid` reads them back.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .io import atomic_write_bytes, atomic_write_text

__all__ = ["ColvarWriter", "ColvarReporter", "EABFCheckpointReporter", "write_grid", "read_grid", "write_eabf_grids", "read_colvar",
           "GRID_SUFFIXES"]

#: Comment line of a grid file with bins that have no value: aesample writes the fill value ``nan`` where there is
#: no estimate (never a number that could be read as a free energy); numpy.loadtxt and read_grid read it as NaN.
UNESTIMATED_NOTE = "nan: no estimate in this bin (never visited, or not connected to the visited region)"

GRID_SUFFIXES = (".grad", ".count", ".pmf", ".czar.grad", ".czar.pmf", ".zcount")


def colvar_units_line(units: Optional[str] = None) -> str:
    """The comment line under ``#! FIELDS`` that states the columns' units (``units``: the CV's, when known)."""
    cv = units or "the CV's own units (see the 'CV in ...' line of the eabf.* grid files)"
    per = units or "CV unit"
    return f"# units: time ps; xi_*, lambda_* {cv}; fbias_* kJ/mol per {per}"


class ColvarWriter:
    """Append rows to a COLVAR file with a PLUMED ``#! FIELDS`` header.

    Parameters
    ----------
    path : str or Path
    d : int
        Number of CV components.
    append : bool
        Keep an existing file (resume) instead of starting a new one; the header is written only when the
        file is new or empty.
    """

    def __init__(self, path: Union[str, Path], d: int, append: bool = False, extra_fields: Sequence[str] = (),
                 units: Optional[str] = None):
        self.path = Path(path)
        self.d = int(d)
        self.fields = (["time"] + [f"xi_{i + 1}" for i in range(d)] + [f"lambda_{i + 1}" for i in range(d)]
                       + [f"fbias_{i + 1}" for i in range(d)] + list(extra_fields))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not (append and self.path.exists() and self.path.stat().st_size > 0)
        self._fh = open(self.path, "w" if new else "a")
        if new:
            self._fh.write("#! FIELDS " + " ".join(self.fields) + "\n")
            self._fh.write(colvar_units_line(units) + "\n")
            self._fh.flush()

    def write(self, time_ps: float, xi, lam, fbias, extra: Sequence[float] = ()) -> None:
        vals = [float(time_ps)] + [float(v) for v in np.ravel(xi)] + [float(v) for v in np.ravel(lam)] + [
            float(v) for v in np.ravel(fbias)] + [float(v) for v in extra]
        if len(vals) != len(self.fields):
            raise ValueError(f"COLVAR row has {len(vals)} values, header {self.path} has {len(self.fields)} fields")
        self._fh.write(" ".join(f"{v: .10g}" for v in vals) + "\n")

    def flush(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ColvarReporter:
    """OpenMM reporter writing COLVAR rows from an :class:`~aesample.eabf.ExtendedABF` every ``reportInterval``.

    Each report triggers one evaluation of the eABF force group (it samples the current configuration exactly
    as the next step would, so sampling statistics are unchanged) and one read-out.
    """

    def __init__(self, path, eabf, reportInterval: int, append: bool = False, timeOffset: float = 0.0):
        self.eabf = eabf
        self.interval = int(reportInterval)
        self.writer = ColvarWriter(path, eabf.d, append=append)
        self.timeOffset = float(timeOffset)

    def describeNextReport(self, simulation):
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": []}

    def report(self, simulation, state=None):
        self.reportContext(simulation.context)

    def reportContext(self, context) -> None:
        xi, lam, fb = self.eabf.getInstantaneous(context)
        t = context.getTime()
        t = t.value_in_unit(t.unit) if hasattr(t, "unit") else float(t)
        self.writer.write(t + self.timeOffset, xi, lam, fb)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class EABFCheckpointReporter:
    """OpenMM reporter saving a restartable checkpoint of an eABF simulation every ``reportInterval`` steps.

    OpenMM's own ``CheckpointReporter`` saves positions, velocities and the random state, but the eABF
    accumulators live inside the TorchForce and are not part of it. This reporter writes both, each atomically:
    ``file`` (``Context.createCheckpoint()``) and ``file + ".eabf.npz"`` (:class:`~aesample.eabf.EABFState`).
    To continue: build ``ExtendedABF(..., initialState=file + ".eabf.npz")`` on a fresh System, then
    ``simulation.loadCheckpoint(file)``.

    Parameters
    ----------
    file : str or Path
        Checkpoint path; the accumulators go beside it.
    eabf : ExtendedABF
        The eABF force of the simulation.
    reportInterval : int
        Steps between checkpoints.
    """

    def __init__(self, file, eabf, reportInterval: int):
        self.file = Path(file)
        self.stateFile = self.file.with_name(self.file.name + ".eabf.npz")
        self.eabf = eabf
        self.interval = int(reportInterval)
        if self.interval <= 0:
            raise ValueError(f"reportInterval must be > 0, got {reportInterval}")

    def describeNextReport(self, simulation):
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": []}

    def report(self, simulation, state=None) -> None:
        self.eabf.getState(simulation.context).save(self.stateFile)
        atomic_write_bytes(self.file, simulation.context.createCheckpoint())


def read_colvar(path) -> Tuple[List[str], np.ndarray]:
    """Read a COLVAR: returns (fields, data (rows, fields))."""
    fields: List[str] = []
    with open(path) as fh:
        for line in fh:
            if line.startswith("#! FIELDS"):
                fields = line.split()[2:]
                break
    data = np.loadtxt(path, comments="#", ndmin=2)
    return fields, data


def write_grid(
    path, values: np.ndarray, grid_min: Sequence[float], width: Sequence[float], periodic: Sequence[bool],
    units: str = "", description: str = "",
) -> None:
    """Write a Colvars multicol grid. ``values`` has the grid shape, optionally plus one trailing axis (vector)."""
    grid_min = np.atleast_1d(np.asarray(grid_min, dtype=float))
    width = np.atleast_1d(np.asarray(width, dtype=float))
    d = len(grid_min)
    v = np.asarray(values, dtype=float)
    shape = v.shape[:d]
    if len(shape) != d:
        raise ValueError(f"write_grid {path}: values shape {v.shape} does not fit a {d}-D grid")
    ncol = 1 if v.ndim == d else v.shape[d]
    buf = io.StringIO()
    buf.write(f"# {d}\n")
    for k in range(d):
        buf.write(f"# {grid_min[k]:.14g} {width[k]:.14g} {shape[k]} {int(bool(periodic[k]))}\n")
    if description or units:
        buf.write(f"# {description} [{units}]\n".replace(" []", ""))
    if not np.all(np.isfinite(v)):
        buf.write(f"# {UNESTIMATED_NOTE}\n")
    buf.write("\n")
    centers = [grid_min[k] + width[k] * (np.arange(shape[k]) + 0.5) for k in range(d)]
    flat = v.reshape(int(np.prod(shape)), ncol)
    for n, idx in enumerate(np.ndindex(*shape)):
        coords = " ".join(f"{centers[k][idx[k]]:.10g}" for k in range(d))
        vals = " ".join("nan" if not np.isfinite(x) else f"{x:.12g}" for x in flat[n])
        buf.write(f"{coords} {vals}\n")
        if d > 1 and idx[-1] == shape[-1] - 1:
            buf.write("\n")
    atomic_write_text(path, buf.getvalue())


def read_grid(path) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a grid written by :func:`write_grid` (or Colvars). Returns (values, grid_min, width, periodic)."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    try:
        d = int(lines[0].lstrip("#").split()[0])
        hdr = [lines[1 + k].lstrip("#").split() for k in range(d)]
        gmin = np.array([float(h[0]) for h in hdr])
        width = np.array([float(h[1]) for h in hdr])
        shape = tuple(int(h[2]) for h in hdr)
        per = np.array([bool(int(h[3])) for h in hdr])
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{path}: not a Colvars grid file (bad header): {exc}") from exc
    data = np.loadtxt(path, comments="#", ndmin=2)
    if data.shape[0] != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} rows for grid {shape}, got {data.shape[0]}")
    vals = data[:, d:]
    if vals.shape[1] == 1:
        return vals.reshape(shape), gmin, width, per
    return vals.reshape(shape + (vals.shape[1],)), gmin, width, per


def write_eabf_grids(prefix, state, temperature: float, cv_units: str = "CV units") -> Dict[str, np.ndarray]:
    """Write ``<prefix>.grad .count .pmf .czar.grad .czar.pmf .zcount`` from an :class:`~aesample.eabf.EABFState`.

    Returns the arrays written (keys = suffixes without the leading dot). PMFs are NaN outside the integrable
    region; 1D and 2D grids are integrated, 3D grids get gradients and counts only.
    """
    prefix = str(prefix)
    gmin, per = state.grid_min, state.periodic
    g_czar = state.czar_gradient(temperature)
    out = {"grad": state.naive_gradient(), "count": state.count, "czar.grad": g_czar, "zcount": state.zcount}
    if state.d <= 2:
        out["pmf"] = state.naive_free_energy()
        out["czar.pmf"] = state.czar_free_energy(temperature)
    e_units = f"kJ/mol/({cv_units})"
    desc = {
        "grad": ("naive eABF gradient dF_kappa/dlambda", e_units),
        "count": ("samples per lambda bin", "count"),
        "pmf": ("naive eABF free energy F_kappa(lambda)", "kJ/mol"),
        "czar.grad": ("CZAR gradient dA/dz per bin (ln n differentiated at bin centres)", e_units),
        "czar.pmf": ("CZAR free energy A(z) (the identity taken between neighbouring bins, not czar.grad "
                     "integrated)", "kJ/mol"),
        "zcount": ("samples per xi bin", "count"),
    }
    for key, arr in out.items():
        text, u = desc[key]
        # the CZAR files live on the xi grid, at its own resolution
        width = state.z_bin_width if key.startswith("czar") or key == "zcount" else state.bin_width
        write_grid(f"{prefix}.{key}", arr, gmin, width, per, units=u, description=f"{text}; CV in {cv_units}")
    return out
