"""``results.csv`` (and ``results.parquet`` when pyarrow is installed): one row per item × classifier.

Columns (:data:`COLUMNS`): the item, the models, the target and its threshold, the prediction
on the input and at both ends, the λ range and every λ and prediction of the sweep (JSON
lists), why each direction stopped, whether the curtail end crossed the threshold (and the
exaggerate end, from below), the true/false positive/negative call when a label is given,
the pixel change at both ends, the warnings, the seconds and the error (empty when it worked).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from ..explanation import Explanation

logger = logging.getLogger(__name__)

COLUMNS = (
    "name", "path", "classifier", "autoencoder", "target", "label", "truth", "threshold",
    "initial_pred", "pred_curtail", "pred_exaggerate", "lambda_min", "lambda_max", "lambdas", "preds",
    "stop_curtail", "stop_exaggerate", "predicted_positive", "curtail_crossed", "exaggerate_crossed",
    "result", "pixel_change_curtail", "pixel_change_exaggerate", "predictions", "warnings",
    "warning_messages", "outcome", "folder", "gif", "thumbnail", "seconds", "error", "image_sha256",
)
POSITIVE_LABELS = {"1", "true", "yes", "y", "positive", "pos"}


def truth_of(label: str, target: str) -> str:
    """'positive', 'negative' or '' (no label): a label naming another finding is negative."""
    value = (label or "").strip().lower()
    if not value:
        return ""
    if value in POSITIVE_LABELS or value == (target or "").strip().lower():
        return "positive"
    return "negative"


def _round(value, digits: int = 6):
    return None if value is None else round(float(value), digits)


def explanation_row(base: dict, explanation: Explanation, folder: str) -> dict:
    """The row of a finished explanation; ``base`` holds the item's own columns."""
    if explanation.held_back:
        return _held_back_row(base, explanation, folder)
    shift, target = explanation.shift, explanation.target
    threshold = explanation.thresholds.get(target)
    preds = [float(p) for p in shift.preds]
    # each direction's counterfactual frame (its end, unless the path turned back before it)
    low, high = (shift.zero_index if (i := shift.counterfactual_index(side)) is None else i
                 for side in ("curtail", "exaggerate"))
    positive = None if threshold is None else shift.initial_pred >= threshold
    row = dict(base, classifier=explanation.classifier_id, autoencoder=explanation.autoencoder_id, target=target,
               threshold=threshold, initial_pred=_round(shift.initial_pred), pred_curtail=_round(preds[low]),
               pred_exaggerate=_round(preds[high]), lambda_min=_round(shift.lambda_range[0], 4),
               lambda_max=_round(shift.lambda_range[1], 4),
               lambdas=json.dumps([_round(v, 4) for v in shift.lambdas]),
               preds=json.dumps([_round(v) for v in preds]),
               stop_curtail=shift.stop_reasons.get("curtail", ""),
               stop_exaggerate=shift.stop_reasons.get("exaggerate", ""), predicted_positive=positive,
               curtail_crossed=None if positive is None else bool(positive and preds[low] < threshold),
               exaggerate_crossed=None if positive is None else bool(not positive and preds[high] >= threshold),
               pixel_change_curtail=_round(shift.pixel_change[low]),
               pixel_change_exaggerate=_round(shift.pixel_change[high]),
               predictions=json.dumps({k: _round(v) for k, v in explanation.predictions.items()}),
               warnings=";".join(w["code"] for w in explanation.warnings),
               warning_messages=" | ".join(explanation.warning_messages),
               outcome=explanation.outcome_text(with_warnings=False), folder=folder,
               gif=f"{folder}/{explanation.files['gif'].name}", thumbnail=f"{folder}/{explanation.files['input'].name}",
               error="")
    row["truth"] = truth_of(row.get("label", ""), target)
    row["result"] = _result(row["truth"], positive)
    return _full(row)


def _held_back_row(base: dict, explanation: Explanation, folder: str) -> dict:
    """The row of an image the domain check held back: its predictions and warnings, no shift; the
    reason in ``error`` (``--allow-non-xray`` explains such images anyway)."""
    return _full(dict(
        base, classifier=explanation.classifier_id, autoencoder=explanation.autoencoder_id,
        target=explanation.target, threshold=explanation.thresholds.get(explanation.target),
        predictions=json.dumps({k: _round(v) for k, v in explanation.predictions.items()}),
        warnings=";".join(w["code"] for w in explanation.warnings),
        warning_messages=" | ".join(explanation.warning_messages), outcome=explanation.held_back,
        folder=folder, thumbnail=f"{folder}/{explanation.files['input'].name}",
        error="held back: not a chest X-ray (--allow-non-xray explains it anyway)"))


def relabel(row: dict, label: str) -> dict:
    """A stored row with this run's label (labels are not part of what an explanation depends on)."""
    row = dict(row, label=label)
    positive = {"true": True, "false": False}.get(str(row.get("predicted_positive")).lower(), row.get("predicted_positive"))
    row["truth"] = truth_of(label, row.get("target") or "") if not row.get("error") else ""
    row["result"] = "" if row.get("error") else _result(row["truth"], positive)
    return _full(row)


def _result(truth: str, positive: bool | None) -> str:
    if not truth or positive is None:
        return ""
    return ("true" if (truth == "positive") == positive else "false") + (" positive" if positive else " negative")


def error_row(base: dict, message: str, folder: str) -> dict:
    """The row of a task that failed: everything empty but the item and the error."""
    return _full(dict(base, folder=folder, error=message or "unknown error"))


def _full(row: dict) -> dict:
    """Every column, in order (None where there is nothing)."""
    return {column: row.get(column) for column in COLUMNS}


def write_results(rows: list[dict], out_dir: Path) -> list[Path]:
    """Write results.csv (and results.parquet when pyarrow is importable); returns the paths."""
    path = out_dir / "results.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _cell(row.get(column)) for column in COLUMNS})
    written = [path]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        logger.info("pyarrow is not installed: results.parquet not written")
        return written
    table = pa.table({column: [_cell(row.get(column)) for row in rows] for column in COLUMNS})
    pq.write_table(table, out_dir / "results.parquet")
    return written + [out_dir / "results.parquet"]


def _cell(value) -> str:
    """A value as the CSV writes it (None -> empty, booleans as true/false)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
