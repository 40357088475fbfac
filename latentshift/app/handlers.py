"""What the app does when a person acts: plain functions, testable without building the UI.

Each handler takes control values and returns plain values (dicts keyed by output *name*);
:mod:`.layout` maps the names to components. The API functions :func:`predict`, :func:`explain`
and :func:`compare_api` are the endpoints ``/predict``, ``/explain`` and ``/compare``. The GPU-bound
work runs in :func:`.gpu.task` functions that take plain values only; their callers load the models
first, in this process (:func:`load_pair`; see :mod:`.gpu` for why).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder

from ..compare import Comparison, classifiers_with_finding, compare
from ..errors import LatentShiftError
from ..options import DEFAULTS, ExplainOptions
from ..pipeline import Explanation, Pipeline, list_models
from ..weights.choice import GROUP, choose_classifier, findings
from . import gpu
from .serving import run_folders

logger = logging.getLogger("latentshift.app")

UPLOAD_FILE_TYPES = [".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"]
TOP_PREDICTION = ""               # target value meaning "explain the top prediction"
READY_TEXT = "Upload a chest X-ray or click an example, then press **Explain**."
STAGE_NAMES = {"predict": "prediction", "gradcam": "Grad-CAM", "latent_shift": "Latent Shift",
               "render": "GIF and plots", "integrated_gradients": "Integrated Gradients"}
#: What runs after each stage.
NEXT_STEP = {"predict": "Grad-CAM", "gradcam": "Latent Shift (λ search, frames, GIF)",
             "latent_shift": "Integrated Gradients", "integrated_gradients": "summary.json"}
#: What /explain returns, in this order (keys of Explanation.files).
EXPLAIN_API_FILES = ("gif", "heatmap", "gradcam", "integrated_gradients", "prediction_plot", "counterfactual",
                     "summary")
DOWNLOAD_ORDER = ("gif", "summary", "counterfactual", "exaggerated", "heatmap", "gradcam",
                  "integrated_gradients", "prediction_plot", "other_findings_plot", "input")
#: What the result store keeps: these files (keys of Explanation.files) and the page's final values.
KEPT_FILES = DOWNLOAD_ORDER
KEPT_VALUES = ("predictions", "target", "status", "outcome", "warnings", "lambda_min", "lambda_max", "banner",
               "explain_anyway")
#: The before/after slider's pairs: (choice label, "left|right").
SLIDER_PAIRS = [("curtailed ↔ exaggerated", "curtailed|exaggerated"), ("input ↔ curtailed", "input|curtailed"),
                ("input ↔ exaggerated", "input|exaggerated")]
SLIDER_EMPTY_LABEL = "Before / after (drag)"
#: The result images (keys of Explanation.files and output names).
RESULT_IMAGES = ("gif", "heatmap", "gradcam", "integrated_gradients", "prediction_plot")
#: The result outputs a new upload clears.
RESULT_NAMES = (*RESULT_IMAGES, "before_after", "downloads")


@contextmanager
def errors_for_people(action: str) -> Iterator[None]:
    """Turn library errors into ``gr.Error`` messages; log anything else, show no traceback."""
    try:
        yield
    except gr.Error:
        raise
    except LatentShiftError as exc:
        logger.info("refused while %s: %s", action, exc)
        raise gr.Error(str(exc), print_exception=False) from None
    except Exception:
        logger.exception("unexpected error while %s", action)
        raise gr.Error(f"Something went wrong while {action}; the error was logged.",
                       print_exception=False) from None


# ---------------------------------------------------------------- models and choices

def serving_default():
    """The app's :class:`~latentshift.weights.preference.ServingDefault` (the pair that answers now)."""
    return Pipeline.serving(gpu.device())


def default_model_id(kind: str) -> str:
    """Id of the ``kind`` model of the pair that answers now (the serving default, see README)."""
    pair = serving_default().state().pair
    return pair.classifier if kind == "classifier" else pair.autoencoder


