"""The result of one explanation: :class:`Explanation`, its warnings and its ``summary.json``.

Filled stage by stage by :mod:`latentshift.pipeline`; read by the app, the CLI and the API.
Warnings are ``{"code": ..., "message": ...}`` with the codes of :data:`WARNING_CODES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .core.shift import ShiftResult
from .io import render
from .io.describe import moving_findings, moving_findings_sentence, outcome_sentence
from .io.imaging import XrayImage
from .options import ExplainOptions

#: Warning codes and what they mean.
WARNING_CODES = {
    "not_a_chest_xray": "the upload does not look like a frontal chest X-ray",
    "out_of_domain": "the image is from a population the classifier was not trained on",
    "model_fallback": "a requested model is unavailable here; the embedded default stands in",
    "unverified_weights": "weights were loaded without hash verification, as plain tensors only "
                          "(by opt-in, or a safe format from an HTTPS source)",
    "gradcam_skipped": "Grad-CAM was skipped: the classifier has no layer it can use",
    "input_note": "how the upload was read (converted, cropped, first frame, ...)",
    "degenerate_range": "the search found no λ that changes the prediction",
}
DISCLAIMER = "Research and teaching demo, not for clinical use."


def warning(code: str, message: str) -> dict[str, str]:
    """A warning record; ``code`` must be one of :data:`WARNING_CODES`."""
    if code not in WARNING_CODES:
        raise ValueError(f"unknown warning code {code!r}")
    return {"code": code, "message": message}


@dataclass
class Explanation:
    """Everything shown for one image; filled stage by stage (``stage`` says how far)."""

    image: XrayImage
    classifier_id: str
    autoencoder_id: str
    options: ExplainOptions
    predictions: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    target: str = ""
    target_index: int = -1
    pathologies: list[str] = field(default_factory=list)
    shift: ShiftResult | None = None
    gradcam: np.ndarray | None = None
    integrated_gradients: np.ndarray | None = None
    ig_convergence_delta: float | None = None
    ig_steps_used: int | None = None
    reconstruction_error: float | None = None
    likely_not_cxr: bool = False
    domain: dict | None = None
    #: Why the image was not explained (the domain check's verdict), or None when it was.
    held_back: str | None = None
    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[dict[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    stage: str = ""

    def warn(self, code: str, message: str) -> None:
        if all(w["message"] != message for w in self.warnings):
            self.warnings.append(warning(code, message))

    @property
    def warning_messages(self) -> list[str]:
        return [w["message"] for w in self.warnings]

    @property
    def other_findings(self) -> dict[str, list[float]]:
        """Every other output's prediction per frame along the target's λ path."""
        if self.shift is None or self.shift.all_preds is None:
            return {}
        return {name: [round(float(v), 6) for v in self.shift.all_preds[:, i]]
                for i, name in enumerate(self.pathologies) if name and i != self.target_index}

    @property
    def moving_findings(self) -> list[dict]:
        """Other findings that move by more than 0.1 between the ends of the sweep."""
        if self.shift is None or self.shift.all_preds is None:
            return []
        return moving_findings(self.shift.all_preds, self.pathologies, self.target_index)

    @property
    def outcome(self) -> str:
        """The result in words, with the warnings (see :func:`latentshift.io.describe.outcome_sentence`)."""
        return self.outcome_text(with_warnings=True)

    def outcome_text(self, with_warnings: bool = True) -> str:
        """The outcome; ``with_warnings=False`` for a page that shows the warnings on their own."""
        shown = [w["message"] for w in self.warnings if with_warnings and w["code"] in (
            "not_a_chest_xray", "out_of_domain", "model_fallback", "degenerate_range")]
        if self.held_back:
            return self.held_back
        if self.shift is None:
            p = self.predictions.get(self.target)
            return "" if p is None else f"{self.target}: {p:.2f} on the input."
        shift = self.shift
        sentence = outcome_sentence(self.target, shift.initial_pred, shift.preds, shift.lambdas,
                                    self.thresholds.get(self.target), shift.stop_reasons, shift.limits, shown,
                                    {side: shift.counterfactual_index(side) for side in ("curtail", "exaggerate")})
        moving = moving_findings_sentence(self.moving_findings, self.target)
        return f"{sentence} {moving}".strip()

    def summary(self) -> dict:
        """JSON-ready record of the run (what ``summary.json`` holds)."""
        shift = self.shift.summary() if self.shift is not None else None
        return {
            "classifier": self.classifier_id, "autoencoder": self.autoencoder_id,
            "target": self.target, "target_index": self.target_index,
            "threshold": self.thresholds.get(self.target),
            "predictions": {k: round(v, 6) for k, v in self.predictions.items()},
            "outcome": self.outcome,
            "initial_pred": None if self.shift is None else self.shift.initial_pred,
            "lambdas": None if shift is None else shift["lambdas"],
            "preds": None if shift is None else shift["preds"],
            "stop_reasons": None if shift is None else shift["stop_reasons"],
            "other_findings": self.other_findings,
            "moving_findings": self.moving_findings,
            "latent_shift": shift,
            "gif_frames": None if shift is None else render.gif_frame_count(self.files["gif"]),
            "ig_convergence_delta": self.ig_convergence_delta,
            "ig_steps_used": self.ig_steps_used,
            "reconstruction_error": self.reconstruction_error,
            "likely_not_cxr": self.likely_not_cxr,
            "domain": self.domain,
            "held_back": self.held_back,
            "input": {"format": self.image.source_format, "original_size": list(self.image.original_size),
                      "bit_depth": self.image.bit_depth, "notes": list(self.image.notes)},
            "options": self.options.to_dict(),
            "warnings": list(self.warnings),
            "seconds": {k: round(v, 4) for k, v in self.timings.items()},
            "files": {k: p.name for k, p in self.files.items()},
            "disclaimer": DISCLAIMER,
        }
