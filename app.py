"""Gradio app for Latent Shift (Cohen et al., "Gifsplanation via Latent Shift", MIDL 2021).

Layout and wiring only: every computation goes through :mod:`latentshift.pipeline`.

Run ``python app.py`` (serves http://127.0.0.1:7860 with the embedded default models);
``python app.py --help`` lists the launch options. Named API endpoints ``/predict`` and
``/explain`` are described in ``docs/app.md``.

Research and teaching demo, not for clinical use.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Latent Shift demo: animated counterfactual explanations of chest X-ray classifiers.")
    # Defaults follow Gradio's environment variables, which Hugging Face Spaces set (0.0.0.0:7860).
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default $GRADIO_SERVER_NAME or 127.0.0.1; "
                             "0.0.0.0 serves the network)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to listen on (default $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also create a temporary public gradio.live link (needs internet)")
    parser.add_argument("--offline", action="store_true",
                        help="never contact the Hugging Face Hub (sets HF_HUB_OFFLINE=1): "
                             "only embedded and already cached models are offered")
    parser.add_argument("--root-path", default=os.environ.get("GRADIO_ROOT_PATH"),
                        help="URL prefix when served behind a reverse proxy, e.g. /latentshift "
                             "(default $GRADIO_ROOT_PATH)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    # huggingface_hub reads HF_HUB_OFFLINE when it is imported (gradio imports it), so the
    # command line is parsed before any of the imports below.
    COMMAND_LINE = parse_args()
    if COMMAND_LINE.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"

# Medical uploads: no usage statistics leave the server.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# The examples give every input a value except the DICOM file and the manual λ range, on purpose.
warnings.filterwarnings("ignore", message="Examples will be cached but not all input components")

import gradio as gr  # noqa: E402

from latentshift.attribution import DEFAULT_IG_STEPS  # noqa: E402
from latentshift.errors import LatentShiftError  # noqa: E402
from latentshift.pipeline import ExplainOptions, Explanation, Pipeline, list_models  # noqa: E402

logger = logging.getLogger("latentshift.app")

APP_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = APP_DIR / "examples"
TITLE = "Gifsplanation via Latent Shift"

# Serving limits, chosen for a 2-vCPU machine such as a free Hugging Face CPU Space
# (see docs/app.md): one explanation at a time uses both cores, the rest wait in line.
EXPLAIN_CONCURRENCY = 1
PREDICT_CONCURRENCY = 1
QUEUE_MAX_SIZE = 20
MAX_FILE_SIZE = "32mb"
DELETE_CACHE = (600, 3600)        # every 10 min, delete Gradio's copies older than 1 h
RUN_FOLDER_MAX_AGE_S = 3600       # our own output folders live as long (checked every minute)

UPLOAD_FILE_TYPES = [".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"]
TOP_PREDICTION = ""               # target value meaning "explain the top prediction"
RANGE_AUTOMATIC = "Automatic search"
RANGE_MANUAL = "Manual λ range"
DIRECTIONS = [("Both", "both"), ("Curtail (fade)", "curtail"), ("Exaggerate", "exaggerate")]

# Defaults of the controls: the library's (16 frames, 32 IG steps). With the demo models a whole
# run took 5-7 s from the click on 2 CPU cores (the λ search dominates); Integrated Gradients
# comes last, after the GIF is shown, and 32 steps keep its convergence delta low (see
# latentshift.attribution), so the app does not trade its accuracy for a second or two.
PIPELINE_DEFAULTS = ExplainOptions()
DEFAULT_FRAMES = PIPELINE_DEFAULTS.frames

STAGE_NAMES = {"predict": "prediction", "gradcam": "Grad-CAM", "latent_shift": "Latent Shift",
               "render": "GIF and plots", "integrated_gradients": "Integrated Gradients"}
# (fraction done, what runs next) shown by gr.Progress after each stage.
NEXT_STEP = {
    "predict": (0.05, "Grad-CAM"),
    "gradcam": (0.15, "Latent Shift (λ search, frames, GIF)"),
    "latent_shift": (0.75, "Integrated Gradients"),
    "integrated_gradients": (0.95, "summary.json"),
}
# What /explain returns, in this order (keys of Explanation.files).
EXPLAIN_API_FILES = ("gif", "heatmap", "gradcam", "integrated_gradients", "prediction_plot", "counterfactual",
                     "summary")
DOWNLOAD_ORDER = ("gif", "summary", "counterfactual", "exaggerated", "heatmap", "gradcam",
                  "integrated_gradients", "prediction_plot", "input")

CSS = """
.disclaimer { border-left: 4px solid #d97706; background: #fffbeb; color: #78350f;
              padding: 8px 14px; border-radius: 6px; margin-bottom: 4px; }
