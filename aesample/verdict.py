"""What a run tells its user: converged or not (and what held it back), warnings about an iteration's sample.

Used by ``aesample status``, the report and ``summary.json``. Every metric is optional: an iteration's
``metrics.json`` may carry ``convergence_blockers`` (the criterion's own reasons); without it the reasons are
derived here from the configured thresholds.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from .slowsplit import split_flagged

__all__ = ["convergence_blockers", "sampling_warnings", "run_verdict", "ESS_MIN", "ESS_MIN_FRACTION"]

#: An iteration whose Kish effective sample size is below this many frames, or below this fraction of its frames,
#: trained on a handful of frames: its scores say nothing.
ESS_MIN = 10.0
ESS_MIN_FRACTION = 0.05
#: Share of frames with weight 0 (no free-energy estimate in their CV bin) above which the iteration is flagged.
UNWEIGHTED_MAX = 0.2
HIDDEN_BARRIER_MAX = 0.2


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def convergence_blockers(metrics: dict[str, Any], loop) -> list[str]:
    """Why iteration ``metrics`` does not meet the convergence criterion, each with what to change ([] = met).

    ``metrics["convergence_blockers"]`` is used when present; otherwise the reasons are derived from
    ``loop.min_iterations``, ``loop.convergence_threshold``, ``loop.free_energy_tolerance`` (drift, block-bootstrap
    error and, with walkers, the walkers' standard error of the free energy; the named basins' Delta F error bar,
    with walkers at least their standard error),
    ``loop.hidden_barrier_tolerance``, ``loop.min_split_crossings`` (:mod:`aesample.slowsplit`), ``loop.min_ess``
    and ``loop.max_support_growth``; where the system names
    basins, their Delta F must also be sampled (``basin_delta_f`` status "ok"). The driver's criterion is "this
    list is empty" (:func:`aesample.loopstages.is_converged`).
    """
    given = metrics.get("convergence_blockers")
    if given is not None:
        return [str(b) for b in given]
    out = []
    k = metrics.get("iteration", 0)
    if k == 0:
        return ["only iteration 0 (unbiased MD) so far: convergence is judged from iteration "
                f"loop.min_iterations ({loop.min_iterations}) on"]
    if k < loop.min_iterations:
        out.append(f"iteration {k} is below loop.min_iterations ({loop.min_iterations}): "
                   "the loop needs more iterations")
    score = metrics.get("regression_score")
    if not _finite(score):
        out.append("no R² of the CV on the previous one (iteration 0 has no previous CV)")
    elif score < loop.convergence_threshold:
        out.append(f"R² of the CV on the previous one {score:.4f} < loop.convergence_threshold "
                   f"{loop.convergence_threshold}: the CV still changes; run more iterations")
    tol = loop.free_energy_tolerance
    basin = metrics.get("basin_delta_f") or {}  # named basins' Delta F (systems that define basins)
    if tol is not None:
        drift = metrics.get("free_energy_drift")
        if not _finite(drift):
            if k > 0:
                out.append("no free-energy drift measured (the eABF run is too short for two halves)")
        elif drift > tol:
            out.append(f"free-energy drift {drift:.2f} kJ/mol > loop.free_energy_tolerance {tol} kJ/mol: the free "
                       "energy still moves; lengthen loop.eabf_per_iteration")
        if getattr(loop, "walkers", 1) >= 2 and k > 0:
            sem = metrics.get("free_energy_sem")
            if not _finite(sem):
                out.append("no walkers' standard error of the free energy")
            elif sem > tol:
                out.append(f"walkers' standard error of the free energy {sem:.2f} kJ/mol > "
                           f"loop.free_energy_tolerance {tol} kJ/mol: add walkers (loop.walkers) or lengthen "
                           "loop.eabf_per_iteration")
        # The named basins' Delta F (systems that define basins, e.g. dipeptides): the number users report. Its
        # error (with walkers: at least their scatter) can exceed the tolerance while the free energy's RMS error
        # along xi is within it.
        df_err = basin.get("error") if basin.get("status", "ok") == "ok" else None
        df_sem = metrics.get("delta_f_phi_sem")  # metrics written before the basins' error bar existed
        if k > 0 and _finite(df_err):
            if df_err > tol:
                source = basin.get("error_from") or "own error"
                out.append(f"error of Delta F({basin.get('definition', 'basins')}) {df_err:.2f} kJ/mol ({source}) > "
                           f"loop.free_energy_tolerance {tol} kJ/mol: add walkers (loop.walkers) or lengthen "
                           "loop.eabf_per_iteration")
        elif getattr(loop, "walkers", 1) >= 2 and k > 0 and _finite(df_sem) and df_sem > tol:
            what = f"Delta F({basin['definition']})" if basin.get("definition") else "the basins' Delta F"
            out.append(f"walkers' standard error of {what} {df_sem:.2f} kJ/mol > loop.free_energy_tolerance {tol} "
                       "kJ/mol: add walkers (loop.walkers) or lengthen loop.eabf_per_iteration")
    if k > 0 and basin and basin.get("status") not in (None, "ok"):
        reason = basin.get("reason") or "too few crossings"
        out.append(f"Delta F({basin.get('definition', 'basins')}) not sampled ({reason}): the runs have not crossed "
                   "between the basins often enough; lengthen loop.eabf_per_iteration or add walkers")
    if tol is not None and k > 0 and _finite(metrics.get("free_energy_error")) and metrics["free_energy_error"] > tol:
        out.append(f"error of the free energy (block bootstrap and basin visits) {metrics['free_energy_error']:.2f} "
                   f"kJ/mol > loop.free_energy_tolerance {tol} kJ/mol: lengthen loop.eabf_per_iteration or add walkers")
    min_ess, ess = getattr(loop, "min_ess", None), metrics.get("effective_sample_size")
    if min_ess is not None and k > 0 and _finite(ess) and ess < min_ess:
        out.append(f"effective sample size {ess:.1f} frames < loop.min_ess {min_ess:g}: the weights rest on a few "
                   "frames, so the CV and its R² are learned from them; lengthen loop.eabf_per_iteration or add "
                   "walkers")
    growth, max_growth = metrics.get("support_growth"), getattr(loop, "max_support_growth", None)
    if max_growth is not None and k > 0 and _finite(growth) and growth > max_growth:
        out.append(f"sampling still growing: {100 * growth:.1f} % of the weight lies in CV bins first reached in "
                   f"the second half of the runs (> loop.max_support_growth {max_growth}); lengthen "
                   "loop.eabf_per_iteration")
    hb_tol = getattr(loop, "hidden_barrier_tolerance", None)
    for key, what in (("hidden_barrier_fraction", "of the weight"), ("hidden_barrier_sample_fraction",
                                                                     "of the frames")):
        hb = metrics.get(key)
        if hb_tol is not None and _finite(hb) and hb > hb_tol:
            out.append(f"hidden barrier: {100 * hb:.1f} % {what} sit in CV bins whose frames form separate, slowly "
                       f"exchanging sets (> loop.hidden_barrier_tolerance {hb_tol}): the CV does not resolve a "
                       "slow coordinate there, so the free energy across it rests on a few crossings; run more "
                       "iterations so the CV learns it (it sees those frames only with training.sampling_weight > 0)")
    min_cross = getattr(loop, "min_split_crossings", None)
    split = metrics.get("slow_split") or {}
    per_run = split.get("crossings_per_run")
    if (min_cross is not None and k > 0 and _finite(per_run)
            and split_flagged(split.get("shares") or [], per_run, split.get("min_share", 0.05), min_cross)):
        shares = sorted(split["shares"])
        out.append(f"slow split: the walkers crossed {per_run:.1f} times each on average (< "
                   f"loop.min_split_crossings {min_cross}) between two sets of CV bins holding {100 * shares[0]:.0f} "
                   f"% and {100 * shares[1]:.0f} % of the frames: a barrier between neighbouring bins that the bias "
                   "along the CV does not lower, or too little sampling; the free energy between them rests on those "
                   "passages. Lengthen loop.eabf_per_iteration or run more iterations so the CV learns it")
    return out


def sampling_warnings(metrics: dict[str, Any]) -> list[str]:
    """Warnings about iteration ``metrics``'s weighted sample (a collapsed ESS, unweighted frames)."""
    out = []
    ess, frames = metrics.get("effective_sample_size"), metrics.get("frames")
    if _finite(ess) and frames:
        if ess < ESS_MIN or ess < ESS_MIN_FRACTION * frames:
            r2 = metrics.get("regression_score")
            out.append(f"weights collapsed: effective sample size {ess:.1f} of {frames} frames; the autoencoder "
                       f"was trained on about {max(1, round(ess))} frame(s)"
                       + (f", so its R² {r2:.6f} says nothing" if _finite(r2) else "")
                       + "; lengthen loop.eabf_per_iteration or add walkers")
    unweighted = metrics.get("unweighted_fraction")
    if _finite(unweighted) and unweighted > UNWEIGHTED_MAX:
        out.append(f"{100 * unweighted:.0f}% of the frames have weight 0 (CV bins without a free-energy "
                   "estimate): the eABF run is too short for its grid")
    for key, what in (("hidden_barrier_fraction", "weight"), ("hidden_barrier_sample_fraction", "frames")):
        hidden = metrics.get(key)
        if _finite(hidden) and hidden > HIDDEN_BARRIER_MAX:
            out.append(f"{100 * hidden:.0f}% of the {what} lie in CV bins that mix metastable states: the CV "
                       "hides a barrier there")
    return out


def run_verdict(state, loop) -> dict[str, Any]:
    """``{"status", "headline", "blockers"}`` of a run: converged / not converged / in progress, and why."""
    history = state.history
    last = history[-1] if history else None
    blockers = convergence_blockers(last, loop) if last is not None else []
    done = last["iteration"] if last is not None else None
    if state.converged:
        return {"status": "converged", "headline": f"converged at iteration {done}", "blockers": []}
    if state.finished:
        return {"status": "not converged",
                "headline": f"NOT converged: stopped at loop.max_iterations ({loop.max_iterations}) after iteration "
                            f"{done}",
                "blockers": blockers}
    return {"status": "in progress",
            "headline": "not converged yet" + (f" (last iteration done: {done})" if done is not None else ""),
            "blockers": blockers}


def last_value(history: list[dict], key: str) -> Optional[Any]:
    """The value of ``key`` in the last iteration that has it."""
    for h in reversed(history):
        if h.get(key) is not None:
            return h[key]
    return None
