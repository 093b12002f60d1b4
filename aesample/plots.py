"""PNG plots of one loop iteration (matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path  # noqa: E402

__all__ = [
    "plot_free_energy",
    "plot_cv_histogram",
    "plot_scores",
    "plot_dihedral_scatter",
    "plot_dihedral_free_energy",
]


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _readable_cv(text: str) -> str:
    """``xi_3`` -> mathtext xi with subscript 3 (so that 'xi_1 1' does not read as a CV called 'xi_1 1')."""
    import re

    return re.sub(r"\bxi_(\d+)\b", r"$\\xi_{\1}$", text)


def plot_free_energy(centers: Sequence[np.ndarray], free_energy: np.ndarray, path: Path, title: str,
                     cv_label: str = "CV") -> Path:
    """1D curve or 2D map of a free energy (kJ/mol) on a grid of bin centres (unvisited bins left blank)."""
    label = _readable_cv(cv_label)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if len(centers) == 1:
        ax.plot(centers[0], free_energy, "-o", ms=2)
        ax.set_xlabel(f"{label} (CV units)")
        ax.set_ylabel("free energy (kJ/mol)")
    else:
        shown = np.ma.masked_invalid(free_energy[:, :, 0] if free_energy.ndim == 3 else free_energy)
        mesh = ax.pcolormesh(centers[0], centers[1], shown.T, shading="auto", cmap="viridis")
        fig.colorbar(mesh, ax=ax, label="free energy (kJ/mol)")
        ax.set_xlabel(f"{label}, component 1")
        ax.set_ylabel(f"{label}, component 2")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(6))  # no overlapping tick labels
    title = _readable_cv(title)
    if label != cv_label:  # say what the symbol is
        title += f"\n({label}: the CV learned at iteration {cv_label.split('_')[-1]}"
        title += "; blank: not visited)" if len(centers) > 1 else ")"
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_cv_histogram(cv: np.ndarray, path: Path, title: str, ranges: Optional[Sequence] = None) -> Path:
    """Histogram of sampled CV values (flat = well-biased sampling)."""
    cv = np.asarray(cv)
    cv = cv[:, None] if cv.ndim == 1 else cv
    fig, ax = plt.subplots(figsize=(5, 4))
    if cv.shape[1] == 1:
        ax.hist(cv[:, 0], bins=50, range=None if ranges is None else ranges[0], color="tab:blue")
        ax.set_xlabel("CV 1")
        ax.set_ylabel("frames")
    else:
        h = ax.hist2d(cv[:, 0], cv[:, 1], bins=40, range=ranges[:2] if ranges is not None else None, cmin=1)
        fig.colorbar(h[3], ax=ax, label="frames")
        ax.set_xlabel("CV 1")
        ax.set_ylabel("CV 2")
    ax.set_title(title)
    return _save(fig, path)


def plot_scores(iterations: Sequence[int], scores: Sequence[float], threshold: float, path: Path,
                extra: Optional[dict[str, Sequence[float]]] = None) -> Path:
    """Regression score (R^2 of xi_k on xi_{k-1}) versus iteration, with the convergence threshold."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(iterations, scores, "-o", label="regression score xi_k ~ xi_(k-1)")
    for label, values in (extra or {}).items():
        its = [i for i, v in zip(iterations, values) if v is not None]
        ax.plot(its, [v for v in values if v is not None], "--s", label=label)
    ax.axhline(threshold, color="grey", ls=":", label=f"threshold {threshold}")
    ax.set_xlabel("iteration")
    # whole iterations only (a single point would otherwise get ticks like 0.975, 1.000, 1.025)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
    if len(iterations):
        ax.set_xlim(min(iterations) - 0.5, max(iterations) + 0.5)
    ax.set_ylabel("R²")
    ax.set_ylim(min(0.0, *(s for s in scores if s is not None)) if scores else 0.0, 1.02)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_dihedral_scatter(angles: np.ndarray, cv: np.ndarray, path: Path, title: str) -> Path:
    """(phi, psi) scatter coloured by each CV component (alanine dipeptide)."""
    cv = np.asarray(cv)
    cv = cv[:, None] if cv.ndim == 1 else cv
    d = cv.shape[1]
    fig, axes = plt.subplots(1, d, figsize=(4.8 * d, 4), squeeze=False, constrained_layout=True)
    for k in range(d):
        ax = axes[0, k]
        sc = ax.scatter(angles[:, 0], angles[:, 1], c=cv[:, k], s=3, cmap="coolwarm")
        fig.colorbar(sc, ax=ax, label=f"CV {k + 1}")
        ax.set_xlim(-np.pi, np.pi)
        ax.set_ylim(-np.pi, np.pi)
        ax.set_xlabel("phi (rad)")
        ax.set_ylabel("psi (rad)")
    fig.suptitle(title)
    return _save(fig, path)


def plot_dihedral_free_energy(free_energy: np.ndarray, edges: Sequence[np.ndarray], path: Path, title: str) -> Path:
    """Reweighted (phi, psi) free-energy map (kJ/mol)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    mesh = ax.pcolormesh(edges[0], edges[1], np.ma.masked_invalid(free_energy).T, cmap="viridis", vmax=40)
    fig.colorbar(mesh, ax=ax, label="free energy (kJ/mol)")
    ax.set_xlabel("phi (rad)")
    ax.set_ylabel("psi (rad)")
    ax.set_title(title)
    return _save(fig, path)
