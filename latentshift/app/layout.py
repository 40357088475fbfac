"""The page: components, their places and their wiring to :mod:`.handlers`.

Layout only. Every component is kept in one dict by its output name, so the handlers'
plain return values (name -> value) become component updates in :func:`_by_component`.
The API endpoints ``/predict`` and ``/explain`` are ``gr.api`` functions, not hidden components.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import gradio as gr

from ..options import DEFAULTS, DIRECTIONS, option_spec
from ..pipeline import list_models
from . import handlers, serving
from .handlers import TOP_PREDICTION, UPLOAD_FILE_TYPES
from .serving import run_folders

# The examples give every input a value except the DICOM file and the manual λ range, on purpose.
warnings.filterwarnings("ignore", message="Examples will be cached but not all input components")

TITLE = "Gifsplanation via Latent Shift"
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
RANGE_AUTOMATIC = "Automatic search"
RANGE_MANUAL = "Manual λ range"
DIRECTION_LABELS = {"both": "Both", "curtail": "Curtail (fade)", "exaggerate": "Exaggerate"}

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


def example_images() -> list[str]:
    """The example X-rays shipped with the app (read at start-up)."""
    return [str(path) for path in sorted(EXAMPLES_DIR.glob("*.png"))]


def _slider(name: str, label: str) -> gr.Slider:
    """A slider whose range, step and default come from the options object."""
    spec = option_spec(name)
    low, high, step = spec["ui"]
    return gr.Slider(low, high, value=spec["default"], step=step, label=label)


def _by_component(c: dict[str, Any], values: dict[str, Any]) -> dict:
    """Handler values by output name -> Gradio updates by component."""
    updates = {c[name]: value for name, value in values.items() if name in c and name != "suggestion"}
    if "target_choices" in values:
        updates[c["target"]] = gr.update(choices=values["target_choices"], value=values.get("target"))
    if "suggestion" in values:
        suggested = values["suggestion"]
        updates[c["suggested_id"]] = suggested
        updates[c["suggest"]] = gr.update(visible=suggested is not None,
                                          value=f"Use {suggested}, trained on this population" if suggested else "")
    return updates


def _input_column(c: dict, pipeline) -> None:
    c["image"] = XrayUpload(
        label="Chest X-ray (PNG or JPEG; 16-bit PNGs keep their depth)", type="filepath",
        image_mode=None, sources=["upload", "clipboard"], height=300, buttons=["fullscreen"])
    c["file"] = gr.File(label="…or a DICOM / TIFF file", file_types=UPLOAD_FILE_TYPES, height=120)
    c["examples_slot"] = gr.Column()
    with gr.Row():
        c["predict_button"] = gr.Button("Predict", variant="secondary", scale=1)
        c["explain_button"] = gr.Button("Explain", variant="primary", scale=2)
    c["target"] = gr.Dropdown(handlers.target_choices(pipeline), value=TOP_PREDICTION, label="Finding to explain",
                              info="Filled from the classifier; set to its top prediction after each prediction")
    _settings(c)
    with gr.Accordion("Models", open=False):
        classifier_choices, classifier_info = handlers.model_dropdown_choices("classifier")
        autoencoder_choices, autoencoder_info = handlers.model_dropdown_choices("autoencoder")
        c["classifier"] = gr.Dropdown(classifier_choices, value=pipeline.classifier_id, label="Classifier",
                                      info=classifier_info)
        c["autoencoder"] = gr.Dropdown(autoencoder_choices, value=pipeline.autoencoder_id, label="Autoencoder",
                                       info=autoencoder_info)


def _settings(c: dict) -> None:
    with gr.Accordion("Latent Shift settings", open=True):
        c["direction"] = gr.Radio([(DIRECTION_LABELS[d], d) for d in DIRECTIONS], value=DEFAULTS.direction,
                                  label="Direction", info="Curtail: λ < 0, the finding fades; exaggerate: λ > 0")
        with gr.Row():
            c["frames"] = _slider("frames", "Frames")
            c["frame_duration_ms"] = _slider("frame_duration_ms", "GIF: ms per frame")
        c["range_mode"] = gr.Radio([RANGE_AUTOMATIC, RANGE_MANUAL], value=RANGE_AUTOMATIC, label="λ range",
                                   info="The automatic search stops where the prediction has moved enough")
        with gr.Row(visible=False) as c["manual_range_row"]:
            c["lambda_min"] = gr.Number(label="λ min (≤ 0)", maximum=0, info="Filled with the last range used")
            c["lambda_max"] = gr.Number(label="λ max (≥ 0)", minimum=0)
        with gr.Row():
            c["step_size"] = _slider("step_size", "Search step (λ)")
            c["ig_steps"] = _slider("ig_steps", "IG steps")


def _output_column(c: dict) -> None:
    c["status"] = gr.Markdown(handlers.READY_TEXT, elem_id="status")
    c["suggested_id"] = gr.State(None)
    c["suggest"] = gr.Button("", visible=False, variant="secondary", size="sm", elem_id="suggest-classifier")
    with gr.Row(equal_height=False):
        c["gif"] = gr.Image(label="Latent Shift GIF", type="filepath", interactive=False, height=400, scale=3,
                            buttons=["download", "fullscreen"], elem_id="latent-shift-gif")
        with gr.Column(scale=2, min_width=240):
            c["predictions"] = gr.Label(label="Predicted probabilities", num_top_classes=8, show_heading=False)
            c["prediction_plot"] = gr.Image(label="Prediction along the sweep", type="filepath",
                                            interactive=False, height=250, buttons=["fullscreen"])
    with gr.Row():
        for name, elem_id, label in (("heatmap", "heatmap-map", "Latent Shift heatmap"),
                                     ("gradcam", "gradcam-map", "Grad-CAM"),
                                     ("integrated_gradients", "integrated-gradients-map", "Integrated Gradients")):
            c[name] = gr.Image(label=label, type="filepath", interactive=False, height=320,
                               buttons=["fullscreen"], elem_id=elem_id, show_label=False)  # PNGs carry titles
    with gr.Row(equal_height=False):
        c["before_after"] = gr.ImageSlider(label="Before / after (drag)", type="filepath", interactive=False,
                                           max_height=300)
        c["downloads"] = gr.File(label="Downloads: GIF, PNGs, summary.json", file_count="multiple",
                                 interactive=False, height=300)


def build_demo() -> gr.Blocks:
    """The app's Blocks (not launched). See :func:`latentshift.app.launch` for serving."""
    pipeline = handlers.pipeline_for(None, None)
    # Lazily cached example results belong to this server process and its models only.
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(run_folders().root / "cached_examples"))
    c: dict[str, Any] = {}
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=serving.DELETE_CACHE) as demo:
        gr.Markdown(INTRO, elem_classes="intro")
        gr.Markdown(DISCLAIMER, elem_classes="disclaimer")
        with gr.Tabs():
            with gr.Tab("Explain", id="explain"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=320):
                        _input_column(c, pipeline)
                    with gr.Column(scale=3, min_width=420):
                        _output_column(c)
            with gr.Tab("Compare classifiers", id="compare"):
                _compare_tab(c, pipeline)
        _wire_uploads(c)
        _wire_explain(c, pipeline)
        _wire_compare(c)
        _wire_api()
    demo.queue(max_size=serving.QUEUE_MAX_SIZE, default_concurrency_limit=serving.EXPLAIN_CONCURRENCY)
    return demo


