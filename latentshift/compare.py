"""One image, one finding, several classifiers on one shared autoencoder (the compare view).

The authors' own page explains one X-ray with several classifiers side by side to show what
each has learned. :func:`compare` runs the Latent Shift of every chosen classifier that has
the finding, with the same options (so the GIFs have the same frame count), and writes one
GIF per classifier, all prediction-vs-λ curves in one plot and ``compare.json``. Each
classifier gets one line saying where its search stopped and whether it crossed its threshold.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LatentShiftError, NotAChestXrayError, OptionsError
from .explanation import DISCLAIMER
from .io import render
from .io.describe import outcome_sentence
from .options import ExplainOptions
from .pipeline import Pipeline, list_models
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class ClassifierRun:
    """One classifier's Latent Shift of the shared finding."""

    classifier_id: str
    target: str
    threshold: float | None
    initial_pred: float
    lambdas: list[float]
    preds: list[float]
    stop_reasons: dict[str, str]
    line: str
    gif: Path
    warnings: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {"classifier": self.classifier_id, "target": self.target, "threshold": self.threshold,
                "initial_pred": self.initial_pred, "lambdas": self.lambdas, "preds": self.preds,
                "stop_reasons": self.stop_reasons, "line": self.line, "gif": self.gif.name,
                "warnings": self.warnings}


@dataclass
class Comparison:
    """What :func:`compare` returns: one run per classifier, the plot and the summary file."""

    target: str
    autoencoder_id: str
    runs: list[ClassifierRun]
    plot: Path
    summary_path: Path
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"target": self.target, "autoencoder": self.autoencoder_id,
                "classifiers": [run.summary() for run in self.runs], "skipped": self.skipped,
                "plot": self.plot.name, "disclaimer": DISCLAIMER}


def classifiers_with_finding(target: str, manifest_path: str | None = None,
                             settings: Settings | None = None) -> list[str]:
    """Ids of the classifiers available here that have an output named ``target`` (``settings``: as for
    :meth:`Pipeline.store`)."""
    store = Pipeline.store(manifest_path=manifest_path, settings=settings)
    wanted = target.lower()
    return [choice.id for choice in list_models("classifier", store.manifest, store.settings)
            if choice.available and wanted in (label.lower() for label in store.manifest.get(choice.id).labels)]


def compare(image_source, target: str, classifier_ids: list[str] | None = None, *,
            autoencoder_id: str | None = None, options: ExplainOptions | None = None,
            out_dir: str | Path = "out", manifest_path: str | None = None, device: str = "cpu",
            settings: Settings | None = None) -> Comparison:
    """Explain finding ``target`` of one image with each classifier (default: every one that has it).

    Classifiers without the finding, or that cannot be loaded here, are skipped with the reason.
    Files: ``compare-<classifier>.gif`` per classifier, ``compare.png``, ``compare.json`` in ``out_dir``.
    ``settings``: as for :meth:`Pipeline.store`.
    """
    options = (options or ExplainOptions()).replace(target=target, maps=())
    ids = list(classifier_ids) if classifier_ids else classifiers_with_finding(target, manifest_path, settings)
    if not ids:
        raise OptionsError(f"no classifier available here has the finding {target!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, skipped, autoencoder = [], {}, None
    for classifier_id in dict.fromkeys(ids):
        try:
            pipeline = Pipeline.get(classifier_id, autoencoder_id, device=device, manifest_path=manifest_path,
                                    settings=settings)
        except LatentShiftError as exc:  # e.g. a classifier of another resolution than the autoencoder
            skipped[classifier_id] = str(exc)
            continue
        reason = _skip_reason(pipeline, classifier_id, target)
        if reason:
            skipped[classifier_id] = reason
            continue
        autoencoder = pipeline.autoencoder_id
        runs.append(_run_one(pipeline, image_source, options, out_dir))
    if not runs:
        raise OptionsError("none of the classifiers could explain it: "
                           + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return _write_comparison(target, autoencoder, runs, skipped, out_dir)


def _skip_reason(pipeline: Pipeline, classifier_id: str, target: str) -> str:
    if pipeline.classifier_id != classifier_id:
        return f"unavailable here (the embedded default {pipeline.classifier_id!r} would stand in)"
    if target.lower() not in (name.lower() for name in pipeline.pathologies):
        return f"has no output {target!r}"
    return ""


def _run_one(pipeline: Pipeline, image_source, options: ExplainOptions, out_dir: Path) -> ClassifierRun:
    image = pipeline.load_image(image_source)
    explanation = pipeline.explain(image, options, out_dir / f"run-{pipeline.classifier_id}")
    if explanation.held_back:
        raise NotAChestXrayError(explanation.held_back)
    shift = explanation.shift
    gif = out_dir / f"compare-{pipeline.classifier_id}.gif"
    explanation.files["gif"].replace(gif)
    threshold = explanation.thresholds.get(explanation.target)
    shown = [w["message"] for w in explanation.warnings if w["code"] in ("out_of_domain", "not_a_chest_xray")]
    line = f"{pipeline.classifier_id} — " + outcome_sentence(
        explanation.target, shift.initial_pred, shift.preds, shift.lambdas, threshold, shift.stop_reasons,
        shift.limits, shown, {side: shift.counterfactual_index(side) for side in ("curtail", "exaggerate")})
    return ClassifierRun(pipeline.classifier_id, explanation.target, threshold, float(shift.initial_pred),
                         [float(v) for v in shift.lambdas], [float(v) for v in shift.preds],
                         dict(shift.stop_reasons), line, gif, list(explanation.warnings))


def _write_comparison(target: str, autoencoder_id: str, runs: list[ClassifierRun], skipped: dict[str, str],
                      out_dir: Path) -> Comparison:
    plot = render.write_curves_plot(
        out_dir / "compare.png", [(run.classifier_id, run.lambdas, run.preds) for run in runs],
        title=f"{target}: every classifier along its own latent shift (autoencoder {autoencoder_id})",
        thresholds=[run.threshold for run in runs])
    comparison = Comparison(target, autoencoder_id, runs, plot, out_dir / "compare.json", skipped)
    comparison.summary_path.write_text(json.dumps(comparison.summary(), indent=2, ensure_ascii=False),
                                       encoding="utf-8")
    logger.info("compared %d classifiers on %s (%d skipped)", len(runs), target, len(skipped))
    return comparison
