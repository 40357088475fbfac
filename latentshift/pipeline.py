"""One call from an image to everything the app and the CLI show.

``Pipeline.get(classifier_id, autoencoder_id)`` loads (and caches) a pair of models from
the manifest; ``pipeline.explain(image, options, out_dir)`` returns an
:class:`Explanation`; ``pipeline.iter_explain`` yields the same object after each stage
so a UI can show fast results first (predictions, Grad-CAM, then the GIF, then IG).

Data flows one way: app/CLI -> pipeline -> core modules (shift, attribution, imaging,
render, weights).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import render
from .attribution import GradCAM, IntegratedGradientsMap
from .errors import OptionsError
from .imaging import XrayImage, load_xray
from .shift import DIRECTIONS, HEATMAP_MODES, LatentShift, ShiftResult
from .weights import Manifest, load_model_or_default, model_status

logger = logging.getLogger(__name__)

STAGES = ("predict", "gradcam", "latent_shift", "integrated_gradients", "done")
MAP_NAMES = ("gradcam", "integrated_gradients")
#: Reconstruction error (mean |x − x̂| / 2048) above which an upload is probably not a
#: chest X-ray, used when the autoencoder's manifest entry gives no ``ood_threshold``.
DEFAULT_OOD_THRESHOLD = 0.08

FILE_NAMES = {
    "input": "input.png",
    "gif": "latentshift.gif",
    "heatmap": "heatmap.png",
    "prediction_plot": "prediction.png",
    "counterfactual": "counterfactual.png",
    "exaggerated": "exaggerated.png",
    "gradcam": "gradcam.png",
    "integrated_gradients": "integrated_gradients.png",
    "summary": "summary.json",
}


@dataclass
class ModelChoice:
    """A model the user may pick, and whether it can be used here."""

    id: str
    label: str
    available: bool
    reason: str
    is_default: bool


@dataclass
class ExplainOptions:
    """What to explain and how (see :meth:`latentshift.shift.LatentShift.attribute`).

    target: pathology name, or None for the top prediction. lambda_range: (λ_min, λ_max)
    or None for the automatic search. frame_duration_ms: GIF time per frame.
    ig_steps: Integrated-Gradients steps (None = the method's default).
    """

    target: str | None = None
    step_size: float = 10.0
    lambda_range: tuple[float, float] | None = None
    frames: int = 16
    direction: str = "both"
    heatmap: str = "int"
    frame_duration_ms: int = 100
    maps: tuple[str, ...] = MAP_NAMES
    ig_steps: int | None = None
    pred_diff: float = 0.8
    pixel_budget: float = 0.05
    max_lambda: float = 3000.0

    def validate(self) -> None:
        """Raise :class:`OptionsError` naming the first bad option."""
        if self.direction not in DIRECTIONS:
            raise OptionsError(f"direction must be one of {', '.join(DIRECTIONS)}, not {self.direction!r}")
        if self.heatmap not in HEATMAP_MODES:
            raise OptionsError(f"heatmap must be one of {', '.join(HEATMAP_MODES)}, not {self.heatmap!r}")
        if not 2 <= int(self.frames) <= 100:
            raise OptionsError(f"frames must be between 2 and 100, not {self.frames}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise OptionsError(f"step size must be a positive number, not {self.step_size}")
        if not 10 <= int(self.frame_duration_ms) <= 5000:
            raise OptionsError(f"GIF frame duration must be 10–5000 ms, not {self.frame_duration_ms}")
        if self.lambda_range is not None:
            low, high = (float(v) for v in self.lambda_range)
            if not (math.isfinite(low) and math.isfinite(high)) or not low <= 0 <= high or low == high:
                raise OptionsError(f"the λ range must have λ min ≤ 0 ≤ λ max and min < max, got ({low}, {high})")
        unknown = [m for m in self.maps if m not in MAP_NAMES]
        if unknown:
            raise OptionsError(f"unknown map(s) {', '.join(unknown)}; choose from {', '.join(MAP_NAMES)}")
        if self.ig_steps is not None and not 2 <= int(self.ig_steps) <= 512:
            raise OptionsError(f"Integrated-Gradients steps must be 2–512, not {self.ig_steps}")


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
    shift: ShiftResult | None = None
    gradcam: np.ndarray | None = None
    integrated_gradients: np.ndarray | None = None
    ig_convergence_delta: float | None = None
    reconstruction_error: float | None = None
    likely_not_cxr: bool = False
    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    stage: str = ""

    def summary(self) -> dict:
        """JSON-ready record of the run (what ``summary.json`` holds)."""
        shift = self.shift.summary() if self.shift is not None else None
        return {
            "classifier": self.classifier_id,
            "autoencoder": self.autoencoder_id,
            "target": self.target,
            "target_index": self.target_index,
            "threshold": self.thresholds.get(self.target),
            "predictions": {k: round(v, 6) for k, v in self.predictions.items()},
            "initial_pred": None if self.shift is None else self.shift.initial_pred,
            "lambdas": None if shift is None else shift["lambdas"],
            "preds": None if shift is None else shift["preds"],
            "stop_reasons": None if shift is None else shift["stop_reasons"],
            "latent_shift": shift,
            "gif_frames": None if shift is None else render.gif_frame_count(self.files["gif"]),
            "ig_convergence_delta": self.ig_convergence_delta,
            "reconstruction_error": self.reconstruction_error,
            "likely_not_cxr": self.likely_not_cxr,
            "input": {"format": self.image.source_format, "original_size": list(self.image.original_size),
                      "bit_depth": self.image.bit_depth, "notes": list(self.image.notes)},
            "options": {"step_size": self.options.step_size, "lambda_range": self.options.lambda_range,
                        "frames": self.options.frames, "direction": self.options.direction,
                        "heatmap": self.options.heatmap},
            "warnings": list(self.warnings),
            "seconds": {k: round(v, 4) for k, v in self.timings.items()},
            "files": {k: p.name for k, p in self.files.items()},
            "disclaimer": "Research and teaching demo, not for clinical use.",
        }


def list_models(kind: str, manifest: Manifest | None = None) -> list[ModelChoice]:
    """The manifest's models of ``kind`` with their availability here (no download)."""
    manifest = manifest or Manifest.load()
    choices = []
    for entry in manifest.of_kind(kind):
        status = model_status(entry)
        label = entry.id if status.available else f"{entry.id} (unavailable: {status.reason})"
        choices.append(ModelChoice(entry.id, label, status.available, status.reason, entry.embedded_default))
    return choices


class Pipeline:
    """A classifier + autoencoder pair with the methods that explain it.

    Use :meth:`get` (cached, thread-safe) rather than the constructor.
    """

    _cache: dict[tuple, "Pipeline"] = {}
    _lock = threading.Lock()

    def __init__(self, classifier_id: str | None = None, autoencoder_id: str | None = None,
                 device: str = "cpu", manifest: Manifest | None = None):
        self.manifest = manifest or Manifest.load()
        self.device = torch.device(device)
        self.warnings: list[str] = []
        self.classifier, self.classifier_entry, warning = load_model_or_default(
            self.manifest, classifier_id or self.manifest.default("classifier").id, "classifier", device=device)
        self._note(warning)
        self.autoencoder, self.autoencoder_entry, warning = load_model_or_default(
            self.manifest, autoencoder_id or self.manifest.default("autoencoder").id, "autoencoder", device=device)
        self._note(warning)
        if self.classifier_entry.resolution != self.autoencoder_entry.resolution:
            raise OptionsError(f"classifier {self.classifier_entry.id!r} works at "
                               f"{self.classifier_entry.resolution} px but autoencoder "
                               f"{self.autoencoder_entry.id!r} at {self.autoencoder_entry.resolution} px")
        self.resolution = self.classifier_entry.resolution
        self.explainer = LatentShift(self.classifier, self.autoencoder, apply_sigmoid=True)
        self.gradcam = GradCAM(self.classifier)
        self.ood_threshold = float(self.autoencoder_entry.info.get("ood_threshold", DEFAULT_OOD_THRESHOLD))
        # One computation on these models at a time: Grad-CAM hooks a classifier layer for
        # the length of its call, so a forward pass from another request (a prediction, a
        # λ search) would overwrite the hooked activations. On a 2-core server the work is
        # compute-bound anyway; requests queue here instead of competing for the cores.
        self._compute_lock = threading.RLock()

    def _note(self, warning: str | None) -> None:
        if warning:
            logger.warning("%s", warning)
            self.warnings.append(warning)

    @classmethod
    def get(cls, classifier_id: str | None = None, autoencoder_id: str | None = None,
            device: str = "cpu", manifest_path: str | None = None) -> "Pipeline":
        """The cached pipeline for this pair (built on first use).

        ``None`` means the embedded default, so ``get()`` and ``get(default ids)`` are one
        pipeline. A pair that fell back to the default keeps its own entry (and warnings).
        """
        with cls._lock:
            manifest = None
            if not (classifier_id and autoencoder_id):  # the manifest names the defaults
                manifest = Manifest.load(manifest_path)
                classifier_id = classifier_id or manifest.default("classifier").id
                autoencoder_id = autoencoder_id or manifest.default("autoencoder").id
            key = (classifier_id, autoencoder_id, str(device), manifest_path)
            if key not in cls._cache:
                cls._cache[key] = cls(classifier_id, autoencoder_id, device,
                                      manifest or Manifest.load(manifest_path))
            return cls._cache[key]

    @property
    def classifier_id(self) -> str:
        return self.classifier_entry.id

    @property
    def autoencoder_id(self) -> str:
        return self.autoencoder_entry.id

    @property
    def pathologies(self) -> list[str]:
        """Target names this classifier can explain (unused '' outputs left out)."""
        return [name for name in self.classifier.pathologies if name]

    @property
    def thresholds(self) -> dict[str, float | None]:
        values = getattr(self.classifier, "thresholds", None) or [math.nan] * len(self.classifier.pathologies)
        return {name: (None if math.isnan(t) else float(t))
                for name, t in zip(self.classifier.pathologies, values) if name}

    def load_image(self, source) -> XrayImage:
        """Read an upload (path or bytes) at this pipeline's resolution; raises ImageInputError."""
        return load_xray(source, resolution=self.resolution)

    def predict(self, image: XrayImage) -> dict[str, float]:
        """Pathology name -> probability (σ of the classifier's logit) for the image."""
        with self._compute_lock, torch.inference_mode():
            logits = self.classifier(image.tensor(self.device))[0]
        probabilities = torch.sigmoid(logits).cpu().tolist()
        return {name: float(p) for name, p in zip(self.classifier.pathologies, probabilities) if name}

    def gradcam_map(self, x: torch.Tensor, target: int) -> np.ndarray:
        """Grad-CAM (H, W) map of output ``target`` for x (1, 1, H, W), one call at a time."""
        with self._compute_lock:
            return self.gradcam.attribute(x, target)

    def target_index(self, target: str | None, predictions: dict[str, float]) -> tuple[str, int]:
        """(name, output index) of the requested target, or of the top prediction."""
        names = list(self.classifier.pathologies)
        if target is None or target == "":
            target = max(predictions, key=predictions.get)
        matches = [i for i, name in enumerate(names) if name and name.lower() == str(target).lower()]
        if not matches:
            raise OptionsError(f"classifier {self.classifier_id!r} has no output {target!r}; "
                               f"choose one of: {', '.join(self.pathologies)}")
        return names[matches[0]], matches[0]

    def explain(self, image: XrayImage, options: ExplainOptions | None = None,
                out_dir: str | Path = "out") -> Explanation:
        """Run every stage and return the finished :class:`Explanation`."""
        explanation = None
        for explanation in self.iter_explain(image, options, out_dir):
            pass
        return explanation

    def iter_explain(self, image: XrayImage, options: ExplainOptions | None = None,
                     out_dir: str | Path = "out") -> Iterator[Explanation]:
        """Yield the same :class:`Explanation` after each stage of :data:`STAGES`.

        Files are written to ``out_dir`` under the names of :data:`FILE_NAMES`.
        """
        options = options or ExplainOptions()
        options.validate()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        explanation = Explanation(image=image, classifier_id=self.classifier_id,
                                  autoencoder_id=self.autoencoder_id, options=options,
                                  warnings=list(self.warnings) + [f"input: {note}" for note in image.notes])
        x = image.tensor(self.device)

        with _timed(explanation, "predict"):
            explanation.predictions = self.predict(image)
            explanation.thresholds = self.thresholds
            explanation.target, explanation.target_index = self.target_index(options.target, explanation.predictions)
            explanation.files["input"] = render.write_png(out_dir / FILE_NAMES["input"], image.pixels)
        yield _at(explanation, "predict")

        if "gradcam" in options.maps:
            with _timed(explanation, "gradcam"):
                explanation.gradcam = self.gradcam_map(x, explanation.target_index)
                explanation.files["gradcam"] = render.write_overlay(
                    out_dir / FILE_NAMES["gradcam"], image.pixels, explanation.gradcam, title="Grad-CAM")
            yield _at(explanation, "gradcam")

        with _timed(explanation, "latent_shift"), self._compute_lock:
            shift = self.explainer.attribute(
                x, explanation.target_index, lambda_range=options.lambda_range, step_size=options.step_size,
                frames=int(options.frames), direction=options.direction, pred_diff=options.pred_diff,
                pixel_budget=options.pixel_budget, max_lambda=options.max_lambda, heatmap=options.heatmap)
            explanation.shift = shift
            self._check_reconstruction(explanation)
            self._note_degenerate_range(explanation)
        with _timed(explanation, "render"):
            self._render_shift(explanation, out_dir)
        yield _at(explanation, "latent_shift")

        if "integrated_gradients" in options.maps:
            with _timed(explanation, "integrated_gradients"), self._compute_lock:
                method = (IntegratedGradientsMap(self.classifier) if options.ig_steps is None
                          else IntegratedGradientsMap(self.classifier, n_steps=int(options.ig_steps)))
                result = method.attribute(x, explanation.target_index)
                explanation.integrated_gradients = result.map
                explanation.ig_convergence_delta = float(result.convergence_delta)
                explanation.files["integrated_gradients"] = render.write_overlay(
                    out_dir / FILE_NAMES["integrated_gradients"], image.pixels, result.map,
                    title="Integrated Gradients", absolute=True)
            yield _at(explanation, "integrated_gradients")

        explanation.timings["total"] = sum(v for k, v in explanation.timings.items() if k != "total")
        path = out_dir / FILE_NAMES["summary"]
        explanation.files["summary"] = path
        path.write_text(json.dumps(explanation.summary(), indent=2, ensure_ascii=False), encoding="utf-8")
        yield _at(explanation, "done")

    def _check_reconstruction(self, explanation: Explanation) -> None:
        shift = explanation.shift
        error = float((shift.reconstruction[0, 0] - torch.from_numpy(explanation.image.pixels)).abs().mean()) / 2048
        explanation.reconstruction_error = error
        explanation.likely_not_cxr = error > self.ood_threshold
        if explanation.likely_not_cxr:
            explanation.warnings.append(
                f"the autoencoder reconstructs this image poorly (error {error:.3f} > {self.ood_threshold:.3f}): "
                "it is probably not a frontal chest X-ray, so the explanation is unreliable")

    @staticmethod
    def _note_degenerate_range(explanation: Explanation) -> None:
        shift = explanation.shift
        if shift.lambda_range == (0.0, 0.0):
            explanation.warnings.append(
                "the search found no λ that changes the prediction within the limits "
                f"({shift.stop_reasons}); try a smaller step size or a manual λ range")

    def _render_shift(self, explanation: Explanation, out_dir: Path) -> None:
        shift, image = explanation.shift, explanation.image
        threshold = explanation.thresholds.get(explanation.target)
        explanation.files["gif"] = render.write_gif(
            out_dir / FILE_NAMES["gif"], shift.frames, shift.preds, shift.lambdas,
            input_image=image.pixels, target_name=explanation.target, threshold=threshold,
            frame_duration_ms=int(explanation.options.frame_duration_ms))
        explanation.files["heatmap"] = render.write_overlay(
            out_dir / FILE_NAMES["heatmap"], image.pixels, shift.heatmap, title="Latent Shift")
        explanation.files["prediction_plot"] = render.write_prediction_plot(
            out_dir / FILE_NAMES["prediction_plot"], shift.lambdas, shift.preds,
            target_name=explanation.target, threshold=threshold, initial_pred=shift.initial_pred)
        explanation.files["counterfactual"] = render.write_png(
            out_dir / FILE_NAMES["counterfactual"], shift.frames[0, 0])
        explanation.files["exaggerated"] = render.write_png(
            out_dir / FILE_NAMES["exaggerated"], shift.frames[-1, 0])


def _at(explanation: Explanation, stage: str) -> Explanation:
    explanation.stage = stage
    return explanation


class _timed:
    """Context manager adding the block's seconds to ``explanation.timings[name]``."""

    def __init__(self, explanation: Explanation, name: str):
        self.explanation, self.name = explanation, name

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.started
        self.explanation.timings[self.name] = self.explanation.timings.get(self.name, 0.0) + elapsed
        return False