def _wire_uploads(c: dict) -> None:
    events = dict(api_visibility="private", concurrency_id="predict",
                  concurrency_limit=serving.PREDICT_CONCURRENCY, show_progress="minimal")
    outputs = [c[n] for n in ("predictions", "target", "status", *handlers.RESULT_NAMES, "suggest", "suggested_id")]

    def on_image(image_path, classifier_id, autoencoder_id):
        return _by_component(c, {"file": None, **handlers.predict_upload(image_path, classifier_id, autoencoder_id)})

    def on_file(upload_path, classifier_id, autoencoder_id):
        return _by_component(c, {"image": None, **handlers.predict_upload(upload_path, classifier_id, autoencoder_id)})

    def on_predict(image_path, upload_path, classifier_id, autoencoder_id):
        path = handlers.chosen_upload(image_path, upload_path)
        return _by_component(c, handlers.predict_upload(path, classifier_id, autoencoder_id))

    def on_models(classifier_id, autoencoder_id, image_path, upload_path):
        values = handlers.change_models(classifier_id, autoencoder_id, image_path or upload_path)
        for warning in values.pop("warnings"):
            gr.Warning(warning)
        return _by_component(c, values)

    models = [c["classifier"], c["autoencoder"]]
    c["image"].input(on_image, [c["image"], *models], [c["file"], *outputs], trigger_mode="always_last", **events)
    c["file"].upload(on_file, [c["file"], *models], [c["image"], *outputs], **events)
    c["predict_button"].click(on_predict, [c["image"], c["file"], *models], outputs, **events)
    gr.on([c["classifier"].change, c["autoencoder"].change], on_models, [*models, c["image"], c["file"]],
          [*models, *outputs], **events)
    c["suggest"].click(lambda suggested: suggested or gr.skip(), c["suggested_id"], c["classifier"], queue=False,
                       api_visibility="private", show_progress="hidden")
    c["range_mode"].change(lambda mode: gr.update(visible=mode == RANGE_MANUAL), c["range_mode"],
                           c["manual_range_row"], queue=False, api_visibility="private", show_progress="hidden")


