"""``RUN/report.md`` and ``RUN/report.html``.

The first screen answers what a user asks first: did the loop converge (and if not, which condition failed and what
to change), the free energy along the last CV with its error, ΔF between named basins where they were sampled, the
sampled fraction and effective sample size per iteration, warnings, and where the files are. Below it: every
metric per iteration and every plot at its own size.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Optional

from .io import atomic_write_text
from .runlayout import LoopState, RunLayout
from .verdict import run_verdict, sampling_warnings


__all__ = ["write_report", "first_screen"]

_COLUMNS = [
    ("iteration", "iteration", "{}"),
    ("regression_score", "R² ξk~ξk-1", "{:.4f}"),
    ("dihedral_score", "R² ξ~(φ,ψ)", "{:.3f}"),
    ("delta_f_phi", "ΔF φ>0−φ<0 (kJ/mol)", "{:.2f}"),
    ("delta_f_phi_half", "same, F at half time", "{:.2f}"),
    ("delta_f_phi_sem", "± walkers' SEM", "{:.2f}"),
    ("basin_delta_f_first_half", "basins' ΔF, 1st half of samples", "{:.2f}"),
    ("basin_delta_f_second_half", "2nd half", "{:.2f}"),
    ("phi_transitions", "C7eq↔C7ax transitions", "{}"),
    ("c7ax_in_shared_bins", "C7ax mass in bins shared with C7eq", "{:.2f}"),
    ("hidden_barrier_fraction", "weight in bins mixing states", "{:.2f}"),
    ("hidden_barrier_sample_fraction", "frames in bins mixing states", "{:.2f}"),
    ("free_energy_drift", "F drift (kJ/mol)", "{:.2f}"),
    ("free_energy_error", "F error (kJ/mol)", "{:.2f}"),
    ("free_energy_sem", "F walkers' SEM (kJ/mol)", "{:.2f}"),
    ("rmsd_ca_mean", "⟨RMSD CA⟩ (nm)", "{:.3f}"),
    ("folded_fraction", "folded", "{:.2f}"),
    ("ns", "ns", "{:.3f}"),
    ("ns_per_day", "ns/day", "{:.1f}"),
    ("training_epochs", "epochs", "{}"),
    ("training_seconds", "training (s)", "{:.1f}"),
    ("effective_sample_size", "ESS", "{:.1f}"),
    ("frames", "frames", "{}"),
]

#: Plots shown first, in this order; the rest follow alphabetically.
_PLOT_ORDER = ["free_energy.png", "phi_psi_fes.png", "phi_psi_cv.png", "cv_histogram.png", "scores.png", "loss.png"]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell(metrics: dict, key: str, fmt: str) -> str:
    value = metrics.get(key)
    return "–" if value is None else fmt.format(value)


def _pm(value, error, unit="kJ/mol") -> str:
    if not _finite(value):
        return "–"
    return f"{value:.2f} ± {error:.2f} {unit}" if _finite(error) else f"{value:.2f} {unit} (no error bar)"


def _xi(k: int) -> str:
    return "ξ" + str(k).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


def _free_energy_error(m: dict) -> tuple[Optional[float], str]:
    """(error bar of iteration ``m``'s free energy, what it is): the larger of the run's own error (block bootstrap,
    basin visits) and the walkers' standard error, as for the basins' Delta F -- the run's own error does not see
    the walkers' different bias histories; (None, "") without either."""
    own, sem = m.get("free_energy_error"), m.get("free_energy_sem")
    if _finite(sem) and not (_finite(own) and own >= sem):
        return sem, "walkers' standard error"
    return (own, "error") if _finite(own) else (None, "")


def _free_energy_line(m: dict) -> str:
    """The free energy along the CV that drove iteration ``m``'s eABF, with the best error bar there is."""
    k = m["iteration"]
    along = (f"{_xi(k - 1)}, the CV that drove iteration {k}'s eABF" if k > 0
             else f"{_xi(0)}, from the unbiased MD of iteration 0")
    error, what = _free_energy_error(m)
    if error is not None:
        err = f"{what} ± {error:.2f} kJ/mol"
    elif _finite(m.get("free_energy_drift")):
        err = (f"no error bar (one walker); it still moved by {m['free_energy_drift']:.2f} kJ/mol RMS over the "
               "second half of the run, a lower bound on its error")
    else:
        err = "no error bar"
    where = f"iter_{k:03d}/free_energy.png" + (f", grid iter_{k:03d}/md_0/eabf.czar.pmf" if k > 0 else "")
    return f"Free energy along {along} ({where}): {err}."


def _basin_line(m: dict) -> Optional[str]:
    """ΔF between named basins, or why there is none; None when the system has no named basins."""
    b = m.get("basin_delta_f")
    if isinstance(b, dict):
        definition = b.get("definition", "basins")
        if b.get("status", "ok") != "ok" or not _finite(b.get("value")):
            reason = b.get("reason") or "a basin was not visited"
            return f"ΔF {definition}: not sampled ({reason})."
        tr = f", {b['transitions']} transitions" if b.get("transitions") is not None else ""
        source = f" (error: {b['error_from']})" if b.get("error_from") and _finite(b.get("error")) else ""
        return f"ΔF {definition}: {_pm(b['value'], b.get('error'))}{source}{tr}."
    if "delta_f_phi" not in m and "phi_transitions" not in m:
        return None
    definition = "C7ax (φ > 0) − C7eq/C5 (φ < 0)"
    transitions = m.get("phi_transitions")
    if not _finite(m.get("delta_f_phi")):
        return f"ΔF {definition}: not sampled (no frame with φ > 0 carries weight)."
    tr = "" if transitions is None else f", {transitions} C7eq↔C7ax transitions"
    caveat = " — too few transitions to trust it" if transitions is not None and transitions < 5 else ""
    return f"ΔF {definition}: {_pm(m['delta_f_phi'], m.get('delta_f_phi_sem'))}{tr}{caveat}."


def _per_iteration(history: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["iteration", "R² CV vs previous", "F drift (kJ/mol)", "F error (kJ/mol)", "ΔF basins (kJ/mol)",
            "sampled fraction", "ESS / frames", "warnings"]
    rows = []
    for m in history:
        b = m.get("basin_delta_f")
        if isinstance(b, dict):
            df = (_pm(b.get("value"), b.get("error"), "") if b.get("status", "ok") == "ok" else "not sampled").strip()
        else:
            df = _pm(m.get("delta_f_phi"), m.get("delta_f_phi_sem"), "").strip()
        err, _ = _free_energy_error(m)
        unweighted = m.get("unweighted_fraction")
        ess = m.get("effective_sample_size")
        rows.append([
            str(m["iteration"]), _cell(m, "regression_score", "{:.4f}"), _cell(m, "free_energy_drift", "{:.2f}"),
            f"{err:.2f}" if _finite(err) else "–", df or "–",
            f"{1 - unweighted:.2f}" if _finite(unweighted) else "–",
            f"{ess:.1f} / {m.get('frames')}" if _finite(ess) else "–",
            f"{len(sampling_warnings(m))}, see above" if sampling_warnings(m) else "",
        ])
    return head, rows


def first_screen(run: RunLayout, state: Optional[LoopState] = None) -> dict[str, Any]:
    """The answers of the report's first screen, as plain strings (shared by the markdown and HTML pages).

    ``state``: the run's progress record (default: ``state.json`` as on disk).
    """
    state = run.read_state() if state is None else state
    history = state.history
    verdict = run_verdict(state, run.config.loop)
    last = history[-1] if history else None
    lines = []
    if last is not None:
        lines.append(_free_energy_line(last))
        basin = _basin_line(last)
        if basin:
            lines.append(basin)
        if _finite(last.get("hidden_barrier_fraction")):
            sampled = last.get("hidden_barrier_sample_fraction")
            frames = f" ({100 * sampled:.0f}% of the frames)" if _finite(sampled) else ""
            lines.append(f"{100 * last['hidden_barrier_fraction']:.0f}% of the weight{frames} lies in CV bins "
                         "that mix metastable states.")
    advice = []
    if verdict["status"] == "not converged":
        advice.append(f"aesample resume {run.run_dir} --max-iterations {run.config.loop.max_iterations + 2}")
    elif verdict["status"] == "in progress" and not state.finished:
        from . import runlock

        lock = runlock.read_lock(run.run_dir)
        if lock is None or lock.alive is False:
            advice.append(f"aesample resume {run.run_dir}")
    warnings = [(m["iteration"], w) for m in history for w in sampling_warnings(m)]
    k = last["iteration"] if last is not None else None
    files = [("run.yaml", "effective configuration"), ("summary.json", "every metric, machine-readable"),
             ("aesample.log", "log")]
    if k is not None:
        it = f"iter_{k:03d}"
        fmt = run.config.output.trajectory_format
        files += [(f"{it}/trajectory.{fmt}", f"iteration {k}'s frames, its runs joined; one such file per iteration"),
                  (f"{it}/topology.pdb", "its topology: mdtraj.load(trajectory, top=topology.pdb)"),
                  (f"{it}/cv.pt", f"the last CV {_xi(k)} (TorchScript; cv.json beside it)"),
                  (f"{it}/weights.npy", "Boltzmann weights of the frames, in trajectory order")]
        if k > 0:
            files.append((f"{it}/md_0/COLVAR", "time in ps, ξ, λ, ABF force; eabf.czar.pmf beside it: the free-energy grid"))
    return {"verdict": verdict, "lines": lines, "advice": advice, "warnings": warnings, "files": files,
            "last": last}


def _plots(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.glob("*.png"))
    return [n for n in _PLOT_ORDER if n in names] + [n for n in names if n not in _PLOT_ORDER]


def write_report(run: RunLayout, state: Optional[LoopState] = None) -> Path:
    """Write the markdown and HTML reports of a run; returns the markdown path.

    ``state``: the run's progress record (default: ``state.json`` as on disk).
    """
    state = run.read_state() if state is None else state
    history = state.history
    screen = first_screen(run, state)
    verdict = screen["verdict"]
    columns = [c for c in _COLUMNS if any(h.get(c[0]) is not None for h in history)]
    head, rows = _per_iteration(history)
    name = run.run_dir.name
    system = run.config.system.name
    last = screen["last"]
    fe_png = None
    if last is not None and (run.iteration_dir(last["iteration"]) / "free_energy.png").is_file():
        fe_png = f"iter_{last['iteration']:03d}/free_energy.png"

    # ------------------------------------------------------------------ markdown
    md = [f"# aesample run `{name}` ({system})", "",
          f"**{verdict['headline']}**", ""]
    if verdict["blockers"]:
        md += ["Not converged because:", ""] + [f"- {b}" for b in verdict["blockers"]] + [""]
    if screen["advice"]:
        md += ["To go on: " + "; ".join(f"`{a}`" for a in screen["advice"]), ""]
    md += [f"- {line}" for line in screen["lines"]] + [""]
    if screen["warnings"]:
        md += ["**Warnings**", ""] + [f"- iteration {k}: {w}" for k, w in screen["warnings"]] + [""]
    if fe_png:
        md += [f"![free energy]({fe_png})", ""]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", f"Files (in {run.run_dir}):", ""] + [f"- [{f}]({f}): {what}" for f, what in screen["files"]]
    md += ["", "## All metrics", "",
           "| " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * len(columns)]
    for h in history:
        md.append("| " + " | ".join(_cell(h, key, fmt) for key, _, fmt in columns) + " |")
    for h in history:
        k = h["iteration"]
        md += ["", f"## Iteration {k}", ""] + [f"![{p}](iter_{k:03d}/{p})" for p in _plots(run.iteration_dir(k))]
    atomic_write_text(run.run_dir / "report.md", "\n".join(md) + "\n")

    # ------------------------------------------------------------------ HTML
    e = html.escape
    css = {"converged": "ok", "not converged": "bad"}.get(verdict["status"], "wait")
    parts = [
        "<!doctype html><meta charset='utf-8'><title>aesample report: " + e(name) + "</title>",
        "<style>body{font-family:sans-serif;max-width:1280px;margin:auto;padding:0 12px;line-height:1.35}"
        "h1{font-size:1.4em;margin:.5em 0}td,th{padding:3px 8px;border:1px solid #ccc;text-align:right}"
        "th{background:#f3f3f3;font-size:.9em}td{white-space:nowrap}table{border-collapse:collapse;margin:6px 0}"
        ".verdict{padding:8px 12px;border-radius:4px;font-size:1.15em;font-weight:bold}"
        ".ok{background:#dff3df;border:2px solid #3a3}.bad{background:#fde2e2;border:2px solid #c33}"
        ".wait{background:#fff4d6;border:2px solid #d90}.warn{background:#fff4d6;border-left:4px solid #d90;"
        "padding:4px 10px;margin:6px 0}.top{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}"
        ".top>div{flex:1 1 520px}.top img{max-width:100%}"
        "figure{display:inline-block;margin:6px;vertical-align:top}figure img{max-width:100%;height:auto}"
        "code{background:#f3f3f3;padding:1px 4px}ul{margin:4px 0}</style>",
        f"<h1>aesample run {e(name)} &mdash; {e(system)}</h1>",
        f"<div class='verdict {css}' id='verdict'>{e(verdict['headline'])}</div>",
    ]
    if verdict["blockers"]:
        parts.append("<p style='margin:6px 0 2px'>Not converged because:</p><ul>"
                     + "".join(f"<li>{e(b)}</li>" for b in verdict["blockers"]) + "</ul>")
    if screen["advice"]:
        parts.append("<p>To go on: " + "; ".join(f"<code>{e(a)}</code>" for a in screen["advice"]) + "</p>")
    parts += [f"<div class='warn'>WARNING, iteration {k}: {e(w)}</div>" for k, w in screen["warnings"]]
    left = "<ul>" + "".join(f"<li>{e(line)}</li>" for line in screen["lines"]) + "</ul>"
    left += ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    left += ("<p><b>Files</b> (in " + e(str(run.run_dir)) + "):</p><ul>"
             + "".join(f"<li><a href='{e(f)}'>{e(f)}</a>: {e(what)}</li>" for f, what in screen["files"])
             + "</ul>")
    right = f"<a href='{fe_png}'><img src='{fe_png}' alt='free energy'></a>" if fe_png else ""
    parts.append(f"<div class='top'><div>{left}</div><div>{right}</div></div>")
    parts.append("<h2>All metrics</h2><table><tr>" + "".join(f"<th>{e(c[1])}</th>" for c in columns) + "</tr>"
                 + "".join("<tr>" + "".join(f"<td>{_cell(h, key, fmt)}</td>" for key, _, fmt in columns) + "</tr>"
                           for h in history) + "</table>")
    for h in history:
        k = h["iteration"]
        parts.append(f"<h2>Iteration {k}</h2>" + "".join(
            f"<figure><a href='iter_{k:03d}/{p}'><img src='iter_{k:03d}/{p}'></a>"
            f"<figcaption>{e(p)}</figcaption></figure>" for p in _plots(run.iteration_dir(k))))
    atomic_write_text(run.run_dir / "report.html", "".join(parts))
    return run.run_dir / "report.md"