.disclaimer p { margin: 0; }
.intro p { margin: 2px 0; }
#status { min-height: 2.5em; }
"""

INTRO = f"""
# {TITLE}
An autoencoder encodes the chest X-ray; the classifier's gradient with respect to the latent code z
gives a direction, and decoding z + λ·dy/dz over a range of λ gives the frames of the GIF:
with λ below 0 the finding fades, with λ above 0 it is exaggerated. Compare the animation with the
Grad-CAM and Integrated Gradients maps. Paper: [Cohen et al., MIDL 2021](https://arxiv.org/abs/2102.09475).
"""
DISCLAIMER = ("**Research and teaching demo, not for clinical use.** The default models are small "
              "models trained for this demo; do not use the predictions or images for diagnosis. "
              "Uploads are processed on this server and deleted within about an hour.")


class XrayUpload(gr.Image):
    """The upload box: a ``gr.Image`` that hands any uploaded file on to the pipeline.

    ``gr.Image`` opens every upload with Pillow before the handler runs, so an empty file,
    a text file, a DICOM or a decompression bomb would end as a bare "Error" on the page.
    Passing the (already size-checked, cached) path on lets ``load_xray`` say what is wrong.
    """

    is_template = True  # rendered by the front end as a plain Image

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception:  # noqa: BLE001 - whatever Pillow raises, the imaging layer explains it
            return None if payload is None else str(payload.path)


class RunFolders:
    """Output folders of the runs, under one ``tempfile.mkdtemp()`` root.

    A daemon thread deletes folders older than ``max_age_s`` (checked every ``max_age_s / 4``
    seconds, at most every minute), so an idle server keeps nothing for long; the root goes at
    exit. Gradio serves copies of the returned files from its own cache (``delete_cache``).
    """

    def __init__(self, max_age_s: float = RUN_FOLDER_MAX_AGE_S):
        self.root = Path(tempfile.mkdtemp(prefix="latentshift-app-"))
        self._max_age_s = max_age_s
        self._schedule_changed = threading.Event()
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)
        threading.Thread(target=self._prune_periodically, name="prune-run-folders", daemon=True).start()

    @property
    def max_age_s(self) -> float:
        return self._max_age_s

    @max_age_s.setter
    def max_age_s(self, seconds: float) -> None:
        self._max_age_s = seconds
        self._schedule_changed.set()

    def new(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="run-", dir=self.root))

    def prune(self) -> None:
        cutoff = time.time() - self.max_age_s
        for folder in self.root.iterdir():
            if folder.name.startswith("run-") and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)

    def _prune_periodically(self) -> None:
        while self.root.exists():
            self._schedule_changed.wait(timeout=max(1.0, min(self.max_age_s / 4, 60.0)))
            self._schedule_changed.clear()
            try:
                self.prune()
            except OSError:
                logger.exception("could not prune old run folders in %s", self.root)


@functools.cache
def run_folders() -> RunFolders:
    """The process's output folders (created on first use)."""
    return RunFolders()


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


def example_images() -> list[str]:
    """The example X-rays shipped in examples/ (read at start-up)."""
    return [str(path) for path in sorted(EXAMPLES_DIR.glob("*.png"))]


@functools.cache
def default_model_id(kind: str) -> str | None:
    """Id of the manifest's embedded default of ``kind``."""
    return next((choice.id for choice in list_models(kind) if choice.is_default), None)


def model_dropdown_choices(kind: str) -> tuple[list[tuple[str, str]], str]:
    """(label, id) pairs for a dropdown, and an info line saying how many are usable here."""
    choices = list_models(kind)
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


def target_choices(pipeline: Pipeline) -> list[tuple[str, str]]:
    return [("Top prediction", TOP_PREDICTION)] + [(name, name) for name in pipeline.pathologies]


def pipeline_for(classifier_id: str | None, autoencoder_id: str | None) -> Pipeline:
    """The cached pipeline of a model pair ('' or None: the embedded default)."""
    return Pipeline.get(classifier_id or default_model_id("classifier"),
                        autoencoder_id or default_model_id("autoencoder"))


def chosen_upload(image_path: str | None, file_path: str | None) -> str:
    path = image_path or file_path
    if not path:
        raise gr.Error("Upload a chest X-ray first (an image, a DICOM file, or click an example).")
    return path


def explain_options(target: str | None, direction: str, frames: float, step_size: float,
                    manual_range: bool, lambda_min: float | None, lambda_max: float | None,
                    frame_duration_ms: float, ig_steps: float | None) -> ExplainOptions:
    """ExplainOptions from control values (numbers arrive as floats)."""
    lambda_range = None
    if manual_range:
        if lambda_min is None or lambda_max is None:
            raise gr.Error("Enter both λ min and λ max for a manual range, or choose the automatic search.")
        lambda_range = (float(lambda_min), float(lambda_max))
    return ExplainOptions(
        target=target or None, step_size=float(step_size), lambda_range=lambda_range,
        frames=int(frames), direction=direction, frame_duration_ms=int(frame_duration_ms),
        ig_steps=None if ig_steps is None else int(ig_steps))


def file_path(explanation: Explanation, key: str) -> str | None:
    path = explanation.files.get(key)
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
        lines.append(f"Working on {NEXT_STEP[explanation.stage][1]}…")
    lines += [f"⚠ {warning}" for warning in explanation.warnings]
    return "\n\n".join(lines)


def shifted_end_frame(explanation: Explanation) -> str | None:
    """The frame at the far end of the sweep: the counterfactual, or the exaggeration."""
    key = "exaggerated" if explanation.options.direction == "exaggerate" else "counterfactual"
    return file_path(explanation, key)


# ---------------------------------------------------------------- API functions
# Their parameter names are the API's parameter names (gradio_client keywords).

def predict(image: str, classifier: str = "") -> dict[str, float]:
    """Probability of each finding for one chest X-ray.

    image: PNG, JPEG, TIFF or DICOM file; classifier: model id ('' = embedded default).
    Returns {finding: probability}.
    """
    with errors_for_people("reading the image and predicting"):
        pipeline = pipeline_for(classifier, None)
        return pipeline.predict(pipeline.load_image(image))


def explain(image: str, classifier: str = "", autoencoder: str = "", target: str = "",
            direction: str = "both", frames: int = DEFAULT_FRAMES,
            step_size: float = PIPELINE_DEFAULTS.step_size,
            lambda_min: float | None = None, lambda_max: float | None = None,
            frame_duration_ms: int = PIPELINE_DEFAULTS.frame_duration_ms,
            ig_steps: int = DEFAULT_IG_STEPS):
    """Latent Shift explanation of one chest X-ray, with Grad-CAM and Integrated Gradients.

    Returns file paths: (GIF, Latent Shift heatmap PNG, Grad-CAM PNG, Integrated Gradients PNG,
    prediction-vs-λ plot PNG, counterfactual PNG, summary.json).
    """
    manual = lambda_min is not None or lambda_max is not None
    options = explain_options(target, direction, frames, step_size, manual, lambda_min, lambda_max,
                              frame_duration_ms, ig_steps)
    with errors_for_people("explaining the image"):
        pipeline = pipeline_for(classifier, autoencoder)
        explanation = pipeline.explain(pipeline.load_image(image), options, run_folders().new())
    return tuple(file_path(explanation, key) for key in EXPLAIN_API_FILES)


def build_demo() -> gr.Blocks:
    """The app's Blocks (not launched). See :func:`launch` for the serving options."""
    default_classifier = default_model_id("classifier")
    default_autoencoder = default_model_id("autoencoder")
    default_pipeline = Pipeline.get(default_classifier, default_autoencoder)
    classifier_choices, classifier_info = model_dropdown_choices("classifier")
    autoencoder_choices, autoencoder_info = model_dropdown_choices("autoencoder")
    examples = example_images()
    # Lazily cached example results belong to this server process and its models only.
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(run_folders().root / "cached_examples"))

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(INTRO, elem_classes="intro")
        gr.Markdown(DISCLAIMER, elem_classes="disclaimer")

        with gr.Row(equal_height=False):
            # ---------------------------------------------------------------- inputs
            with gr.Column(scale=2, min_width=320):
                image_input = XrayUpload(
                    label="Chest X-ray (PNG or JPEG; 16-bit PNGs keep their depth)", type="filepath",
                    image_mode=None, sources=["upload", "clipboard"], height=300,
                    buttons=["fullscreen"])
                file_input = gr.File(
                    label="…or a DICOM / TIFF file", file_types=UPLOAD_FILE_TYPES, height=120)
                examples_slot = gr.Column()
                with gr.Row():
                    predict_button = gr.Button("Predict", variant="secondary", scale=1)
                    explain_button = gr.Button("Explain", variant="primary", scale=2)
                target = gr.Dropdown(
                    target_choices(default_pipeline), value=TOP_PREDICTION, label="Finding to explain",
                    info="Filled from the classifier; set to its top prediction after each prediction")
                with gr.Accordion("Latent Shift settings", open=True):
                    direction = gr.Radio(DIRECTIONS, value=PIPELINE_DEFAULTS.direction, label="Direction",
                                         info="Curtail: λ < 0, the finding fades; exaggerate: λ > 0")
                    with gr.Row():
                        frames = gr.Slider(4, 32, value=DEFAULT_FRAMES, step=1, label="Frames")
                        frame_duration_ms = gr.Slider(40, 400, value=PIPELINE_DEFAULTS.frame_duration_ms, step=10,
                                                      label="GIF: ms per frame")
                    range_mode = gr.Radio([RANGE_AUTOMATIC, RANGE_MANUAL], value=RANGE_AUTOMATIC, label="λ range",
                                          info="The automatic search stops where the prediction has moved enough")
                    with gr.Row(visible=False) as manual_range_row:
                        lambda_min = gr.Number(label="λ min (≤ 0)", maximum=0,
                                               info="Filled with the last range used")
                        lambda_max = gr.Number(label="λ max (≥ 0)", minimum=0)
                    with gr.Row():
                        step_size = gr.Slider(1, 100, value=PIPELINE_DEFAULTS.step_size, step=1,
                                              label="Search step (λ)")
                        ig_steps = gr.Slider(4, 64, value=DEFAULT_IG_STEPS, step=4,
                                             label="IG steps")
                with gr.Accordion("Models", open=False):
                    classifier = gr.Dropdown(classifier_choices, value=default_pipeline.classifier_id,
                                             label="Classifier", info=classifier_info)
                    autoencoder = gr.Dropdown(autoencoder_choices, value=default_pipeline.autoencoder_id,
                                              label="Autoencoder", info=autoencoder_info)

            # ---------------------------------------------------------------- outputs
            with gr.Column(scale=3, min_width=420):
                status = gr.Markdown("Upload a chest X-ray or click an example, then press **Explain**.",
                                     elem_id="status")
                with gr.Row(equal_height=False):
                    gif = gr.Image(label="Latent Shift GIF",
                                   type="filepath", interactive=False, height=400, scale=3,
                                   buttons=["download", "fullscreen"], elem_id="latent-shift-gif")
                    with gr.Column(scale=2, min_width=240):
                        predictions = gr.Label(label="Predicted probabilities", num_top_classes=8,
                                               show_heading=False)
                        prediction_plot = gr.Image(label="Prediction along the sweep", type="filepath",
                                                   interactive=False, height=250, buttons=["fullscreen"])
                with gr.Row():
                    heatmap = gr.Image(label="Latent Shift heatmap", type="filepath", interactive=False,
                                       height=320, buttons=["fullscreen"], elem_id="heatmap-map",
                                       show_label=False)  # the PNG carries its own title
                    gradcam = gr.Image(label="Grad-CAM", type="filepath", interactive=False, height=320,
                                       buttons=["fullscreen"], elem_id="gradcam-map", show_label=False)
                    integrated_gradients = gr.Image(label="Integrated Gradients", type="filepath",
                                                    interactive=False, height=320, buttons=["fullscreen"],
                                                    elem_id="integrated-gradients-map", show_label=False)
                with gr.Row(equal_height=False):
                    before_after = gr.ImageSlider(label="Before / after (drag)", type="filepath",
                                                  interactive=False, max_height=300)
                    downloads = gr.File(label="Downloads: GIF, PNGs, summary.json", file_count="multiple",
                                        interactive=False, height=300)

        # ------------------------------------------------------------ API-only components
        with gr.Column(visible=False):
            api_upload = gr.File(label="X-ray file (PNG, JPEG, TIFF or DICOM)", file_types=UPLOAD_FILE_TYPES)
            api_classifier = gr.Textbox(value="", label="classifier id ('' = embedded default)")
            api_autoencoder = gr.Textbox(value="", label="autoencoder id ('' = embedded default)")
            api_target = gr.Textbox(value="", label="finding ('' = top prediction)")
            api_direction = gr.Textbox(value=PIPELINE_DEFAULTS.direction, label="both | curtail | exaggerate")
            api_frames = gr.Number(value=DEFAULT_FRAMES, precision=0, label="frames")
            api_step_size = gr.Number(value=PIPELINE_DEFAULTS.step_size, label="step size")
            api_lambda_min = gr.Number(value=None, label="λ min (None with λ max None = automatic)")
            api_lambda_max = gr.Number(value=None, label="λ max")
            api_frame_duration = gr.Number(value=PIPELINE_DEFAULTS.frame_duration_ms, precision=0,
                                           label="ms per GIF frame")
            api_ig_steps = gr.Number(value=DEFAULT_IG_STEPS, precision=0, label="Integrated Gradients steps")
            api_probabilities = gr.JSON(label="probabilities")
            api_files = [gr.File(label=key) for key in EXPLAIN_API_FILES]
            api_predict_trigger = gr.Button()
            api_explain_trigger = gr.Button()

        result_images = [gif, heatmap, gradcam, integrated_gradients, prediction_plot, before_after, downloads]

        # ------------------------------------------------------------ handlers
        def cleared_results() -> dict:
            return {component: None for component in result_images}

        def predict_upload(path: str | None, classifier_id: str, autoencoder_id: str) -> dict:
            """Predictions for a new upload; the target follows the top prediction."""
            if not path:
                return {predictions: None, target: TOP_PREDICTION, **cleared_results(),
                        status: "Upload a chest X-ray or click an example, then press **Explain**."}
            with errors_for_people("reading the image and predicting"):
                pipeline = pipeline_for(classifier_id, autoencoder_id)
                image = pipeline.load_image(path)
                probabilities = pipeline.predict(image)
            top = max(probabilities, key=probabilities.get)
            notes = "".join(f"\n\nInput: {note}." for note in image.notes)
            return {predictions: probabilities, target: top, **cleared_results(),
                    status: f"Top prediction **{top}** (p = {probabilities[top]:.2f}). "
                            f"Press **Explain** for the GIF and the maps.{notes}"}

        def on_image_input(image_path, classifier_id, autoencoder_id):
            return {file_input: None, **predict_upload(image_path, classifier_id, autoencoder_id)}

        def on_file_upload(upload_path, classifier_id, autoencoder_id):
            return {image_input: None, **predict_upload(upload_path, classifier_id, autoencoder_id)}

        def on_predict_click(image_path, upload_path, classifier_id, autoencoder_id):
            return predict_upload(chosen_upload(image_path, upload_path), classifier_id, autoencoder_id)

        def on_models_change(classifier_id, autoencoder_id, image_path, upload_path):
            """Load the chosen pair (an unavailable model falls back to the default, with a warning),
            offer its findings as targets and predict the current upload again."""
            with errors_for_people("loading the models"):
                pipeline = pipeline_for(classifier_id, autoencoder_id)
            for warning in pipeline.warnings:
                gr.Warning(warning)
            values = {classifier: pipeline.classifier_id, autoencoder: pipeline.autoencoder_id,
                      target: gr.update(choices=target_choices(pipeline), value=TOP_PREDICTION)}
            if image_path or upload_path:
                prediction = predict_upload(image_path or upload_path, pipeline.classifier_id,
                                            pipeline.autoencoder_id)
                values[target] = gr.update(choices=target_choices(pipeline), value=prediction.pop(target))
                values.update(prediction)
            return values

        def on_range_mode_change(mode):
            return gr.update(visible=mode == RANGE_MANUAL)

        def explain_in_ui(image_path, upload_path, classifier_id, autoencoder_id, target_name, direction_value,
                          frame_count, step, mode, low, high, duration_ms, ig_step_count,
                          progress=gr.Progress()):
            """Stream the stages: predictions and Grad-CAM first, then the GIF, then IG."""
            path = chosen_upload(image_path, upload_path)
            options = explain_options(target_name, direction_value, frame_count, step, mode == RANGE_MANUAL,
                                      low, high, duration_ms, ig_step_count)
            shown_warnings = 0
            with errors_for_people("explaining the image"):
                progress(0, desc="Reading the image and predicting")
                pipeline = pipeline_for(classifier_id, autoencoder_id)
                image = pipeline.load_image(path)
                for explanation in pipeline.iter_explain(image, options, run_folders().new()):
                    for warning in explanation.warnings[shown_warnings:]:
                        gr.Warning(warning)
                    shown_warnings = len(explanation.warnings)
                    yield ui_values(explanation)
                    if explanation.stage in NEXT_STEP:
                        progress(NEXT_STEP[explanation.stage][0], desc=NEXT_STEP[explanation.stage][1])

        def ui_values(explanation: Explanation) -> dict:
            values = {
                predictions: explanation.predictions,
                target: explanation.target,
                status: describe_progress(explanation),
                gif: file_path(explanation, "gif"),
                heatmap: file_path(explanation, "heatmap"),
                gradcam: file_path(explanation, "gradcam"),
                integrated_gradients: file_path(explanation, "integrated_gradients"),
                prediction_plot: file_path(explanation, "prediction_plot"),
                before_after: None,
                downloads: [str(explanation.files[key]) for key in DOWNLOAD_ORDER if key in explanation.files]
                if explanation.stage == "done" else None,
            }
            after = shifted_end_frame(explanation)
            if after is not None:
                values[before_after] = (file_path(explanation, "input"), after)
            if explanation.shift is not None:
                values[lambda_min], values[lambda_max] = explanation.shift.lambda_range
            else:
                values[lambda_min] = values[lambda_max] = gr.skip()
            return values

        # ------------------------------------------------------------ wiring
        upload_events = dict(api_visibility="private", concurrency_id="predict",
                             concurrency_limit=PREDICT_CONCURRENCY, show_progress="minimal")
        prediction_outputs = [predictions, target, status, *result_images]
        image_input.input(on_image_input, [image_input, classifier, autoencoder],
                          [file_input, *prediction_outputs], trigger_mode="always_last", **upload_events)
        file_input.upload(on_file_upload, [file_input, classifier, autoencoder],
                          [image_input, *prediction_outputs], **upload_events)
        predict_button.click(on_predict_click, [image_input, file_input, classifier, autoencoder],
                             prediction_outputs, **upload_events)
        gr.on([classifier.change, autoencoder.change], on_models_change,
              [classifier, autoencoder, image_input, file_input],
              [classifier, autoencoder, *prediction_outputs], api_visibility="private", concurrency_id="predict",
              concurrency_limit=PREDICT_CONCURRENCY, show_progress="minimal")
        range_mode.change(on_range_mode_change, range_mode, manual_range_row, queue=False,
                          api_visibility="private", show_progress="hidden")

        explain_inputs = [image_input, file_input, classifier, autoencoder, target, direction, frames,
                          step_size, range_mode, lambda_min, lambda_max, frame_duration_ms, ig_steps]
        explain_outputs = [predictions, target, status, *result_images, lambda_min, lambda_max]
        explain_button.click(explain_in_ui, explain_inputs, explain_outputs, api_visibility="private",
                             concurrency_id="explain", concurrency_limit=EXPLAIN_CONCURRENCY)

        api_predict_trigger.click(predict, [api_upload, api_classifier], api_probabilities, api_name="predict",
                                  concurrency_id="predict", concurrency_limit=PREDICT_CONCURRENCY)
        api_explain_trigger.click(
            explain, [api_upload, api_classifier, api_autoencoder, api_target, api_direction, api_frames,
                      api_step_size, api_lambda_min, api_lambda_max, api_frame_duration, api_ig_steps],
            api_files, api_name="explain", concurrency_id="explain",
            concurrency_limit=EXPLAIN_CONCURRENCY)

        def explain_example(image_path, classifier_id, autoencoder_id, target_name, direction_value,
                            frame_count, step, mode, duration_ms, ig_step_count):
            """An example with the default settings (every input column needs a value to be cached)."""
            yield from explain_in_ui(image_path, None, classifier_id, autoencoder_id, target_name,
                                     direction_value, frame_count, step, mode, None, None, duration_ms,
                                     ig_step_count)

        if examples:
            with examples_slot:
                example_inputs = [image_input, classifier, autoencoder, target, direction, frames, step_size,
                                  range_mode, frame_duration_ms, ig_steps]
                example_rows = [[path, default_pipeline.classifier_id, default_pipeline.autoencoder_id,
                                 TOP_PREDICTION, PIPELINE_DEFAULTS.direction, DEFAULT_FRAMES,
                                 PIPELINE_DEFAULTS.step_size, RANGE_AUTOMATIC,
                                 PIPELINE_DEFAULTS.frame_duration_ms, DEFAULT_IG_STEPS] for path in examples]
                gallery = gr.Examples(
                    example_rows, example_inputs, explain_outputs, fn=explain_example, cache_examples=True,
                    cache_mode="lazy", visible_columns=[0], examples_per_page=12,
                    label="Examples (click one; results are computed once, then cached)", elem_id="examples")
                gallery.dataset.click(lambda: None, None, file_input, queue=False, api_visibility="private",
                                      show_progress="hidden")

    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=EXPLAIN_CONCURRENCY)
    return demo


def launch(demo: gr.Blocks, **overrides):
    """``demo.launch`` with the app's serving options; keyword arguments override them."""
    options = dict(max_file_size=MAX_FILE_SIZE, run_history=False, css=CSS,
                   theme=gr.themes.Soft(primary_hue="blue"), show_error=False)
    options.update(overrides)
    return demo.launch(**options)


def main(command_line: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A stop from the host (SIGTERM) exits like Ctrl-C, so the run folders are deleted at exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        demo = build_demo()
    except LatentShiftError as exc:
        raise SystemExit(f"cannot start the app: {exc}") from None
    launch(demo, server_name=command_line.host, server_port=command_line.port, share=command_line.share,
           root_path=command_line.root_path)


if __name__ == "__main__":
    main(COMMAND_LINE)
