"""The page: components, their places and their wiring to :mod:`.handlers`.

Layout only. Every component is kept in one dict by its output name, so the handlers'
plain return values (name -> value) become component updates in :func:`_by_component`.
The API endpoints ``/predict`` and ``/explain`` are ``gr.api`` functions, not hidden components.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from contextlib import aclosing
import warnings
from pathlib import Path
from typing import Any

import anyio
import gradio as gr
from gradio.data_classes import FileData

from ..options import DEFAULTS, DIRECTIONS, option_spec
from ..pipeline import list_models
from . import admission, handlers, serving
from .runs import OUTPUTS as EXPLAIN_OUTPUTS
from .runs import Runs, explain_endpoint, in_turn_or_busy, link_values
from .handlers import TOP_PREDICTION, UPLOAD_FILE_TYPES
from .serving import run_folders

# The examples give every input a value except the DICOM file and the manual λ range, on purpose.
warnings.filterwarnings("ignore", message="Examples will be cached but not all input components")

TITLE = "Gifsplanation via Latent Shift"
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
ADULT_EXAMPLES_DIR = EXAMPLES_DIR / "adult"
#: The finding the adult examples are explained for (their captions name it too).
ADULT_EXAMPLE_FINDING = "Cardiomegaly"
RANGE_AUTOMATIC = "Automatic search"
RANGE_MANUAL = "Manual λ range"
DIRECTION_LABELS = {"both": "Both", "curtail": "Curtail (fade)", "exaggerate": "Exaggerate"}
#: The options of a quick page-only event: not queued, not in the API, no progress shown.
QUICK = dict(queue=False, api_visibility="private", show_progress="hidden")

CSS = """
.disclaimer { border-left: 4px solid #d97706; background: #fffbeb; color: #78350f;
              padding: 8px 14px; border-radius: 6px; margin-bottom: 4px; }
.disclaimer p { margin: 0; }
.intro p { margin: 2px 0; }
#status { min-height: 2.5em; }
#outcome p { border-left: 4px solid #2563eb; background: #eff6ff; padding: 8px 14px; border-radius: 6px;
             font-size: 1.05em; margin: 0; }
/* Warnings (e.g. another population than the classifier's) as prominent as the outcome. */
#warnings p { border-left: 4px solid #d97706; background: #fffbeb; color: #78350f; padding: 8px 14px;
              border-radius: 6px; font-size: 1.05em; margin: 4px 0; }
/* "Not a chest X-ray": a red banner where the result would be. */
#banner p { border-left: 6px solid #b91c1c; background: #fef2f2; color: #7f1d1d; padding: 12px 16px;
            border-radius: 6px; font-size: 1.1em; margin: 0; }
#answering p { margin: 2px 0 6px; font-size: 0.92em; color: #374151; }
/* Label chips of the slider and the compare view sit above their content, not on it. */
#before-after .image-container { padding-top: 40px; }
#before-after .icon-button-wrapper.top-panel { top: 2px; }
/* Compare: each GIF whole (its prediction bar, λ scrubber and caption), not cropped to a fixed-height grid. */
#compare-gifs .grid-wrap { height: auto !important; max-height: none !important; overflow: visible !important;
                          padding-top: 34px; }
#compare-gifs .caption-label { position: static !important; display: block; margin: 4px auto 0; }
#compare-gifs .thumbnail-item { height: auto !important; aspect-ratio: auto !important; }
#compare-gifs .thumbnail-item img { height: auto !important; width: 100%; object-fit: contain !important; }
/* Download names in full (they wrap) rather than cut with an ellipsis. */
#downloads td.filename { display: table-cell !important; white-space: normal; overflow-wrap: anywhere; }
#downloads td.filename .stem, #downloads td.filename .ext { display: inline; overflow: visible; max-width: none;
                                                            text-overflow: clip; white-space: normal; }
/* Output images: room above the picture for the label, so it never covers the PNG's own title. */
.result-image .image-container, .result-image .image-frame { padding-top: 34px; }
.result-image .empty { min-height: 120px; }
/* Example thumbnails with their captions (finding), smaller than Gradio's default; one row per population. */
#examples button.gallery-item, #examples-adult button.gallery-item {
  display: inline-flex; flex-direction: column; align-items: center; }