def serving_values() -> dict[str, Any]:
    """What a page shows when it loads: the pair that answers now, its findings as targets, and the
    line saying which pair answers and why."""
    state = serving_default().state()
    pipeline = pipeline_for(state.pair.classifier, state.pair.autoencoder)
    return {"serving_line": state.line(), "classifier": pipeline.classifier_id, "autoencoder": pipeline.autoencoder_id,
            "target_choices": target_choices(pipeline), "target": TOP_PREDICTION}


def example_targets(classifier_id: str, autoencoder_id: str, target: str) -> dict[str, Any]:
    """The target dropdown after an example: its classifier's findings, set to the example's target."""
    with errors_for_people("loading the models"):
        pipeline = pipeline_for(classifier_id, autoencoder_id)
    return {"target_choices": target_choices(pipeline), "target": target or TOP_PREDICTION}


def example_pair(population: str, finding: str) -> tuple[str, str] | None:
    """The pair that explains the examples of ``population`` for ``finding``: the pair that answers now
    when its classifier fits them, else an embedded classifier trained on that population with the
    embedded autoencoder; None when no classifier here has the finding."""
    store = Pipeline.store(gpu.device())
    manifest = store.manifest
    pair = serving_default().state().pair
    serving = manifest.get(pair.classifier)
    if finding in serving.labels and serving.info.get("population") in (population, None):
        return pair.classifier, pair.autoencoder
    for entry in manifest.of_kind("classifier"):
        if (entry.source_type == "file" and finding in entry.labels and entry.info.get("population") == population
                and store.status(entry, check_network=False).available):
            return entry.id, manifest.default("autoencoder").id
    return None


def model_dropdown_choices(kind: str) -> tuple[list[tuple[str, str]], str]:
    """(label, id) pairs for a dropdown, and an info line saying how many are usable here."""
    choices = sorted(list_models(kind), key=lambda choice: not choice.available)  # the unavailable ones last
    pairs = []
    for choice in choices:
        if not choice.available:
            pairs.append((f"{choice.id} ({choice.reason})", choice.id))
        elif choice.is_default:
            pairs.append((f"{choice.id} (embedded default)", choice.id))
        else:
            pairs.append((choice.id, choice.id))
    available = sum(choice.available for choice in choices)
    return pairs, f"{available} of {len(choices)} available here; the others say why not"


def suggest_classifier(population: str | None, current_id: str, finding: str) -> str | None:
    """The classifier to offer when the current one was not trained on ``population``: one that knows
    ``finding`` and was (:func:`latentshift.weights.choice.choose_classifier`); None if there is none."""
    if population not in GROUP:
        return None
    store = Pipeline.store(gpu.device())
    manifest = store.manifest
    if current_id in manifest.entries and manifest.get(current_id).info.get("population") == population:
        return None
    choice = choose_classifier(manifest, finding, population, current_id, store.allow_unverified)
    return choice.classifier_id if choice is not None and choice.fits_population else None


def suggestion_label(suggested: str | None, population: str | None) -> str:
    """The suggestion button's words."""
    if not suggested:
        return ""
    return f"Use {suggested}: trained on {GROUP.get(population, 'this population')}"


def all_findings() -> list[str]:
    """Every finding of the classifiers available here (the finding lists of both tabs)."""
    store = Pipeline.store(gpu.device())
    return findings(store.manifest, store.allow_unverified)


def target_choices(pipeline: Pipeline) -> list[tuple[str, str]]:
    """"Top prediction", then every finding any available classifier knows (choosing one the current
    classifier lacks switches to a classifier that has it); the current classifier's own are included."""
    names = sorted(set(all_findings()) | {name for name in pipeline.pathologies if name}, key=str.lower)
    return [("Top prediction", TOP_PREDICTION)] + [(name, name) for name in names]


def pipeline_for(classifier_id: str | None, autoencoder_id: str | None) -> Pipeline:
    """The pipeline of a model pair ('' or None: the serving default's model of that kind)."""
    return Pipeline.get(classifier_id or default_model_id("classifier"),
                        autoencoder_id or default_model_id("autoencoder"), device=gpu.device())