def _explain_in_ui(c: dict, image_path, upload_path, classifier_id, autoencoder_id, target_name, direction,
                   frame_count, step, mode, low, high, duration_ms, ig_step_count, progress):
    """Stream the stages: predictions and Grad-CAM first, then the GIF, then IG."""
    path = handlers.chosen_upload(image_path, upload_path)
    options = handlers.explain_options(target_name, direction, frame_count, step, mode == RANGE_MANUAL,
                                       low, high, duration_ms, ig_step_count)
    shown_warnings = 0
    progress(0, desc="Reading the image and predicting")
    for explanation in handlers.iter_explanation(path, classifier_id, autoencoder_id, options):
        for warning in explanation.warnings[shown_warnings:]:
            gr.Warning(warning["message"])
        shown_warnings = len(explanation.warnings)
        values = handlers.result_values(explanation)
        values.setdefault("lambda_min", gr.skip())
        values.setdefault("lambda_max", gr.skip())
        yield _by_component(c, values)
        if explanation.stage in handlers.NEXT_STEP:
            progress(handlers.NEXT_STEP[explanation.stage][0], desc=handlers.NEXT_STEP[explanation.stage][1])


def _wire_explain(c: dict, pipeline) -> None:
    inputs = [c[n] for n in ("image", "file", "classifier", "autoencoder", "target", "direction", "frames",
                             "step_size", "range_mode", "lambda_min", "lambda_max", "frame_duration_ms", "ig_steps")]
    outputs = [c[n] for n in ("predictions", "target", "status", *handlers.RESULT_NAMES, "lambda_min",
                              "lambda_max")]

    def explain_in_ui(*values, progress=gr.Progress()):
        yield from _explain_in_ui(c, *values, progress=progress)

    c["explain_button"].click(explain_in_ui, inputs, outputs, api_visibility="private", concurrency_id="explain",
                              concurrency_limit=serving.EXPLAIN_CONCURRENCY)
    _examples(c, pipeline, outputs)