#examples button.gallery-item img, #examples-adult button.gallery-item img { width: 72px; height: 72px;
                                                                             object-fit: cover; }
#examples button.gallery-item::after, #examples-adult button.gallery-item::after {
  content: attr(data-caption); font-size: 11px; line-height: 1.2; margin-top: 2px; }
#serving-line p { margin: 0; font-size: 0.92em; color: #374151; }
#downloads .file-preview td { padding-top: 3px; padding-bottom: 3px; }
@media (max-width: 768px) {
  #examples button.gallery-item img, #examples-adult button.gallery-item img { width: 52px; height: 52px; }
  /* Phones: shorter result boxes (the images keep their aspect ratio; fullscreen shows them large). */
  #heatmap-map, #gradcam-map, #integrated-gradients-map { height: 230px !important; }
  #latent-shift-gif, #prediction-plot { height: 300px !important; }
  #xray-upload { height: 240px !important; }
}
"""

#: After Explain on a narrow screen the view moves to the status line, the outcome and the results.
SCROLL_TO_RESULTS_JS = """() => { if (window.innerWidth < 768) {
  document.querySelector('#status')?.scrollIntoView({behavior: 'instant', block: 'start'}); } }"""
#: On load: captions on the example thumbnails (CAPTIONS: row elem_id -> captions); a DICOM or TIFF given to
#: the image box goes to the file box; on a narrow screen the settings accordion closes; then the body says
#: ``data-page-ready="true"`` (what a script driving the page waits for before it hands over files).
ON_LOAD_JS = """() => { const rows = CAPTIONS;
  const caption = () => Object.entries(rows).forEach(([row, captions]) =>
    document.querySelectorAll(`#${row} button.gallery-item`).forEach((item, i) => {
      if (captions[i]) { item.dataset.caption = captions[i]; item.title = captions[i];
                         item.querySelector('img')?.setAttribute('alt', captions[i]); } }));
  caption(); setTimeout(caption, 500); setTimeout(caption, 2000);
  /* A DICOM or TIFF given to the image box (dropped or picked) goes to the file box, which reads it. */
  const notForTheImageBox = /\\.(dcm|dicom|tif|tiff)$/i;
  const deliver = (file, tries) => {
    const fileInput = document.querySelector('#file-upload input[type=file]');
    if (!fileInput) {  /* the file box lives in a closed accordion: open it, then try again */
      if (tries === 0) document.querySelector('#file-accordion .label-wrap')?.click();
      if (tries < 20) setTimeout(() => deliver(file, tries + 1), 150);
      return; }
    const moved = new DataTransfer(); moved.items.add(file);
    fileInput.files = moved.files; fileInput.dispatchEvent(new Event('change', {bubbles: true})); };
  const handOver = (files, event) => {
    const file = (files && files[0]) || null;
    if (!file || !notForTheImageBox.test(file.name)) return false;
    event.preventDefault(); event.stopImmediatePropagation();
    deliver(file, 0);
    return true; };
  const box = document.querySelector('#xray-upload');
  if (box) {
    box.addEventListener('drop', (e) => handOver(e.dataTransfer && e.dataTransfer.files, e), true);
    box.addEventListener('change', (e) => {
      if (e.target.matches('input[type=file]') && handOver(e.target.files, e)) e.target.value = ''; }, true);
    box.querySelectorAll('input[type=file]').forEach((input) => {
      input.accept = 'image/*,.dcm,.dicom,.tif,.tiff'; });
  }
  if (window.innerWidth < 768) {
    const toggle = document.querySelector('#settings > button.label-wrap, #settings .label-wrap');
    if (toggle && toggle.classList.contains('open')) toggle.click();
  }
  document.body.dataset.pageReady = 'true'; }"""

INTRO = f"""
# {TITLE}
An autoencoder encodes the chest X-ray; the classifier's gradient with respect to the latent code z
gives a direction, and decoding z + λ·dy/dz over a range of λ gives the change each frame of the GIF
adds to your X-ray (which stays as sharp as you uploaded it): with λ below 0 the finding fades, with
λ above 0 it is exaggerated. Compare the animation with the Grad-CAM and Integrated Gradients maps.
Paper: [Cohen et al., MIDL 2021](https://arxiv.org/abs/2102.09475).
"""
DISCLAIMER = ("**Research and teaching demo, not for clinical use.** The default models are small "
              "models trained for this demo; do not use the predictions or images for diagnosis. "
              "Uploads are processed on this server; a finished explanation (with the input image) is kept "
              "for a while so that its link can be shared, then deleted.")


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
    """The pediatric example X-rays shipped with the app (read at start-up)."""
    return [str(path) for path in sorted(EXAMPLES_DIR.glob("*.png"))]


def adult_example_images() -> list[str]:
    """The adult example X-rays (NIH ChestX-ray14), each with the finding it shows."""
    return [str(path) for path in sorted(ADULT_EXAMPLES_DIR.glob("*.png"))]


def _slider(name: str, label: str) -> gr.Slider:
    """A slider whose range, step and default come from the options object."""
    spec = option_spec(name)
    low, high, step = spec["ui"]
    return gr.Slider(low, high, value=spec["default"], step=step, label=label)


def _by_component(c: dict[str, Any], values: dict[str, Any]) -> dict:
    """Handler values by output name -> Gradio updates by component."""
    updates = {c[name]: value for name, value in values.items()
               if name in c and name not in ("suggestion", "explain_anyway")}
    if "target_choices" in values:
        updates[c["target"]] = gr.update(choices=values["target_choices"], value=values.get("target"))
    if "suggestion" in values:
        suggested = values["suggestion"]
        updates[c["suggested_id"]] = suggested
        updates[c["suggest"]] = gr.update(visible=suggested is not None, value=values.get("suggestion_label") or "")
    if "explain_anyway" in values and not isinstance(values["explain_anyway"], dict):
        updates[c["explain_anyway"]] = gr.update(visible=bool(values["explain_anyway"]))
    return updates


def _input_column(c: dict, pipeline) -> None:
    c["image"] = XrayUpload(
        label="X-ray (PNG, JPEG, DICOM)", type="filepath", elem_id="xray-upload",
        image_mode=None, sources=["upload", "clipboard"], height=300, buttons=["fullscreen"])
    with gr.Accordion("…or a DICOM / TIFF file", open=False, elem_id="file-accordion"):
        c["file"] = gr.File(label="DICOM, TIFF or any X-ray file (16-bit PNGs keep their depth)",
                            file_types=UPLOAD_FILE_TYPES, height=120, elem_id="file-upload")
    c["examples_slot"] = gr.Column()
    with gr.Row():
        c["predict_button"] = gr.Button("Predict", variant="secondary", scale=1)
        c["explain_button"] = gr.Button("Explain", variant="primary", scale=2, elem_id="explain-button")
    c["target"] = gr.Dropdown(handlers.target_choices(pipeline), value=TOP_PREDICTION, label="Finding to explain",
                              info="Every finding a classifier here knows; choosing one picks the classifier "
                                   "that knows it and fits the image")
    classifier_choices, classifier_info = handlers.model_dropdown_choices("classifier")
    c["classifier"] = gr.Dropdown(classifier_choices, value=pipeline.classifier_id, label="Classifier",
                                  info=classifier_info, elem_id="classifier")
    c["answering"] = gr.Markdown("", elem_id="answering")
    _settings(c)
    with gr.Accordion("Autoencoder", open=False):
        autoencoder_choices, autoencoder_info = handlers.model_dropdown_choices("autoencoder")
        c["autoencoder"] = gr.Dropdown(autoencoder_choices, value=pipeline.autoencoder_id, label="Autoencoder",
                                       info=autoencoder_info)


def _settings(c: dict) -> None:
    with gr.Accordion("Latent Shift settings", open=True, elem_id="settings"):
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
    c["banner"] = gr.Markdown("", elem_id="banner")  # styled on its paragraph: nothing shows while empty
    c["explain_anyway"] = gr.Button("Explain anyway: run the models on an image that is not a chest X-ray "
                                    "(the result will mean nothing)", visible=False, variant="stop",
                                    elem_id="explain-anyway")
    c["outcome"] = gr.Markdown("", elem_id="outcome")
    c["warnings"] = gr.Markdown("", elem_id="warnings")
    c["suggested_id"] = gr.State(None)
    c["slider_frames"] = gr.State(None)
    c["suggest"] = gr.Button("", visible=False, variant="primary", elem_id="suggest-classifier")
    c["predictions"] = gr.Label(label="Predicted probabilities", num_top_classes=8, show_heading=False,
                                elem_id="predictions")
    with gr.Row(equal_height=False):
        c["gif"] = gr.Image(label="Latent Shift GIF", type="filepath", interactive=False, height=380,
                            buttons=["download", "fullscreen"], elem_id="latent-shift-gif",
                            elem_classes="result-image", min_width=260)
        c["prediction_plot"] = gr.Image(label="Prediction along the sweep", type="filepath", interactive=False,
                                        height=380, buttons=["fullscreen"], elem_id="prediction-plot",
                                        elem_classes="result-image", min_width=260)
    with gr.Row():
        for name, elem_id, label in (("heatmap", "heatmap-map", "Latent Shift heatmap"),
                                     ("gradcam", "gradcam-map", "Grad-CAM"),
                                     ("integrated_gradients", "integrated-gradients-map", "Integrated Gradients")):
            c[name] = gr.Image(label=label, type="filepath", interactive=False, height=330, min_width=160,
                               buttons=["fullscreen"], elem_id=elem_id, elem_classes="result-image")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=260):
            c["before_after"] = gr.ImageSlider(label=handlers.SLIDER_EMPTY_LABEL, type="filepath",
                                               interactive=False, max_height=300, elem_id="before-after")
            c["slider_caption"] = gr.Markdown("", elem_id="slider-caption")
            c["slider_pair"] = gr.Radio(handlers.SLIDER_PAIRS, value=handlers.SLIDER_PAIRS[0][1],
                                        label="Compare", elem_id="slider-pair")
        with gr.Column(min_width=260):
            c["downloads"] = gr.File(label="Downloads: GIF, PNGs, summary.json (with the outcome)",
                                     file_count="multiple", interactive=False, elem_id="downloads")
            c["share_link"] = gr.Markdown("", elem_id="share-link")


def default_runs() -> Runs:
    """Runs whose results live with the process's run folders (gone at exit): for an app built
    without the settings of :func:`latentshift.app.serving.parse_args`."""
    settings = serving.ResultSettings(folder=run_folders().root / "results")
    return Runs(admission.Line(serving.EXPLAIN_CONCURRENCY, serving.EXPLAIN_WAITING), settings.open_store(),
                settings.retention_days)


def build_demo(runs: Runs | None = None, delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
    """The app's Blocks (not launched). See :func:`latentshift.app.launch` for serving.

    runs: the admission line and result store (default: :func:`default_runs`); delete_cache: Gradio's
    (every s, older than s) for its copies of uploads and outputs (default ``serving.DELETE_CACHE``).
    """
    runs = runs or default_runs()
    serving.check_limits(runs.line.capacity)
    pipeline = handlers.pipeline_for(None, None)
    # Lazily cached example results belong to this server process and its models only.
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(run_folders().root / "cached_examples"))
    c: dict[str, Any] = {}
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=delete_cache or serving.DELETE_CACHE) as demo:
        gr.Markdown(INTRO, elem_classes="intro")
        gr.Markdown(DISCLAIMER, elem_classes="disclaimer")
        c["serving_line"] = gr.Markdown(handlers.serving_default().state().line(), elem_id="serving-line")
        with gr.Tabs():
            with gr.Tab("Explain", id="explain"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=320):
                        _input_column(c, pipeline)
                    with gr.Column(scale=3, min_width=420):
                        _output_column(c)
            with gr.Tab("Compare classifiers", id="compare") as c["compare_tab"]:
                _compare_tab(c, pipeline)
        _wire_uploads(c)
        _wire_explain(c, runs)
        _wire_compare(c, runs.line)
        _wire_api(runs)
        captions = {"examples": example_captions(example_images()),
                    "examples-adult": example_captions(adult_example_images())}
        demo.load(None, None, None, js=ON_LOAD_JS.replace("CAPTIONS", json.dumps(captions)), queue=False,
                  api_visibility="private")
        # Each page load shows the pair that answers now (a background fetch may have made it the paper's).
        demo.load(lambda: _by_component(c, handlers.serving_values()), None,
                  [c[n] for n in ("serving_line", "classifier", "autoencoder", "target")], **QUICK)
        _wire_links(demo, c, runs)
    demo.queue(max_size=serving.QUEUE_MAX_SIZE, default_concurrency_limit=serving.EXPLAIN_CONCURRENCY)
    demo.result_paths = [str(runs.store.root)]  # served files: server.launch adds them to allowed_paths
    return demo


#: What an upload, the Predict button or a model change updates.
UPLOAD_OUTPUTS = ("image", "file", "predictions", "target", "status", "outcome", "warnings",
                  *handlers.RESULT_NAMES, "slider_caption",
                  "slider_frames", "suggest", "suggested_id", "banner", "explain_anyway")


def _only(c: dict, names, values: dict[str, Any]) -> dict:
    """Updates of exactly ``names`` (what a handler did not set is skipped)."""
    chosen = {name: values.get(name, gr.skip()) for name in names if name not in ("suggest", "suggested_id")}
    for special in ("suggestion", "suggestion_label", "target_choices"):
        if special in values:
            chosen[special] = values[special]
    return _by_component(c, chosen)


def _predicted(compute, *args) -> dict[str, Any]:
    """A prediction's values; a refused upload says why once (a toast and the status line), clears
    the results and the upload box, and raises nothing, so no output box shows an error badge."""
    try:
        return compute(*args)
    except gr.Error as error:
        gr.Warning(error.message, duration=8)
        return {**handlers.refusal_values(error.message), "image": None, "file": None, "suggestion": None}


def _wire_uploads(c: dict) -> None:
    events = dict(api_visibility="private", concurrency_id="predict", concurrency_limit=serving.PREDICT_CONCURRENCY,
                  show_progress="minimal", show_progress_on=[c["predictions"]])
    outputs = [c[n] for n in UPLOAD_OUTPUTS]

    def on_image(image_path, classifier_id, autoencoder_id):
        values = _predicted(handlers.predict_upload, image_path, classifier_id, autoencoder_id)
        return _only(c, UPLOAD_OUTPUTS, {"file": None, **values})

    def on_file(upload_path, classifier_id, autoencoder_id):
        values = _predicted(handlers.predict_upload, upload_path, classifier_id, autoencoder_id)
        return _only(c, UPLOAD_OUTPUTS, {"image": None, **values})

    def on_predict(image_path, upload_path, classifier_id, autoencoder_id):
        values = _predicted(lambda: handlers.predict_upload(handlers.chosen_upload(image_path, upload_path),
                                                            classifier_id, autoencoder_id))
        return _only(c, UPLOAD_OUTPUTS, values)

    def on_models(classifier_id, autoencoder_id, image_path, upload_path):
        values = _predicted(handlers.change_models, classifier_id, autoencoder_id, image_path or upload_path)
        for warning in values.pop("model_warnings", []):
            gr.Warning(warning)
        return _only(c, ("classifier", "autoencoder", *UPLOAD_OUTPUTS), values)

    models = [c["classifier"], c["autoencoder"]]
    c["image"].input(on_image, [c["image"], *models], outputs, trigger_mode="always_last", **events)
    c["file"].upload(on_file, [c["file"], *models], outputs, **events)
    c["predict_button"].click(on_predict, [c["image"], c["file"], *models], outputs, **events)
    # A person's choice of models reloads and predicts again; values set by the page (an example row with
    # its own pair, the serving default at page load) do not, so they never clear a result being shown.
    gr.on([c["classifier"].input, c["autoencoder"].input], on_models, [*models, c["image"], c["file"]],
          [*models, *outputs], **events)
    c["suggest"].click(lambda suggested: suggested or gr.skip(), c["suggested_id"], c["classifier"], **QUICK).then(
        on_models, [*models, c["image"], c["file"]], [*models, *outputs], **events)
    def on_finding(finding, classifier_id, autoencoder_id, image_path, upload_path):
        values = _predicted(handlers.choose_finding, finding, classifier_id, autoencoder_id, image_path or upload_path)
        for warning in values.pop("model_warnings", []):
            gr.Warning(warning)
        return _only(c, ("classifier", "autoencoder", "answering", *UPLOAD_OUTPUTS), values)

    c["target"].input(on_finding, [c["target"], *models, c["image"], c["file"]],
                      [*models, c["answering"], *outputs], **events)
    c["range_mode"].change(lambda mode: gr.update(visible=mode == RANGE_MANUAL), c["range_mode"],
                           c["manual_range_row"], **QUICK)
    c["slider_pair"].change(lambda frames, pair: _by_component(c, handlers.slider_value(frames, pair)),
                            [c["slider_frames"], c["slider_pair"]], [c["before_after"], c["slider_caption"]], **QUICK)


EXPLAIN_INPUTS = ("image", "file", "classifier", "autoencoder", "target", "direction", "frames", "step_size",
                  "range_mode", "lambda_min", "lambda_max", "frame_duration_ms", "ig_steps")
#: The result boxes that show progress while a run computes (never the status line).
PROGRESS_ON = ("gif", "heatmap", "prediction_plot", "integrated_gradients")


def _wire_explain(c: dict, runs: Runs) -> None:
    """Explain: one streamed event (:mod:`.runs`); each stage's outputs appear as the stage ends."""

    async def explain_run(image_path, upload_path, classifier_id, autoencoder_id, target_name, direction,
                          frame_count, step, mode, low, high, duration_ms, ig_step_count, allow_non_xray=False):
        try:
            path = handlers.chosen_upload(image_path, upload_path)
            options = handlers.explain_options(target_name, direction, frame_count, step, mode == RANGE_MANUAL,
                                               low, high, duration_ms, ig_step_count, allow_non_xray=allow_non_xray)
        except gr.Error as error:
            yield _only(c, EXPLAIN_OUTPUTS, {**handlers.refusal_values(error.message), "share_link": ""})
            return
        async with aclosing(runs.explain(path, classifier_id, autoencoder_id, options)) as updates:
            async for values in updates:
                yield _only(c, EXPLAIN_OUTPUTS, values)

    inputs, outputs = [c[n] for n in EXPLAIN_INPUTS], [c[n] for n in EXPLAIN_OUTPUTS]
    # No Gradio concurrency limit: the run waits in the admission line (which says so), not in Gradio's queue.
    run = dict(concurrency_id="explain-page", concurrency_limit=None, show_progress="minimal",
               show_progress_on=[c[n] for n in PROGRESS_ON])
    c["explain_button"].click(explain_run, inputs, outputs, api_name="explain_page", api_visibility="undocumented",
                              **run)
    c["explain_button"].click(None, None, None, js=SCROLL_TO_RESULTS_JS, queue=False, api_visibility="private")

    async def explain_anyway(*inputs):
        async with aclosing(explain_run(*inputs, allow_non_xray=True)) as updates:
            async for update in updates:
                yield update

    c["explain_anyway"].click(explain_anyway, inputs, outputs, api_visibility="private", **run)
    _examples(c, runs.line)


#: What a shared link sets besides the result: the input and the models, so it can be run again.
LINK_INPUTS = ("image", "classifier", "autoencoder")


def _wire_links(demo: gr.Blocks, c: dict, runs: Runs) -> None:
    """A page opened with ``?result=<id>`` shows that stored result, or says why it cannot."""
    names = (*EXPLAIN_OUTPUTS, *LINK_INPUTS)

    def open_link(request: gr.Request):
        result_id = request.query_params.get("result") if request else None
        if not result_id:
            return _only(c, names, {})
        return _only(c, names, link_values(runs.store.lookup(result_id.strip()), runs.retention_days))

    demo.load(open_link, None, [c[n] for n in names], api_visibility="private",
              show_progress="hidden", concurrency_id="links", concurrency_limit=4)


def example_captions(paths: list[str]) -> list[str]:
    """What each example shows, from its file name (normal-… / pneumonia-… / cardiomegaly-…); the
    source is in the row's label."""
    return [Path(path).name.split("-", 1)[0].capitalize() for path in paths]


#: Example inputs: the image, the pair that explains it and its target, then the default settings.
EXAMPLE_INPUTS = ("image", "classifier", "autoencoder", "example_target", "direction", "frames", "step_size",
                  "range_mode", "frame_duration_ms", "ig_steps")
#: What an example's (cached) run shows: an explanation's outputs but the target dropdown, whose choices
#: follow the example's classifier in the event after it (a cached result cannot update choices), and the
#: "Explain anyway" button (the examples are chest X-rays; a cached result cannot update a button either).
EXAMPLE_OUTPUTS = tuple(name for name in EXPLAIN_OUTPUTS if name not in ("target", "explain_anyway"))


def _examples(c: dict, line: admission.Line) -> None:
    """Two labelled rows of examples, each explained by the pair trained on its population: children
    (Kermany) with the embedded pediatric pair, adults (NIH) for Cardiomegaly with the best adult pair."""

    def explain_example(image_path, classifier_id, autoencoder_id, target_name, direction, frame_count, step,
                        mode, duration_ms, ig_step_count):
        """An example with the default settings (every input column needs a value to be cached), run in
        its turn of the admission line like any explanation; a full line refuses it with the busy message
        (an error is not cached, so the next click tries again)."""
        options = handlers.explain_options(target_name, direction, frame_count, step, False, None, None,
                                           duration_ms, ig_step_count)
        with in_turn_or_busy(line):
            for explanation in handlers.iter_explanation(image_path, classifier_id, autoencoder_id, options):
                yield _only(c, EXAMPLE_OUTPUTS, {**handlers.result_values(explanation), "share_link": ""})

    def example_targets(classifier_id, autoencoder_id, target_name):
        return _by_component(c, handlers.example_targets(classifier_id, autoencoder_id, target_name))

    # The row's target goes to the pipeline through this hidden box, not the target dropdown, whose
    # choices belong to the classifier shown before the click; the run's outputs set the dropdown.
    c["example_target"] = gr.Textbox(visible=False)
    settings = [DEFAULTS.direction, DEFAULTS.frames, DEFAULTS.step_size, RANGE_AUTOMATIC,
                DEFAULTS.frame_duration_ms, DEFAULTS.ig_steps]
    rows = (
        ("examples", example_images(), handlers.example_pair("pediatric", "Pneumonia"), TOP_PREDICTION,
         "Children: normal, pneumonia (Kermany et al. 2018, CC BY 4.0)"),
        ("examples-adult", adult_example_images(), handlers.example_pair("adult", ADULT_EXAMPLE_FINDING),
         ADULT_EXAMPLE_FINDING, f"Adults: {ADULT_EXAMPLE_FINDING.lower()} (NIH ChestX-ray14, NIH Clinical Center)"),
    )
    with c["examples_slot"]:
        for elem_id, paths, pair, target, label in rows:
            if not paths or pair is None:
                continue
            gallery = gr.Examples(
                [[path, *pair, target, *settings] for path in paths], [c[n] for n in EXAMPLE_INPUTS],
                [c[n] for n in EXAMPLE_OUTPUTS], fn=explain_example, cache_examples=True, cache_mode="lazy",
                visible_columns=[0], examples_per_page=12, elem_id=elem_id,
                label=f"{label} · explained with {pair[0]} + {pair[1]}")
            gallery.cache_event.then(example_targets, [c["classifier"], c["autoencoder"], c["example_target"]],
                                     c["target"], **QUICK)
            gallery.dataset.click(lambda: None, None, c["file"], **QUICK)


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
                                              label="Finding", info="every available classifier with it is run",
                                              elem_id="compare-target")
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
                                           object_fit="contain", allow_preview=True, elem_id="compare-gifs")
            c["compare_plot"] = gr.Image(label="Prediction vs λ, every classifier", type="filepath",
                                         interactive=False, buttons=["fullscreen"], elem_id="compare-plot",
                                         elem_classes="result-image", height=420)
            c["compare_summary"] = gr.File(label="compare.json", interactive=False)