def load_pair(classifier_id: str | None, autoencoder_id: str | None) -> None:
    """Load the pair in this process before a GPU call (on ZeroGPU that call runs in a forked
    worker, which then finds the models in memory and on the GPU)."""
    with errors_for_people("loading the models"):
        pipeline_for(classifier_id, autoencoder_id)


# ---------------------------------------------------------------- inputs

def chosen_upload(image_path: str | None, file_path: str | None) -> str:
    path = image_path or file_path
    if not path:
        raise gr.Error("Upload a chest X-ray first (an image, a DICOM file, or click an example).")
    return path


def uploaded_file(value: Any) -> str:
    """The server path of an API upload, which must lie in Gradio's upload folder.

    ``gr.api`` endpoints receive the client's file description as is; a path outside the
    upload folder (a file of the server itself) is refused.
    """
    path = value.get("path") if isinstance(value, dict) else getattr(value, "path", value)
    if not path or not isinstance(path, str):
        raise gr.Error("Send the X-ray as a file: gradio_client.handle_file('xray.png').", print_exception=False)
    upload_root = Path(get_upload_folder()).resolve()
    resolved = Path(path).resolve()
    if upload_root not in resolved.parents:
        raise gr.Error("The X-ray must be uploaded with the request (gradio_client.handle_file), "
                       "not named by a path on the server.", print_exception=False)
    if resolved.suffix.lower() not in UPLOAD_FILE_TYPES:
        raise gr.Error(f"Invalid file type {resolved.suffix or '(none)'!r}: send one of "
                       f"{', '.join(UPLOAD_FILE_TYPES)}.", print_exception=False)
    return str(resolved)


def explain_options(target: str | None, direction: str, frames: float, step_size: float,
                    manual_range: bool, lambda_min: float | None, lambda_max: float | None,
                    frame_duration_ms: float, ig_steps: float | None,
                    frames_from: str = DEFAULTS.frames_from, allow_non_xray: bool = False) -> ExplainOptions:
    """ExplainOptions from control values (numbers arrive as floats); validated."""
    lambda_range = None
    if manual_range:
        if lambda_min is None or lambda_max is None:
            raise gr.Error("Enter both λ min and λ max for a manual range, or choose the automatic search.")
        lambda_range = (float(lambda_min), float(lambda_max))
    with errors_for_people("reading the settings"):
        return ExplainOptions(
            target=target or None, step_size=float(step_size), lambda_range=lambda_range,
            frames=int(frames), direction=direction, frame_duration_ms=int(frame_duration_ms),
            ig_steps=DEFAULTS.ig_steps if ig_steps is None else int(ig_steps),
            frames_from=frames_from or DEFAULTS.frames_from, allow_non_xray=bool(allow_non_xray)).validate()


# ---------------------------------------------------------------- what the page says

def path_text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def describe_prediction(explanation: Explanation) -> str:
    probability = explanation.predictions[explanation.target]
    threshold = explanation.thresholds.get(explanation.target)
    threshold_text = "" if threshold is None else f" (operating threshold {threshold:.2f})"
    return (f"Explaining **{explanation.target}**: p = {probability:.2f}{threshold_text}, "
            f"classifier `{explanation.classifier_id}`, autoencoder `{explanation.autoencoder_id}`.")


def describe_progress(explanation: Explanation) -> str:
    lines = [describe_prediction(explanation)]
    shift = explanation.shift
    if shift is not None:
        low, high = shift.lambda_range
        lines.append(f"Sweep: λ from {low:.1f} to {high:.1f} in {len(shift.lambdas)} frames; "
                     f"prediction {min(shift.preds):.2f} to {max(shift.preds):.2f}.")
    if explanation.stage == "done":
        timings = " · ".join(f"{STAGE_NAMES[name]} {seconds:.1f} s"
                             for name, seconds in explanation.timings.items() if name in STAGE_NAMES)
        lines.append(f"Done in {explanation.timings['total']:.1f} s ({timings}).")
    else:
        lines.append(f"Working on {NEXT_STEP[explanation.stage]}…")
    return "\n\n".join(lines)


