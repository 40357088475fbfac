"""The reading page and the study's API: ``/study_next`` and ``/study_rate``.

A reader enters a code and sees one case at a time in the current condition only (the
prediction in words plus the Grad-CAM and IG overlays, or the Latent Shift GIF), never the
ground truth or the other condition, and rates it 1-5 by button or key. ``StudyService``
holds the plain functions (testable without a browser); :func:`build_app` lays out the page.
"""

from __future__ import annotations

import logging
import signal
import sys
from functools import partial
from pathlib import Path

import gradio as gr
from gradio.data_classes import FileData

from .create import MANIFEST_NAME, load_study, open_store
from .store import DATABASE_NAME, StudyError

logger = logging.getLogger("latentshift.study")

TITLE = "Latent Shift reader study"
SCALE = {1: "surely wrong", 2: "probably wrong", 3: "unsure", 4: "probably right", 5: "surely right"}
QUEUE_MAX_SIZE = 64
CONCURRENCY = 8
INSTRUCTIONS = f"""
# {TITLE}
Each case shows a classifier's prediction for a chest X-ray and an explanation of it.
**Rate how confident you are that the prediction is right**: 1 = {SCALE[1]} … 5 = {SCALE[5]}
(click a button or press a key 1-5). Every rating is saved at once; you may stop and come back later
with the same reader code. Research use only, not for clinical decisions.
"""
KEYS_JS = """
() => {
  document.addEventListener('keydown', (event) => {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey || !/^[1-5]$/.test(event.key)) return;
    if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA' || target.isContentEditable)) return;
    const button = document.querySelector('#rate-' + event.key);
    if (button && button.offsetParent !== null && !button.disabled) { event.preventDefault(); button.click(); }
  });
}
"""
CSS = """
#claim { font-size: 1.1em; }
#rating-row { flex-wrap: nowrap; gap: 6px; }
#rating-row button { min-width: 0; padding-left: 4px; padding-right: 4px; }
.study-note { color: #555; }
"""


class StudyService:
    """The study's actions as plain functions over one study folder."""

    def __init__(self, study_dir: str | Path):
        self.study_dir = Path(study_dir).resolve()
        self.manifest = load_study(self.study_dir)
        self.store = open_store(self.study_dir, self.manifest)
        self.cases = {case["id"]: case for case in self.manifest["cases"]}

    def media_paths(self, case_id: str, condition: str) -> list[str]:
        return [str(self.study_dir / relative) for relative in self.cases[case_id]["media"][condition]]

    def claim(self, case_id: str) -> dict:
        """The prediction readers see (the same in both conditions)."""
        case = self.cases[case_id]
        predicted = "positive" if case["prediction"] >= case["threshold"] else "negative"
        return {"finding": case["target"], "probability": case["prediction"], "threshold": case["threshold"],
                "predicted": predicted}

    def next_case(self, reader: str) -> dict:
        """The reader's next case: id, condition, position, total, claim and media paths, or done."""
        step = self.store.next_assignment(reader)
        if step["done"]:
            return step
        return {**step, "claim": self.claim(step["case_id"]),
                "media": self.media_paths(step["case_id"], step["condition"])}

    def study_next(self, reader: str) -> tuple[dict, list[FileData]]:
        """Next case for a reader code.

        Returns (info, files). info: {"done": false, "case_id", "condition" ("maps" or
        "latent_shift"), "position" (1-based), "total", "claim": {"finding", "probability",
        "threshold", "predicted"}} and files: the condition's media (Grad-CAM and IG PNGs, or
        the GIF); or ({"done": true, "rated", "total"}, []) once every case is rated.
        """
        with _refusals():
            step = self.next_case(reader)
        media = step.pop("media", [])
        return step, [FileData(path=path, orig_name=Path(path).name) for path in media]

    def study_rate(self, reader: str, case_id: str, condition: str, rating: int) -> dict:
        """Commit one rating 1-5 of a case the reader was shown; returns the saved record.

        Refused with a message if the rating is outside 1-5, the case/condition was not
        shown to this reader, or it was rated before.
        """
        with _refusals():
            return self.store.rate(reader, case_id, condition, rating)