def _examples(c: dict, pipeline, outputs: list) -> None:
    examples = example_images()
    if not examples:
        return
    names = ("image", "classifier", "autoencoder", "target", "direction", "frames", "step_size", "range_mode",
             "frame_duration_ms", "ig_steps")

    def explain_example(image_path, classifier_id, autoencoder_id, target_name, direction, frame_count, step,
                        mode, duration_ms, ig_step_count):
        """An example with the default settings (every input column needs a value to be cached)."""
        yield from _explain_in_ui(c, image_path, None, classifier_id, autoencoder_id, target_name, direction,
                                  frame_count, step, mode, None, None, duration_ms, ig_step_count,
                                  progress=gr.Progress())

    rows = [[path, pipeline.classifier_id, pipeline.autoencoder_id, TOP_PREDICTION, DEFAULTS.direction,
             DEFAULTS.frames, DEFAULTS.step_size, RANGE_AUTOMATIC, DEFAULTS.frame_duration_ms, DEFAULTS.ig_steps]
            for path in examples]
    with c["examples_slot"]:
        gallery = gr.Examples(rows, [c[n] for n in names], outputs, fn=explain_example, cache_examples=True,
                              cache_mode="lazy", visible_columns=[0], examples_per_page=12,
                              label="Examples (click one; results are computed once, then cached)",
                              elem_id="examples")
        gallery.dataset.click(lambda: None, None, c["file"], queue=False, api_visibility="private",
                              show_progress="hidden")


def _compare_tab(c: dict, pipeline) -> None:
    gr.Markdown("One X-ray, one finding, every classifier that has it, on one shared autoencoder: the GIFs side "
                "by side with the same frame count, all prediction curves in one plot, and one line per "
                "classifier saying where its search stopped and whether it crossed its threshold.")
    classifier_choices, _ = handlers.model_dropdown_choices("classifier")
    available = [choice.id for choice in list_models("classifier") if choice.available]
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            c["compare_image"] = XrayUpload(label="Chest X-ray", type="filepath", image_mode=None,
                                            sources=["upload", "clipboard"], height=260, buttons=["fullscreen"])
            findings = handlers.all_findings()
            c["compare_target"] = gr.Dropdown(findings, value="Pneumonia" if "Pneumonia" in findings else None,
                                              label="Finding", info="every available classifier with it is run")
            c["compare_classifiers"] = gr.CheckboxGroup(classifier_choices, value=available, label="Classifiers",
                                                        info="unavailable ones say why; those without the "
                                                             "finding are skipped with the reason")
            with gr.Row():
                c["compare_frames"] = _slider("frames", "Frames")
                c["compare_step"] = _slider("step_size", "Search step (λ)")
            c["compare_button"] = gr.Button("Compare", variant="primary")
        with gr.Column(scale=3, min_width=400):
            c["compare_lines"] = gr.Markdown("Choose a finding and press **Compare**.", elem_id="compare-lines")
            c["compare_gifs"] = gr.Gallery(label="Latent Shift GIF per classifier", columns=2, height="auto",
                                           object_fit="contain", elem_id="compare-gifs")
            c["compare_plot"] = gr.Image(label="Prediction vs λ, every classifier", type="filepath",
                                         interactive=False, buttons=["fullscreen"])
            c["compare_summary"] = gr.File(label="compare.json", interactive=False)


def _wire_compare(c: dict) -> None:
    def on_compare(path, target, classifier_ids, autoencoder_id, frames, step, progress=gr.Progress()):
        progress(0, desc="Running every classifier")
        comparison = handlers.compare_upload(path, target, classifier_ids, autoencoder_id, frames, step)
        return _by_component(c, handlers.compare_values(comparison))

    outputs = [c[n] for n in ("compare_gifs", "compare_plot", "compare_lines", "compare_summary")]
    c["compare_button"].click(on_compare, [c["compare_image"], c["compare_target"], c["compare_classifiers"],
                                           c["autoencoder"], c["compare_frames"], c["compare_step"]], outputs,
                              api_visibility="private", concurrency_id="explain",
                              concurrency_limit=serving.EXPLAIN_CONCURRENCY)


def _wire_api() -> None:
    gr.api(handlers.compare_api, api_name="compare", concurrency_id="explain",
           concurrency_limit=serving.EXPLAIN_CONCURRENCY)
    gr.api(handlers.predict, api_name="predict", concurrency_id="predict",
           concurrency_limit=serving.PREDICT_CONCURRENCY)
    gr.api(handlers.explain, api_name="explain", concurrency_id="explain",
           concurrency_limit=serving.EXPLAIN_CONCURRENCY)