def describe_outcome(explanation: Explanation) -> str:
    """The outcome in words (shown prominently once the sweep is done; empty before)."""
    if explanation.shift is None:
        return ""
    return f"**Outcome.** {explanation.outcome_text(with_warnings=False)}"


def describe_warnings(explanation: Explanation) -> str:
    """The run's warnings, each once (the input notes go into summary.json only; "not a chest X-ray"
    has the banner)."""
    return "\n\n".join(f"⚠ {w['message']}" for w in explanation.warnings
                        if w["code"] not in ("input_note", "not_a_chest_xray"))


def not_xray(domain: dict | None) -> bool:
    """Whether the domain check (its summary) says the image is not a chest X-ray."""
    return any(w["code"] == "not_a_chest_xray" for w in (domain or {}).get("warnings", []))


def not_xray_banner(domain: dict | None, explained: bool) -> str:
    """The banner where the result would be, for an image the domain check calls not a chest X-ray."""
    if not not_xray(domain):
        return ""
    p = domain["probabilities"].get("not_cxr", 0.0)
    head = (f"**This does not look like a chest X-ray** (domain check: {p:.0%} 'not a chest X-ray'). "
            "The classifier only knows frontal chest X-rays, so its answer would mean nothing")
    if explained:
        return f"{head}. **Explained anyway, on request: nothing below is a finding.**"
    return (f"{head}: no probabilities, outcome or maps are shown. **Explain anyway** runs it only to show "
            "what the models do with such an image.")


def slider_frames(explanation: Explanation) -> dict[str, list[str]] | None:
    """The three images the before/after slider can compare: name -> [path, caption]."""
    shift = explanation.shift
    if shift is None or "counterfactual" not in explanation.files:
        return None
    files = explanation.files
    return {"input": [path_text(files.get("input")), f"input (p = {shift.initial_pred:.2f})"],
            "curtailed": [path_text(files.get("counterfactual")), _side_caption(shift, "curtail", "curtailed")],
            "exaggerated": [path_text(files.get("exaggerated")), _side_caption(shift, "exaggerate", "exaggerated")]}


def _side_caption(shift, side: str, word: str) -> str:
    """What one side of the slider shows: that direction's counterfactual frame, or, when the
    direction has no frame, the λ = 0 frame named as such."""
    index = shift.counterfactual_index(side)
    if index is None:
        origin = "the input" if shift.frames_from == "input" else "the reconstruction"
        return f"not {word}: λ = 0, {origin} (p = {shift.zero_pred:.2f})"
    return f"{word} (λ = {shift.lambdas[index]:.0f}, p = {shift.preds[index]:.2f})"


def slider_value(frames: dict[str, list[str]] | None, pair: str = SLIDER_PAIRS[0][1]) -> dict[str, Any]:
    """The slider's images for one pair ("left|right" names of :func:`slider_frames`) and the caption
    naming both sides."""
    if not frames:
        return {"before_after": None, "slider_caption": ""}
    left, right = (frames[name] for name in pair.split("|"))
    return {"before_after": (left[0], right[0]), "slider_caption": f"◀ **left:** {left[1]} · **right:** {right[1]} ▶"}


def refusal_values(message: str) -> dict[str, Any]:
    """A refused upload or run: the message in the status line, every result cleared, nothing raised."""
    return {"status": f"⚠ **Not explained.** {message}", "predictions": None, "banner": "", "explain_anyway": False,
            **_cleared()}


def _downloads(explanation: Explanation) -> list[str] | None:
    """The download list of a finished explanation (None before)."""
    files = explanation.files
    return [str(files[key]) for key in DOWNLOAD_ORDER if key in files] if explanation.stage == "done" else None


def held_back_values(explanation: Explanation) -> dict[str, Any]:
    """An explanation the domain check held back: the banner and its button, no result."""
    return {**refusal_values(""), "target": explanation.target,
            "status": "⚠ **Not explained: not a chest X-ray.** See the banner.",
            "banner": not_xray_banner(explanation.domain, explained=False), "explain_anyway": True,
            "downloads": _downloads(explanation)}