class _refusals:
    """Show StudyError as a gr.Error with its message; log anything else."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, _traceback):
        if isinstance(error, StudyError):
            raise gr.Error(str(error), print_exception=False) from None
        if error is not None and not isinstance(error, gr.Error):
            logger.exception("unexpected error in the study app")
            raise gr.Error("Something went wrong; the error was logged.", print_exception=False) from None
        return False


def describe_claim(claim: dict) -> str:
    return (f"**The classifier predicts {claim['finding']}: {claim['predicted']}** "
            f"(probability {claim['probability']:.2f}; positive from {claim['threshold']:.2f})")


def page_values(service: StudyService, reader: str) -> dict:
    """What the page shows after a start or a rating: names -> values/updates."""
    step = service.next_case(reader)
    if step["done"]:
        return {"progress": f"All {step['total']} cases rated. Thank you!", "claim": "",
                "media_1": gr.update(value=None, visible=False), "media_2": gr.update(value=None, visible=False),
                "rating_row": gr.update(visible=False), "reader": reader, "case": None, "condition": None}
    media = step["media"]
    label = "Latent Shift: the image with the finding curtailed and exaggerated" \
        if step["condition"] == "latent_shift" else "Attribution maps"
    return {"progress": f"Case {step['position']} of {step['total']}", "claim": describe_claim(step["claim"]),
            "media_1": gr.update(value=media[0], visible=True, label=label,
                                 show_label=step["condition"] == "latent_shift"),  # the map PNGs carry titles
            "media_2": gr.update(value=media[1] if len(media) > 1 else None, visible=len(media) > 1),
            "rating_row": gr.update(visible=True), "reader": reader.strip(), "case": step["case_id"],
            "condition": step["condition"]}


def stopped_values(service: StudyService, reader: str | None) -> dict:
    rated = sum(r["reader"] == reader for r in service.store.ratings()) if reader else 0
    return {"progress": f"Stopped. Your {rated} ratings are saved; enter the same reader code to resume.",
            "claim": "", "media_1": gr.update(value=None, visible=False),
            "media_2": gr.update(value=None, visible=False), "rating_row": gr.update(visible=False),
            "reader": None, "case": None, "condition": None}


OUTPUT_NAMES = ("progress", "claim", "media_1", "media_2", "rating_row", "reader", "case", "condition")


def build_app(study_dir: str | Path) -> tuple[gr.Blocks, StudyService]:
    """The reading page with the /study_next and /study_rate endpoints (not launched)."""
    service = StudyService(study_dir)
    c: dict = {}
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(INSTRUCTIONS)
        with gr.Row(equal_height=True):
            c["code"] = gr.Textbox(label="Reader code", placeholder="e.g. R1", elem_id="reader-code", scale=3)
            c["start"] = gr.Button("Start or resume", variant="primary", elem_id="start", scale=1)
        c["progress"] = gr.Markdown("Enter your reader code and press **Start or resume**.", elem_id="progress")
        c["claim"] = gr.Markdown("", elem_id="claim")
        with gr.Row(equal_height=False):
            c["media_1"] = gr.Image(type="filepath", interactive=False, visible=False, elem_id="media-1",
                                    height=460, buttons=["fullscreen"], min_width=300)
            c["media_2"] = gr.Image(type="filepath", interactive=False, visible=False, elem_id="media-2",
                                    show_label=False, height=460, buttons=["fullscreen"], min_width=300)
        with gr.Column(visible=False) as c["rating_row"]:
            gr.Markdown("How confident are you that **this prediction is right**? (keys 1-5)")
            with gr.Row(elem_id="rating-row"):
                c["buttons"] = [gr.Button(f"{k} · {SCALE[k]}", elem_id=f"rate-{k}", min_width=56)
                                for k in SCALE]
            c["stop"] = gr.Button("Stop for now", variant="secondary", size="sm", elem_id="stop")
        for name in ("reader", "case", "condition"):
            c[name] = gr.State(None)
        _wire(c, service)
        gr.api(service.study_next, api_name="study_next")
        gr.api(service.study_rate, api_name="study_rate")
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo, service


def _wire(c: dict, service: StudyService) -> None:
    outputs = [c[name] for name in OUTPUT_NAMES]

    def shown(values: dict) -> list:
        return [values[name] for name in OUTPUT_NAMES]

    def on_start(code):
        with _refusals():
            return shown(page_values(service, code))

    def on_rate(rating, reader, case_id, condition):
        if not reader or not case_id:
            raise gr.Error("Enter your reader code and press Start or resume first.", print_exception=False)
        with _refusals():
            service.store.rate(reader, case_id, condition, rating)
            return shown(page_values(service, reader))

    events = dict(api_visibility="private", show_progress="hidden", trigger_mode="once")
    gr.on([c["start"].click, c["code"].submit], on_start, c["code"], outputs, **events)
    for rating, button in zip(SCALE, c["buttons"]):
        button.click(partial(on_rate, rating), [c["reader"], c["case"], c["condition"]], outputs, **events)
    c["stop"].click(lambda reader: shown(stopped_values(service, reader)), c["reader"], outputs, **events)


def launch_options(service: StudyService, **overrides) -> dict:
    """``demo.launch`` keywords: only the case media may be served, never study.json or the database."""
    root = service.study_dir
    blocked = [str(root / name) for name in (MANIFEST_NAME, DATABASE_NAME, f"{DATABASE_NAME}-wal",
                                             f"{DATABASE_NAME}-shm", "analysis")]
    options = dict(allowed_paths=[str(root / "cases")], blocked_paths=blocked, show_error=False,
                   run_history=False, js=KEYS_JS, css=CSS, theme=gr.themes.Soft(primary_hue="blue"))
    options.update(overrides)
    return options


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 7861) -> None:
    """Serve the reading page until stopped (Ctrl-C or SIGTERM)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    demo, service = build_app(study_dir)
    demo.launch(**launch_options(service, server_name=host, server_port=port, quiet=True,
                                 prevent_thread_lock=True))
    logger.info("reader study %s serving on %s (%d cases, 2 conditions)", service.study_dir, demo.local_url,
                len(service.cases))
    demo.block_thread()
