"""The outcome of an explanation in words, built from its numbers (no model, no UI).

:func:`outcome_sentence` says which finding, where each direction's counterfactual frame takes
the prediction against the threshold ("stays positive" / "becomes negative", or only touches it
when it crosses by less than :data:`CROSSING_MARGIN`), whether the path turned back before its
end, why each direction stopped, and the warnings. :func:`moving_findings` names the other
outputs that move with the target. The app, the API and ``summary.json`` show these same words.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..options import stop_words

#: How far past the threshold a frame's prediction must go to be told as a flip: the embedded
#: classifiers' predictions move by up to 0.04-0.07 near it under changes that carry no finding
#: (``python -m latentshift_research.tools.prediction_jitter``).
CROSSING_MARGIN = 0.05


def _side(value: float, threshold: float | None) -> str:
    if threshold is None:
        return ""
    return "positive" if value >= threshold else "negative"


def _number(value: float, threshold: float | None) -> str:
    """Two decimals, three when two would hide which side of the threshold the value is on."""
    if threshold is not None and abs(value - threshold) < 0.01:
        return f"{value:.3f}"
    return f"{value:.2f}"


def _direction_clause(verb: str, start: float, reached: tuple[float, float], end: tuple[float, float],
                      threshold: float | None, reason: str, limits: dict) -> str:
    """``reached`` and ``end``: (λ, prediction) of the counterfactual frame and of the end frame."""
    (reached_lambda, reached_pred), (end_lambda, end_pred) = reached, end
    verdict = _verdict(start, reached_pred, threshold)
    why = stop_words(reason, limits)
    if reached_lambda == end_lambda:
        return f"{verb} takes it to {_number(end_pred, threshold)}{verdict} (stopped because {why})"
    return (f"{verb} takes it to {_number(reached_pred, threshold)} at λ = {reached_lambda:.0f}{verdict}; "
            f"the path then turns back, to {_number(end_pred, threshold)} at λ = {end_lambda:.0f} "
            f"(stopped because {why})")


def _verdict(start: float, reached: float, threshold: float | None) -> str:
    """", so it stays positive" / ", so it becomes negative" / ", so it only touches the threshold …"."""
    if threshold is None:
        return ""
    before, after = _side(start, threshold), _side(reached, threshold)
    if before == after:
        return f", so it stays {after}"
    if abs(reached - threshold) < CROSSING_MARGIN:
        return (f", so it only touches the threshold ({_number(reached, threshold)} against {threshold:.2f}: "
                f"less than {CROSSING_MARGIN:.2f} past it, too close to call it {after})")
    return f", so it becomes {after}"


def outcome_sentence(target: str, initial_pred: float, preds: Sequence[float], lambdas: Sequence[float],
                     threshold: float | None, stop_reasons: dict[str, str], limits: dict,
                     warnings: Sequence[str] = (), counterfactuals: dict[str, int | None] | None = None) -> str:
    """One or two sentences about the result.

    preds/lambdas: the sweep, sorted by λ (λ = 0 included); limits: the search's limits
    (``ShiftResult.limits``: pred_diff, floor, ceiling, pixel_budget, max_lambda) for the reasons' words;
    counterfactuals: {"curtail": index, "exaggerate": index} of each direction's counterfactual
    frame (``ShiftResult.counterfactual_index``); default: the end frames.
    """
    threshold_text = "" if threshold is None else f" (threshold {threshold:.2f}: {_side(initial_pred, threshold)})"
    parts = [f"{target}: {_number(initial_pred, threshold)} on the input{threshold_text}"]
    lambdas = np.asarray(lambdas, dtype=float)
    chosen = {"curtail": 0, "exaggerate": len(lambdas) - 1, **{k: v for k, v in (counterfactuals or {}).items()
                                                                 if v is not None}}
    start = float(initial_pred)  # "stays" / "becomes" against what the person was told about the input
    for side, verb, end in (("curtail", "curtailing", 0), ("exaggerate", "exaggerating", len(lambdas) - 1)):
        if (lambdas[end] < 0) if side == "curtail" else (lambdas[end] > 0):
            parts.append(_direction_clause(
                verb, start, (float(lambdas[chosen[side]]), float(preds[chosen[side]])),
                (float(lambdas[end]), float(preds[end])), threshold, stop_reasons.get(side, ""), limits))
    if lambdas[0] == 0 and lambdas[-1] == 0:
        parts.append("no λ changed the prediction within the limits")
    sentence = "; ".join(parts) + "."
    if warnings:
        sentence += " Warning: " + " ".join(w.rstrip(".") + "." for w in warnings)
    return sentence


def moving_findings(all_preds: np.ndarray, names: Sequence[str], target_index: int,
                    min_change: float = 0.1) -> list[dict]:
    """Other outputs whose prediction changes by more than ``min_change`` across the sweep.

    all_preds: (F, C) predictions of every output per frame, frames sorted by λ. Returns
    [{"finding", "change" (last − first), "with_target" (moves the same way)}], largest first.
    """
    all_preds = np.asarray(all_preds, dtype=float)
    target_change = all_preds[-1, target_index] - all_preds[0, target_index]
    moving = []
    for index, name in enumerate(names):
        if not name or index == target_index:
            continue
        change = float(all_preds[-1, index] - all_preds[0, index])
        if abs(change) > min_change:
            moving.append({"finding": name, "change": round(change, 4),
                           "with_target": bool(np.sign(change) == np.sign(target_change))})
    return sorted(moving, key=lambda m: -abs(m["change"]))


def moving_findings_sentence(moving: list[dict], target: str) -> str:
    """E.g. "Along Effusion's path, Mass moves with it (+0.21) and Nodule moves against it (−0.12) …"."""
    if not moving:
        return ""
    words = [f"{m['finding']} moves {'with' if m['with_target'] else 'against'} it ({m['change']:+.2f})"
             for m in moving]
    words[-1] = words[-1][:-1] + " between the two ends)"
    return f"Along {target}'s path, " + (", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1
                                         else words[0]) + "."