def result_values(explanation: Explanation) -> dict[str, Any]:
    """Output name -> value for the page after any stage of an explanation."""
    if explanation.held_back:
        return held_back_values(explanation)
    frames = slider_frames(explanation)
    values = {
        "predictions": explanation.predictions, "target": explanation.target,
        "status": describe_progress(explanation), "outcome": describe_outcome(explanation),
        "warnings": describe_warnings(explanation),
        "banner": not_xray_banner(explanation.domain, explained=True), "explain_anyway": False,
        **{key: path_text(explanation.files.get(key)) for key in RESULT_IMAGES},
        "slider_frames": frames, **slider_value(frames), "slider_pair": SLIDER_PAIRS[0][1],
        "downloads": _downloads(explanation),
    }
    if explanation.shift is not None:
        values["lambda_min"], values["lambda_max"] = explanation.shift.lambda_range
    return values


# ---------------------------------------------------------------- handlers of the page

def _cleared() -> dict[str, Any]:
    """Every result output emptied."""
    return {**dict.fromkeys(RESULT_NAMES), "outcome": "", "warnings": "", "slider_frames": None, **slider_value(None)}


def predict_upload(path: str | None, classifier_id: str, autoencoder_id: str) -> dict[str, Any]:
    """Predictions for a new upload; the target follows the top prediction; results cleared."""
    if not path:
        return {"predictions": None, "target": TOP_PREDICTION, **_cleared(), "status": READY_TEXT,
                "suggestion": None}
    load_pair(classifier_id, autoencoder_id)
    return _predict_upload(path, classifier_id, autoencoder_id)


@gpu.task(gpu.PREDICT_SECONDS)
def _predict_upload(path: str, classifier_id: str, autoencoder_id: str) -> dict[str, Any]:
    """:func:`predict_upload` once the models are loaded (on ZeroGPU: on the lent GPU)."""
    with errors_for_people("reading the image and predicting"):
        pipeline = pipeline_for(classifier_id, autoencoder_id)
        image = pipeline.load_image(path)
        domain, warnings = pipeline.check_domain(image)
        if not_xray(domain):
            return {"predictions": None, "target": TOP_PREDICTION, **_cleared(), "suggestion": None,
                    "banner": not_xray_banner(domain, explained=False), "explain_anyway": True,
                    "status": "⚠ **Not a chest X-ray: no prediction shown.** See the banner."}
        probabilities = pipeline.predict(image)
    top = max(probabilities, key=probabilities.get)
    notes = "".join(f"\n\nInput: {note}." for note in image.notes)
    suggestion = None
    if any(w["code"] == "out_of_domain" for w in warnings):
        suggestion = suggest_classifier(domain["population"], pipeline.classifier_id, top)
    return {"predictions": probabilities, "target": top, **_cleared(), "suggestion": suggestion,
            "suggestion_label": suggestion_label(suggestion, (domain or {}).get("population")),
            "banner": "", "explain_anyway": False,
            "warnings": "\n\n".join(f"⚠ {w['message']}" for w in warnings),
            "status": f"Top prediction **{top}** (p = {probabilities[top]:.2f}, classifier "
                      f"`{pipeline.classifier_id}`). Press **Explain** for the GIF and the maps.{notes}"}


def change_models(classifier_id: str, autoencoder_id: str, upload_path: str | None) -> dict[str, Any]:
    """Load the chosen pair (an unavailable model falls back to the default, with a warning),
    offer its findings as targets and predict the current upload again."""
    with errors_for_people("loading the models"):
        pipeline = pipeline_for(classifier_id, autoencoder_id)
    values: dict[str, Any] = {"classifier": pipeline.classifier_id, "autoencoder": pipeline.autoencoder_id,
                              "target_choices": target_choices(pipeline), "target": TOP_PREDICTION,
                              "model_warnings": [w["message"] for w in pipeline.warnings]}
    if upload_path:
        values.update(predict_upload(upload_path, pipeline.classifier_id, pipeline.autoencoder_id))
    return values