def _top_finding(predictions) -> str | None:
    """The top label of the predictions box's value (None when empty)."""
    if isinstance(predictions, dict) and "label" in predictions:
        return predictions.get("label")
    if isinstance(predictions, dict) and predictions:
        return max(predictions, key=predictions.get)
    return None


def _wire_compare(c: dict, line: admission.Line) -> None:
    """Compare: one streamed event in the same admission line as Explain, starting from the Explain
    tab's image and finding."""

    def from_explain_tab(image_path, target, predictions):
        finding = target or _top_finding(predictions)
        return {c["compare_image"]: image_path or gr.skip(),
                c["compare_target"]: finding if finding in handlers.all_findings() else gr.skip()}

    c["compare_tab"].select(from_explain_tab, [c["image"], c["target"], c["predictions"]],
                            [c["compare_image"], c["compare_target"]], **QUICK)

    async def on_compare(path, target, classifier_ids, autoencoder_id, frames, step):
        try:
            ticket = line.admit()
        except admission.LineFull as full:
            gr.Warning(str(full), duration=10)
            yield {c["compare_lines"]: f"**{full}**"}
            return
        with ticket:
            async with aclosing(ticket.turn()) as turns:
                async for ahead in turns:
                    yield {c["compare_lines"]: admission.waiting_text(ahead)}
            try:
                comparison = await anyio.to_thread.run_sync(handlers.compare_upload, path, target, classifier_ids,
                                                            autoencoder_id, frames, step)
            except gr.Error as error:
                yield {c["compare_lines"]: f"⚠ **Not compared.** {error.message}"}
                return
        yield _by_component(c, handlers.compare_values(comparison))

    outputs = [c[n] for n in ("compare_gifs", "compare_plot", "compare_lines", "compare_summary")]
    c["compare_button"].click(on_compare, [c["compare_image"], c["compare_target"], c["compare_classifiers"],
                                           c["autoencoder"], c["compare_frames"], c["compare_step"]], outputs,
                              api_visibility="private", concurrency_id="explain-page", concurrency_limit=None,
                              show_progress="minimal", show_progress_on=[c["compare_gifs"], c["compare_plot"]])


