"""One call from an image to everything the app and the CLI show (orchestration only).

``Pipeline.get(classifier_id, autoencoder_id)`` pairs two models of the model store (each
model is loaded once, whatever it is paired with); ``Pipeline.from_models(classifier,
autoencoder)`` wraps any two ``nn.Module`` that follow :mod:`latentshift.models.conventions`.
``pipeline.explain(image, options, out_dir)`` returns an :class:`Explanation`;
``pipeline.iter_explain`` yields the same object after each stage so a UI can show fast
results first (predictions, Grad-CAM, then the GIF, then IG).

The model stores take their settings (:class:`~latentshift.settings.Settings`: manifests, store
bound, opt-in to unverified weights, CPU memory layout) from the ``settings`` argument, else from
:meth:`Pipeline.configure` (the app's entry point), else from the environment: this class is the
public API whose documented behaviour (README, "Python API") follows the ``LATENTSHIFT_*`` variables.

Data flows one way: app/CLI -> pipeline -> core, io, models, weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .core.attribution import GradCAM, IntegratedGradientsMap
from .core.guard import DomainGuard
from .core.shift import LatentShift, ShiftOptions
from .errors import OptionsError
from .explanation import Explanation, warning
from .io import render
from .io.imaging import XrayImage, load_xray
from .models.placement import place_model
from .options import ExplainOptions
from .settings import Settings
from .weights import Manifest, ModelEntry, model_status
from .weights.choice import ClassifierChoice, choose_classifier, findings
from .weights.preference import ServingDefault
from .weights.store import LoadedModel, ModelStore

logger = logging.getLogger(__name__)

STAGES = ("predict", "gradcam", "latent_shift", "integrated_gradients", "done")
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
    "other_findings_plot": "other_findings.png",
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


def list_models(kind: str, manifest: Manifest | None = None, settings: Settings | None = None) -> list[ModelChoice]:
    """The manifest's models of ``kind`` with their availability here (no download); ``settings``
    as for :meth:`Pipeline.store` (its manifests, when ``manifest`` is not given, and its opt-in)."""
    settings = Pipeline.current_settings(settings)
    manifest = manifest or Manifest.for_user(settings=settings)
    choices = []
    for entry in manifest.of_kind(kind):
        status = model_status(entry, allow_unverified=settings.allow_unverified)
        label = entry.id if status.available else f"{entry.id} (unavailable: {status.reason})"
        choices.append(ModelChoice(entry.id, label, status.available, status.reason, entry.embedded_default))
    return choices


class Pipeline:
    """A classifier + autoencoder pair with the methods that explain it.

    Use :meth:`get` (models from the manifest, through the model store) or
    :meth:`from_models` (your own modules) rather than the constructor.
    """

    _stores: dict[tuple, ModelStore] = {}
    _servings: dict[int, ServingDefault] = {}
    _stores_lock = threading.Lock()
    _configured: Settings | None = None

    def __init__(self, classifier: LoadedModel, autoencoder: LoadedModel, device: str | torch.device = "cpu",
                 guard: DomainGuard | None = None):
        self.device = torch.device(device)
        self.classifier_model, self.autoencoder_model = classifier, autoencoder
        self.classifier, self.classifier_entry = classifier.model, classifier.entry
        self.autoencoder, self.autoencoder_entry = autoencoder.model, autoencoder.entry
        self.warnings = [warning(m.warning_code, m.warning) for m in (classifier, autoencoder) if m.warning]
        if self.classifier_entry.resolution != self.autoencoder_entry.resolution:
            raise OptionsError(f"classifier {self.classifier_entry.id!r} works at "
                               f"{self.classifier_entry.resolution} px but autoencoder "
                               f"{self.autoencoder_entry.id!r} at {self.autoencoder_entry.resolution} px")
        self.resolution = self.classifier_entry.resolution
        self.explainer = LatentShift(self.classifier, self.autoencoder, apply_sigmoid=True)
        #: Grad-CAM of this classifier, or None with the reason in ``gradcam_missing``.
        self.gradcam, self.gradcam_missing = _gradcam_for(self.classifier)
        self.ood_threshold = float(self.autoencoder_entry.info.get("ood_threshold", DEFAULT_OOD_THRESHOLD))
        self.guard = guard
        #: The population the classifier was trained on ("pediatric", "adult" or None: unknown).
        self.population = self.classifier_entry.info.get("population")

    @classmethod
    def configure(cls, settings: Settings | None) -> None:
        """The settings of this process's model stores, read once by an entry point (the app's);
        None: the environment's, read whenever a store is asked for without settings."""
        cls._configured = settings

    @classmethod
    def current_settings(cls, settings: Settings | None = None) -> Settings:
        """``settings``, else those :meth:`configure` set, else the environment's (``Settings.from_environ``)."""
        if settings is not None:
            return settings
        return cls._configured if cls._configured is not None else Settings.from_environ()

    @classmethod
    def store(cls, device: str | torch.device = "cpu", manifest_path: str | os.PathLike | None = None,
              settings: Settings | None = None) -> ModelStore:
        """The process's model store for this manifest, settings and device (created on first use)."""
        settings = cls.current_settings(settings)
        key = (str(manifest_path or ""), settings, str(torch.device(device)))
        with cls._stores_lock:
            if key not in cls._stores:
                cls._stores[key] = ModelStore(Manifest.for_user(manifest_path, settings), device, settings=settings)
            return cls._stores[key]

    @classmethod
    def serving(cls, device: str | torch.device = "cpu", manifest_path: str | os.PathLike | None = None,
                settings: Settings | None = None) -> ServingDefault:
        """The pair the app answers with for this store (:mod:`latentshift.weights.preference`);
        created, not started, on first use: call its ``start()`` (the app does at start-up)."""
        store = cls.store(device, manifest_path, settings)
        with cls._stores_lock:
            if id(store) not in cls._servings:
                cls._servings[id(store)] = ServingDefault(store)
            return cls._servings[id(store)]

    @classmethod
    def get(cls, classifier_id: str | None = None, autoencoder_id: str | None = None,
            device: str = "cpu", manifest_path: str | None = None, settings: Settings | None = None) -> "Pipeline":
        """The pipeline of this pair; ``None`` means the embedded default.

        A model that cannot be loaded here falls back to the embedded default of its kind,
        and the pipeline's ``warnings`` say so. ``settings``: see :meth:`current_settings`.
        """
        return cls.from_store(cls.store(device, manifest_path, settings), classifier_id, autoencoder_id)

    @classmethod
    def from_store(cls, store: ModelStore, classifier_id: str | None = None,
                   autoencoder_id: str | None = None) -> "Pipeline":
        """The pipeline of a pair of ``store``'s models (None: its embedded defaults)."""
        return cls(store.get(classifier_id, "classifier"), store.get(autoencoder_id, "autoencoder"), store.device,
                   cls._guard_of(store))

    @classmethod
    def domain_guard(cls, device: str = "cpu", manifest_path: str | None = None,
                     settings: Settings | None = None) -> DomainGuard | None:
        """The manifest's embedded domain guard through the model store; None if it lists none."""
        return cls._guard_of(cls.store(device, manifest_path, settings))

    @staticmethod
    def _guard_of(store: ModelStore) -> DomainGuard | None:
        if not any(entry.kind == "guard" and entry.embedded_default for entry in store.manifest):
            return None
        loaded = store.get(None, "guard")
        return DomainGuard.from_model(loaded.model, loaded.entry.info)

    @classmethod
    def for_finding(cls, finding: str, image: XrayImage, autoencoder_id: str | None = None, current: str | None = None,
                    device: str = "cpu", manifest_path: str | None = None,
                    settings: Settings | None = None) -> tuple["Pipeline", ClassifierChoice]:
        """The pipeline whose classifier answers for ``finding`` on ``image``
        (:func:`latentshift.weights.choice.choose_classifier`, with the population the domain check
        gives), and the choice with its reason. ``current``: the classifier answering now."""
        store = cls.store(device, manifest_path, settings)
        guard = cls._guard_of(store)
        checked = guard.check(image) if guard is not None else None
        population = checked.population if checked is not None and checked.is_chest_xray else None
        choice = choose_classifier(store.manifest, finding, population, current, store.allow_unverified)
        if choice is None:
            raise OptionsError(f"no classifier available here knows {finding!r}; choose one of: "
                               + ", ".join(findings(store.manifest, store.allow_unverified)))
        return cls.from_store(store, choice.classifier_id, autoencoder_id), choice

    def check_domain(self, image: XrayImage) -> tuple[dict | None, list[dict]]:
        """(the guard's summary or None, warnings) for an upload, against this classifier's population."""
        if self.guard is None or getattr(self.guard.model, "resolution", self.resolution) != self.resolution:
            return None, []  # no guard, or one that judges images of another size
        population = self.population if self.population in ("pediatric", "adult") else None
        result = self.guard.check(image, population=population)
        return result.summary(), [warning(w["code"], w["message"]) for w in result.warnings]

    @classmethod
    def from_models(cls, classifier: nn.Module, autoencoder: nn.Module, *, labels: Sequence[str] | None = None,
                    thresholds: Sequence[float | None] | None = None, resolution: int = 224,
                    device: str = "cpu", settings: Settings | None = None) -> "Pipeline":
        """A pipeline around your own models.

        classifier: (N, 1, R, R) in [-1024, 1024] -> logits (N, C); ``labels`` (C names) or its
        ``pathologies`` attribute name the outputs. autoencoder: ``encode``/``decode`` with
        x̂ = decode(encode(x)) of x's shape and range. R = ``resolution``. ``settings``: their CPU
        memory layout (see :meth:`current_settings`).
        """
        names = list(labels if labels is not None else getattr(classifier, "pathologies", []))
        if not names:
            raise OptionsError("name the classifier's outputs: pass labels=[...] or give it a pathologies list")
        if not (hasattr(autoencoder, "encode") and hasattr(autoencoder, "decode")):
            raise OptionsError("the autoencoder needs encode(x) -> z and decode(z) -> x̂ methods")
        classifier.pathologies = names
        if thresholds is not None:
            classifier.thresholds = [math.nan if t is None else float(t) for t in thresholds]
        entries = [ModelEntry(id=getattr(m, "model_id", f"user-{kind}"), kind=kind, architecture="user",
                              source={"type": "module"}, labels=tuple(names) if kind == "classifier" else (),
                              resolution=resolution) for m, kind in ((classifier, "classifier"),
                                                                      (autoencoder, "autoencoder"))]
        channels_last = cls.current_settings(settings).channels_last
        for model in (classifier, autoencoder):
            place_model(model.eval(), device, channels_last)
            for parameter in model.parameters():
                parameter.requires_grad_(False)
        return cls(LoadedModel(classifier, entries[0]), LoadedModel(autoencoder, entries[1]), device)

    @contextmanager
    def _computing(self, *, autoencoder: bool = True):
        """Hold the models' locks (classifier first, always) for one computation.

        Grad-CAM hooks a classifier layer for the length of its call, so a forward pass of
        another request would overwrite the hooked activations; on a 2-core server the work is
        compute-bound anyway, so requests for the same model queue here.
        """
        with self.classifier_model.lock:
            if autoencoder:
                with self.autoencoder_model.lock:
                    yield
            else:
                yield

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
        return self.predict_many([image])[0]

    def predict_many(self, images: Sequence[XrayImage]) -> list[dict[str, float]]:
        """:meth:`predict` of each image, in one classifier pass over all of them."""
        x = torch.cat([image.tensor(self.device) for image in images])
        with self._computing(autoencoder=False), torch.inference_mode():
            logits = self.classifier(x)
        return [{name: float(p) for name, p in zip(self.classifier.pathologies, row) if name}
                for row in torch.sigmoid(logits).cpu().tolist()]

    def gradcam_map(self, x: torch.Tensor, target: int) -> np.ndarray:
        """Grad-CAM (H, W) map of output ``target`` for x (1, 1, H, W), one call at a time."""
        with self._computing(autoencoder=False):
            return self.gradcam.attribute(x, target).map

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
        explanation, out_dir = self._new_explanation(image, options, out_dir)
        x = image.tensor(self.device)
        for stage in STAGES:
            if self._run_stage(stage, explanation, x, out_dir):
                yield _at(explanation, stage)

    def _run_stage(self, stage: str, explanation: Explanation, x: torch.Tensor, out_dir: Path,
                   computed=None) -> bool:
        """Run ``stage`` of :data:`STAGES` for one explanation (``computed``: that stage's result when it
        was computed for several images at once: predictions or the shift); False when it does not apply."""
        maps = explanation.options.maps
        if explanation.held_back and stage in ("gradcam", "latent_shift", "integrated_gradients"):
            return False
        if stage == "predict":
            with _timed(explanation, "predict"):
                self._predict_stage(explanation, out_dir, computed)
        elif stage == "gradcam":
            if "gradcam" not in maps or not self._can_gradcam(explanation):
                return False
            with _timed(explanation, "gradcam"):
                self._gradcam_stage(explanation, x, out_dir)
        elif stage == "latent_shift":
            with _timed(explanation, "latent_shift"):
                self._accept_shift(explanation, computed if computed is not None else self._shift(explanation, x))
            with _timed(explanation, "render"):
                self._render_shift(explanation, out_dir)
        elif stage == "integrated_gradients":
            if "integrated_gradients" not in maps:
                return False
            with _timed(explanation, "integrated_gradients"), self._computing(autoencoder=False):
                self._integrated_gradients_stage(explanation, x, out_dir)
        else:
            self._finish(explanation, out_dir)
        return True

    def _shift(self, explanation: Explanation, x: torch.Tensor):
        """The Latent Shift of one explanation's target (the models' locks held)."""
        with self._computing():
            [result] = self.explainer.attribute(x, explanation.target_index,
                                                ShiftOptions.from_explain(explanation.options),
                                                initial_preds=[explanation.predictions[explanation.target]])
            return result

    def explain_many(self, images: Sequence[XrayImage], options: ExplainOptions | Sequence[ExplainOptions] | None,
                     out_dirs: Sequence[str | Path]) -> list[Explanation]:
        """Explain several images with this pipeline: one finished :class:`Explanation` per image.

        Each explanation and its files in its ``out_dirs`` entry are those of :meth:`explain`
        (up to float rounding of batched passes). The classifier's predictions and the Latent
        Shift (encoding, latent gradients, searches and sweeps;
        :meth:`LatentShift.attribute` of the batch) are computed for all images at once; Grad-CAM,
        Integrated Gradients, the domain check and the files image by image. ``options``: one
        for all, or one per image; they may differ only in the target. A stage done for all
        images at once counts seconds / N in each explanation's ``timings``.
        """
        options_list = self._options_for(images, options, out_dirs)
        made = [self._new_explanation(i, o, d) for i, o, d in zip(images, options_list, out_dirs)]
        explanations, out_dirs = [e for e, _ in made], [d for _, d in made]
        xs = [image.tensor(self.device) for image in images]
        together = {"predict": lambda: self.predict_many(images),
                    "latent_shift": lambda: self._kept_shifts(explanations, xs, options_list[0])}
        for stage in STAGES:
            computed = [None] * len(explanations)
            if stage in together:
                with _shared_timed(explanations, stage):
                    computed = together[stage]()
            for explanation, x, out_dir, result in zip(explanations, xs, out_dirs, computed):
                if self._run_stage(stage, explanation, x, out_dir, result):
                    _at(explanation, stage)
        return explanations

    def _kept_shifts(self, explanations: list[Explanation], xs: list[torch.Tensor], options: ExplainOptions) -> list:
        """:meth:`_shifts` of the explanations not held back, None in the others' places."""
        kept = [i for i, e in enumerate(explanations) if not e.held_back]
        shifts = self._shifts([explanations[i] for i in kept], [xs[i] for i in kept], options) if kept else []
        computed = [None] * len(explanations)
        for i, shift in zip(kept, shifts):
            computed[i] = shift
        return computed

    def _shifts(self, explanations: list[Explanation], xs: list[torch.Tensor], options: ExplainOptions) -> list:
        """The Latent Shift of several explanations at once (:meth:`LatentShift.attribute` of a batch)."""
        with self._computing():
            return self.explainer.attribute(
                torch.cat(xs), [e.target_index for e in explanations], ShiftOptions.from_explain(options),
                initial_preds=[e.predictions[e.target] for e in explanations])

    def _options_for(self, images, options, out_dirs) -> list[ExplainOptions]:
        """One validated option set per image; raises OptionsError unless they differ only in the target."""
        if not images:
            raise OptionsError("explain_many needs at least one image")
        if len(out_dirs) != len(images):
            raise OptionsError(f"give one output folder per image: {len(images)} images, {len(out_dirs)} folders")
        if options is None or isinstance(options, ExplainOptions):
            options = [options or ExplainOptions()] * len(images)
        if len(options) != len(images):
            raise OptionsError(f"give one set of options or one per image: {len(images)} images, {len(options)} sets")
        options = [o.validate() for o in options]
        if len({json.dumps(dict(o.to_dict(), target=None), sort_keys=True) for o in options}) > 1:
            raise OptionsError("explain_many: the images' options may differ only in the target")
        if len({tuple(image.pixels.shape) for image in images}) > 1:
            raise OptionsError("explain_many needs images of one size (load them with this pipeline's load_image)")
        return list(options)

    def _new_explanation(self, image: XrayImage, options: ExplainOptions | None,
                         out_dir: str | Path) -> tuple[Explanation, Path]:
        """An empty :class:`Explanation` of ``image`` (options validated) and its output folder, created."""
        options = options or ExplainOptions()
        options.validate()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        explanation = Explanation(image=image, classifier_id=self.classifier_id,
                                  autoencoder_id=self.autoencoder_id, options=options,
                                  pathologies=list(self.classifier.pathologies),
                                  warnings=list(self.warnings) + [warning("input_note", f"input: {note}")
                                                                  for note in image.notes])
        return explanation, out_dir

    def _can_gradcam(self, explanation: Explanation) -> bool:
        """Whether Grad-CAM runs; when the classifier has no layer for it, a warning says why."""
        if self.gradcam is None:
            explanation.warn("gradcam_skipped", self.gradcam_missing)
        return self.gradcam is not None

    def _gradcam_stage(self, explanation: Explanation, x: torch.Tensor, out_dir: Path) -> None:
        """Grad-CAM of the target and its overlay PNG."""
        explanation.gradcam = self.gradcam_map(x, explanation.target_index)
        explanation.files["gradcam"] = render.write_overlay(
            out_dir / FILE_NAMES["gradcam"], explanation.image.pixels, explanation.gradcam, title="Grad-CAM")

    def _accept_shift(self, explanation: Explanation, shift) -> None:
        """Keep the Latent Shift result and add its reconstruction and range warnings."""
        explanation.shift = shift
        self._check_reconstruction(explanation)
        self._note_degenerate_range(explanation)

    def _finish(self, explanation: Explanation, out_dir: Path) -> None:
        """The files only the downloads offer (every finding's curve), then ``summary.json``."""
        if explanation.shift is not None and explanation.other_findings:
            with _timed(explanation, "findings_plot"):
                self._render_other_findings(explanation, out_dir)
        self._write_summary(explanation, out_dir)

    @staticmethod
    def _write_summary(explanation: Explanation, out_dir: Path) -> None:
        """The total time and ``summary.json``."""
        explanation.timings["total"] = sum(v for k, v in explanation.timings.items() if k != "total")
        path = out_dir / FILE_NAMES["summary"]
        explanation.files["summary"] = path
        path.write_text(json.dumps(explanation.summary(), indent=2, ensure_ascii=False), encoding="utf-8")

    def _predict_stage(self, explanation: Explanation, out_dir: Path, predictions: dict | None = None) -> None:
        """Predictions (``predictions`` when already computed), thresholds, the target, the domain
        check and the input PNG."""
        image = explanation.image
        explanation.predictions = predictions if predictions is not None else self.predict(image)
        explanation.thresholds = self.thresholds
        explanation.target, explanation.target_index = self.target_index(
            explanation.options.target, explanation.predictions)
        explanation.domain, domain_warnings = self.check_domain(image)
        for item in domain_warnings:
            explanation.warn(item["code"], item["message"])
        explanation.held_back = _held_back(explanation)
        explanation.files["input"] = render.write_png(out_dir / FILE_NAMES["input"], image.pixels)

    def _integrated_gradients_stage(self, explanation: Explanation, x: torch.Tensor, out_dir: Path) -> None:
        """Integrated Gradients of the target (its convergence delta kept) and its overlay PNG."""
        options = explanation.options
        method = IntegratedGradientsMap(self.classifier, n_steps=int(options.ig_steps),
                                        tolerance=float(options.ig_tolerance))
        result = method.attribute(x, explanation.target_index)
        explanation.integrated_gradients = result.map
        explanation.ig_convergence_delta = float(result.convergence_delta)
        explanation.ig_steps_used = result.n_steps
        explanation.files["integrated_gradients"] = render.write_overlay(
            out_dir / FILE_NAMES["integrated_gradients"], explanation.image.pixels, result.map,
            title="Integrated Gradients", absolute=True)

    def _check_reconstruction(self, explanation: Explanation) -> None:
        shift = explanation.shift
        error = float((shift.reconstruction[0, 0] - torch.from_numpy(explanation.image.pixels)).abs().mean()) / 2048
        explanation.reconstruction_error = error
        explanation.likely_not_cxr = error > self.ood_threshold
        if explanation.likely_not_cxr:
            explanation.warn(
                "not_a_chest_xray", f"the autoencoder reconstructs this image poorly (error {error:.3f} > {self.ood_threshold:.3f}): "
                "it is probably not a frontal chest X-ray, so the explanation is unreliable")

    @staticmethod
    def _note_degenerate_range(explanation: Explanation) -> None:
        shift = explanation.shift
        if shift.lambda_range == (0.0, 0.0):
            explanation.warn(
                "degenerate_range", "the search found no λ that changes the prediction within the limits "
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
        for name, side in (("counterfactual", "curtail"), ("exaggerated", "exaggerate")):
            index = shift.counterfactual_index(side)
            explanation.files[name] = render.write_png(
                out_dir / FILE_NAMES[name], shift.frames[shift.zero_index if index is None else index, 0], footer=True)

    @staticmethod
    def _render_other_findings(explanation: Explanation, out_dir: Path) -> None:
        """Every finding's prediction along the target's shift, in one plot (multi-label classifiers)."""
        shift = explanation.shift
        curves = [(name, shift.lambdas, preds) for name, preds in explanation.other_findings.items()]
        curves.insert(0, (f"{explanation.target} (target)", shift.lambdas, shift.preds))
        explanation.files["other_findings_plot"] = render.write_curves_plot(
            out_dir / FILE_NAMES["other_findings_plot"], curves,
            title=f"Every finding along {explanation.target}'s latent shift")


def _gradcam_for(classifier: nn.Module) -> tuple[GradCAM | None, str | None]:
    """(Grad-CAM of the classifier, None), or (None, why not) when it has no layer Grad-CAM can use."""
    missing = getattr(classifier, "gradcam_missing", None)
    if missing:
        return None, missing
    try:
        return GradCAM(classifier), None
    except ValueError as exc:
        return None, (f"Grad-CAM skipped: {exc}; give the model a `gradcam_layer` (for an exported model: "
                      "the card field `gradcam_layer`); Latent Shift and Integrated Gradients still run")


def _held_back(explanation: Explanation) -> str | None:
    """Why an image the domain check calls "not a chest X-ray" is not explained (None: it is explained,
    because the check passed or the options allow it)."""
    verdict = next((w for w in (explanation.domain or {}).get("warnings", []) if w["code"] == "not_a_chest_xray"), None)
    if verdict is None or explanation.options.allow_non_xray:
        return None
    p = explanation.domain["probabilities"].get("not_cxr", 0.0)
    return (f"Not explained: the domain check says this is not a frontal chest X-ray (p = {p:.0%} for "
            "'not a chest X-ray'), so the classifier's answer would mean nothing. Explain it anyway "
            "(allow_non_xray) only to see what the models do with such an image.")


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


class _shared_timed(_timed):
    """Context manager adding the block's seconds / N to each of N explanations' ``timings[name]``."""

    def __init__(self, explanations: list[Explanation], name: str):
        self.explanations, self.name = explanations, name

    def __exit__(self, *exc):
        share = (time.perf_counter() - self.started) / len(self.explanations)
        for explanation in self.explanations:
            explanation.timings[self.name] = explanation.timings.get(self.name, 0.0) + share
        return False