def choose_finding(finding: str, classifier_id: str, autoencoder_id: str, upload_path: str | None) -> dict[str, Any]:
    """A finding chosen on the page: the classifier that knows it and fits the upload's population
    answers (switched to, and the upload predicted again, when it is another); a line says which and why."""
    if not finding:
        return {"answering": ""}
    choice = classifier_for_finding(upload_path, finding, autoencoder_id, classifier_id)
    values: dict[str, Any] = {}
    if choice.classifier_id != classifier_id:
        values = change_models(choice.classifier_id, autoencoder_id, upload_path)
    return {**values, "target": choice.finding, "answering": choice.reason}


def iter_explanation(path: str, classifier_id: str, autoencoder_id: str,
                     options: ExplainOptions) -> Iterator[Explanation]:
    """The stages of one explanation in the app (files in a fresh run folder)."""
    load_pair(classifier_id, autoencoder_id)
    yield from _explanation_stages(path, classifier_id, autoencoder_id, options)


@gpu.task(gpu.EXPLAIN_SECONDS)
def _explanation_stages(path: str, classifier_id: str, autoencoder_id: str,
                        options: ExplainOptions) -> Iterator[Explanation]:
    """:func:`iter_explanation` once the models are loaded (on ZeroGPU: on the lent GPU)."""
    with errors_for_people("explaining the image"):
        pipeline = pipeline_for(classifier_id, autoencoder_id)
        image = pipeline.load_image(path)
        yield from pipeline.iter_explain(image, options, run_folders().new())


# ---------------------------------------------------------------- API endpoints
# Their parameter names are the API's parameter names (gradio_client keywords).

def predict(image: FileData, classifier: str = "", allow_non_xray: bool = False, details: bool = False) -> dict:
    """Probability of each finding for one chest X-ray, after the domain check.

    image: PNG, JPEG, TIFF or DICOM file; classifier: model id ('' = the serving default);
    allow_non_xray: predict an image the domain check calls not a chest X-ray (otherwise refused with
    the reason); details: return the domain check and warnings too.
    Returns {finding: probability}, or with details {"predictions", "classifier", "domain", "warnings",
    "held_back"} (predictions null when held back).
    """
    path = uploaded_file(image)
    load_pair(classifier, None)
    record = _checked_probabilities(path, classifier, bool(allow_non_xray))
    if details:
        return record
    if record["held_back"]:
        raise gr.Error(record["held_back"], title="Not a chest X-ray", print_exception=False)
    return record["predictions"]


@gpu.task(gpu.PREDICT_SECONDS)
def _checked_probabilities(path: str, classifier: str, allow_non_xray: bool) -> dict[str, Any]:
    with errors_for_people("reading the image and predicting"):
        pipeline = pipeline_for(classifier, None)
        image = pipeline.load_image(path)
        domain, warnings = pipeline.check_domain(image)
        held = not_xray(domain) and not allow_non_xray
        return {"predictions": None if held else pipeline.predict(image), "classifier": pipeline.classifier_id,
                "domain": domain, "warnings": warnings,
                "held_back": NOT_XRAY_API.format(p=domain["probabilities"].get("not_cxr", 0.0)) if held else None}


#: What /predict and /explain say when they hold an image back.
NOT_XRAY_API = ("The domain check says this is not a frontal chest X-ray (p = {p:.0%} for 'not a chest X-ray'), "
                "so it is not predicted or explained; pass allow_non_xray=True to run the models on it anyway.")


