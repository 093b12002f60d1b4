"""``RUN/report.md`` and ``RUN/report.html``: per-iteration metrics with links to every plot."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from .io import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from .driver import LoopDriver

__all__ = ["write_report"]

_COLUMNS = [
    ("iteration", "iteration", "{}"),
    ("regression_score", "R² ξk~ξk-1", "{:.4f}"),
    ("dihedral_score", "R² ξ~(φ,ψ)", "{:.3f}"),
    ("delta_f_phi", "ΔF φ>0−φ<0 (kJ/mol)", "{:.2f}"),
    ("delta_f_phi_half", "same, F at half time", "{:.2f}"),
    ("delta_f_phi_sem", "± walkers' SEM", "{:.2f}"),
    ("phi_transitions", "C7eq↔C7ax transitions", "{}"),
    ("c7ax_in_shared_bins", "C7ax mass in bins shared with C7eq", "{:.2f}"),
    ("free_energy_drift", "F drift (kJ/mol)", "{:.2f}"),
    ("free_energy_sem", "F walkers' SEM (kJ/mol)", "{:.2f}"),
    ("rmsd_ca_mean", "⟨RMSD CA⟩ (nm)", "{:.3f}"),
    ("folded_fraction", "folded", "{:.2f}"),
    ("ns", "ns", "{:.3f}"),
    ("ns_per_day", "ns/day", "{:.1f}"),
    ("training_seconds", "training (s)", "{:.1f}"),
    ("effective_sample_size", "ESS", "{:.0f}"),
    ("frames", "frames", "{}"),
]


def _cell(metrics: dict, key: str, fmt: str) -> str:
    value = metrics.get(key)
    return "–" if value is None else fmt.format(value)


def write_report(driver: "LoopDriver") -> Path:
    """Write the markdown and HTML reports of a run; returns the markdown path."""
    history = driver.state.history
    columns = [c for c in _COLUMNS if any(h.get(c[0]) is not None for h in history)]
    status = "converged" if driver.state.converged else ("finished" if driver.state.finished else "in progress")
    md = [f"# aesample run `{driver.run_dir.name}`", "",
          f"System **{driver.config.system.name}**, {status}; convergence threshold "
          f"{driver.config.loop.convergence_threshold}. Configuration: [run.yaml](run.yaml).", "",
          "| " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * len(columns)]
    for h in history:
        md.append("| " + " | ".join(_cell(h, key, fmt) for key, _, fmt in columns) + " |")
    body = []
    for h in history:
        k = h["iteration"]
        folder = driver.iteration_dir(k)
        pngs = sorted(p.name for p in folder.glob("*.png"))
        md += ["", f"## Iteration {k}", ""] + [f"![{p}](iter_{k:03d}/{p})" for p in pngs]
        body.append(f"<h2>Iteration {k}</h2>" + "".join(
            f'<figure><a href="iter_{k:03d}/{p}"><img src="iter_{k:03d}/{p}" width="420"></a>'
            f"<figcaption>{html.escape(p)}</figcaption></figure>" for p in pngs))
    atomic_write_text(driver.run_dir / "report.md", "\n".join(md) + "\n")
    table = "<table><tr>" + "".join(f"<th>{html.escape(c[1])}</th>" for c in columns) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{_cell(h, key, fmt)}</td>" for key, _, fmt in columns) + "</tr>" for h in history
    ) + "</table>"
    page = (
        "<!doctype html><meta charset='utf-8'><title>aesample report</title>"
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}td,th{padding:4px 8px;border:1px solid #ccc}"
        "figure{display:inline-block;margin:6px}</style>"
        f"<h1>aesample run {html.escape(driver.run_dir.name)}</h1>"
        f"<p>System <b>{html.escape(driver.config.system.name)}</b>, {status}. "
        f"<a href='run.yaml'>run.yaml</a> · <a href='summary.json'>summary.json</a> · "
        f"<a href='aesample.log'>log</a></p>{table}{''.join(body)}"
    )
    atomic_write_text(driver.run_dir / "report.html", page)
    return driver.run_dir / "report.md"