def typed(function):
    """``function`` with its annotations evaluated: ``gr.api`` reads its parameters and outputs from the
    signature, and postponed (string) annotations would make every output "Any"."""
    function.__signature__ = inspect.signature(function, eval_str=True)
    return function


def admitted(line: admission.Line, function):
    """``function`` run in its turn of the admission line; a full line raises the busy message."""

    @functools.wraps(function)
    def in_turn(*args, **kwargs):
        with in_turn_or_busy(line):
            return function(*args, **kwargs)

    return typed(in_turn)


def _wire_api(runs: Runs) -> None:
    """The API: /predict and /result beside the line; /explain and /compare wait in it (a worker thread each)."""
    line = runs.line
    heavy = dict(concurrency_id="api-heavy", concurrency_limit=line.capacity)

    def result(result_id: str) -> tuple[str, FileData | None, FileData | None]:
        """A stored result by the id of its link (``?result=<id>``).

        Returns (state: ok | expired | deleted | missing | unknown, summary.json, GIF); files only when ok.
        """
        found = runs.store.lookup((result_id or "").strip())
        if found.result is None:
            return found.state, None, None
        return "ok", *(handlers.file_data(found.result.file(name)) for name in ("summary", "gif"))

    gr.api(typed(result), api_name="result", concurrency_id="links", concurrency_limit=4)
    gr.api(admitted(line, handlers.compare_api), api_name="compare", **heavy)
    gr.api(typed(handlers.predict), api_name="predict", concurrency_id="predict",
           concurrency_limit=serving.PREDICT_CONCURRENCY)
    gr.api(typed(explain_endpoint(runs)), api_name="explain", **heavy)
    name_outputs("explain", handlers.EXPLAIN_API_FILES)
    name_outputs("compare", ("gifs", "plot", "compare_json", "lines"))
    name_outputs("result", ("state", "summary", "gif"))
    name_outputs("predict", ("probabilities",))


def name_outputs(api_name: str, names) -> None:
    """Name a ``gr.api`` endpoint's outputs (its API info says "1st", "2nd", … otherwise)."""
    blocks = gr.context.Context.root_block
    function = next(f for f in blocks.fns.values() if f.api_name == api_name)
    if len(function.outputs) != len(names):
        raise ValueError(f"/{api_name} has {len(function.outputs)} outputs, not {len(names)}")
    for component, name in zip(function.outputs, names):
        component.label = name