def explain(image: FileData, classifier: str = "", autoencoder: str = "", target: str = "",
            direction: str = DEFAULTS.direction, frames: int = DEFAULTS.frames,
            step_size: float = DEFAULTS.step_size,
            lambda_min: float | None = None, lambda_max: float | None = None,
            frame_duration_ms: int = DEFAULTS.frame_duration_ms,
            ig_steps: int = DEFAULTS.ig_steps,
            frames_from: str = DEFAULTS.frames_from,
            allow_non_xray: bool = False) -> tuple[FileData, FileData, FileData, FileData, FileData,
                                                   FileData, FileData]:
    """Latent Shift explanation of one chest X-ray, with Grad-CAM and Integrated Gradients.

    classifier: '' = the classifier that knows ``target`` and fits the image's population (the domain
    check's), or the serving default when no target is given. frames_from: "input" (frames keep the
    X-ray's detail; the default) or "reconstruction" (the paper's). allow_non_xray: explain an image the
    domain check calls not a chest X-ray (otherwise refused with the reason). The same image, models
    and settings explained before come back from the result store at once.

    Returns files: (GIF, Latent Shift heatmap PNG, Grad-CAM PNG, Integrated Gradients PNG,
    prediction-vs-λ plot PNG, counterfactual PNG, summary.json).
    """
    request = explain_request(image, classifier, autoencoder, target, direction, frames, step_size, lambda_min,
                              lambda_max, frame_duration_ms, ig_steps, frames_from, allow_non_xray)
    files, _ = explained(request)
    return api_files(files)


@dataclass(frozen=True)
class ExplainRequest:
    """One /explain call, checked: the upload's path, the models ('' = the serving default's) and options."""

    path: str
    classifier: str
    autoencoder: str
    options: ExplainOptions


def explain_request(image: FileData, classifier: str = "", autoencoder: str = "", target: str = "",
                    direction: str = DEFAULTS.direction, frames: int = DEFAULTS.frames,
                    step_size: float = DEFAULTS.step_size, lambda_min: float | None = None,
                    lambda_max: float | None = None, frame_duration_ms: int = DEFAULTS.frame_duration_ms,
                    ig_steps: int = DEFAULTS.ig_steps, frames_from: str = DEFAULTS.frames_from,
                    allow_non_xray: bool = False) -> ExplainRequest:
    """:func:`explain`'s arguments checked (a clear ``gr.Error`` otherwise), the classifier chosen by target."""
    path = uploaded_file(image)
    manual = lambda_min is not None or lambda_max is not None
    options = explain_options(target, direction, frames, step_size, manual, lambda_min, lambda_max,
                              frame_duration_ms, ig_steps, frames_from, allow_non_xray)
    if target and not classifier:
        classifier = classifier_for_finding(path, target, autoencoder).classifier_id
    return ExplainRequest(path, classifier, autoencoder, options)


def explained(request: ExplainRequest) -> tuple[dict[str, Path], dict[str, Any]]:
    """One API explanation: :func:`kept_record`'s (files by key, record)."""
    load_pair(request.classifier, request.autoencoder)
    return _explained(request.path, request.classifier, request.autoencoder, request.options)


@gpu.task(gpu.EXPLAIN_SECONDS)
def _explained(path: str, classifier: str, autoencoder: str,
               options: ExplainOptions) -> tuple[dict[str, Path], dict[str, Any]]:
    with errors_for_people("explaining the image"):
        pipeline = pipeline_for(classifier, autoencoder)
        explanation = pipeline.explain(pipeline.load_image(path), options, run_folders().new())
    if explanation.held_back:
        raise gr.Error(NOT_XRAY_API.format(p=explanation.domain["probabilities"].get("not_cxr", 0.0)),
                       title="Not a chest X-ray", print_exception=False)
    return kept_record(explanation, result_values(explanation))


def api_files(files: dict[str, Path | None]) -> tuple[FileData | None, ...]:
    """The files of /explain, in :data:`EXPLAIN_API_FILES` order."""
    return tuple(file_data(files.get(key)) for key in EXPLAIN_API_FILES)


def kept_record(explanation: Explanation, values: dict[str, Any]) -> tuple[dict[str, Path], dict[str, Any]]:
    """What the result store keeps of a finished explanation: (its files by key, a record holding the
    models, the target and the page's final texts; ``values``: :func:`result_values`)."""
    files = {key: explanation.files[key] for key in KEPT_FILES if key in explanation.files}
    frames = values.get("slider_frames") or {}
    page = {name: values.get(name) for name in KEPT_VALUES}
    page["slider_captions"] = {side: caption for side, (_, caption) in frames.items()}
    return files, {"page": page, "classifier": explanation.classifier_id,
                   "autoencoder": explanation.autoencoder_id, "target": explanation.target}


def classifier_for_finding(path: str | None, finding: str, autoencoder: str | None = None,
                           current: str | None = None):
    """The :class:`~latentshift.weights.choice.ClassifierChoice` for ``finding`` on the upload at
    ``path`` (its population from the domain check; None: unknown); ``current``: the classifier
    answering now (default: the serving default's), kept on a tie."""
    with errors_for_people("choosing the classifier"):
        current = current or default_model_id("classifier")
        if not path:
            store = Pipeline.store(gpu.device())
            choice = choose_classifier(store.manifest, finding, None, current, store.allow_unverified)
            if choice is None:
                raise LatentShiftError(f"no classifier available here knows {finding!r}; choose one of: "
                                       + ", ".join(all_findings()))
            return choice
        image = pipeline_for(None, autoencoder).load_image(path)
        return Pipeline.for_finding(finding, image, autoencoder or None, current, device=gpu.device())[1]


def compare_upload(path: str | None, target: str, classifier_ids: list[str] | None, autoencoder_id: str,
                   frames: float, step_size: float) -> Comparison:
    """The compare view's run: every chosen classifier on one finding (files in a fresh run folder)."""
    if not path:
        raise gr.Error("Upload a chest X-ray first (or pick an example on the Explain tab).")
    if not target:
        raise gr.Error("Choose the finding to compare.")
    options = explain_options(target, DEFAULTS.direction, frames, step_size, False, None, None,
                              DEFAULTS.frame_duration_ms, None)
    ids = list(classifier_ids or []) or classifiers_with_finding(target)
    for classifier_id in ids:  # loaded here, before the GPU call; one that cannot load is skipped there
        with suppress(gr.Error):
            load_pair(classifier_id, autoencoder_id or None)
    return _comparison(path, target, ids, autoencoder_id or None, options)


@gpu.task(gpu.COMPARE_SECONDS)
def _comparison(path: str, target: str, classifier_ids: list[str], autoencoder_id: str | None,
                options: ExplainOptions) -> Comparison:
    with errors_for_people("comparing the classifiers"):
        return compare(path, target, classifier_ids or None, autoencoder_id=autoencoder_id, options=options,
                       out_dir=run_folders().new(), device=gpu.device())


def compare_values(comparison: Comparison) -> dict[str, Any]:
    """Output name -> value for the compare tab."""
    lines = [f"- {run.line}" for run in comparison.runs]
    lines += [f"- {cid} — skipped: {reason}" for cid, reason in comparison.skipped.items()]
    return {"compare_gifs": [(str(run.gif), run.classifier_id) for run in comparison.runs],
            "compare_plot": str(comparison.plot), "compare_lines": "\n".join(lines),
            "compare_summary": str(comparison.summary_path)}


def compare_api(image: FileData, target: str, classifiers: str = "", autoencoder: str = "",
                frames: int = DEFAULTS.frames, step_size: float = DEFAULTS.step_size
                ) -> tuple[list[FileData], FileData, FileData, str]:
    """One image, one finding, several classifiers on one autoencoder.

    classifiers: comma-separated ids ('' = every available classifier with the finding).
    Returns (one GIF per classifier, all prediction-vs-λ curves PNG, compare.json, one line per classifier).
    """
    path = uploaded_file(image)
    ids = [i.strip() for i in classifiers.split(",") if i.strip()]
    comparison = compare_upload(path, target, ids, autoencoder, frames, step_size)
    return ([file_data(str(run.gif)) for run in comparison.runs], file_data(str(comparison.plot)),
            file_data(str(comparison.summary_path)), "\n".join(run.line for run in comparison.runs))


def file_data(path: str | Path | None) -> FileData | None:
    """A file an API endpoint returns (None stays None)."""
    return None if path is None else FileData(path=str(path), orig_name=Path(path).name)
