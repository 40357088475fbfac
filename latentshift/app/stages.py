"""An explanation run as chained page events, one per stage, so each output appears when its stage ends.

The pipeline's ``iter_explain`` is one generator; the page starts it in one event and advances it
stage by stage in the following ones (``.success`` chained), each event naming only its own outputs,
so only the running stage's outputs show progress and the status line is never covered. The
generators live here, keyed by a random run id that the page keeps in a ``gr.State``.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from typing import Any, Iterator

import gradio as gr

from ..pipeline import Explanation
from . import handlers

#: The page's stages in order: (stage name, outputs it updates, outputs that show its progress, what runs).
STAGES = (
    ("predict", ("predictions", "target", "status", "outcome", "warnings", *handlers.RESULT_NAMES,
                 "slider_frames", "slider_caption", "run_id"), ("predictions",), "reading the image and predicting"),
    ("gradcam", ("status", "gradcam"), ("gradcam",), "Grad-CAM"),
    ("latent_shift", ("status", "outcome", "warnings", "gif", "heatmap", "prediction_plot", "before_after", "slider_caption",
                      "slider_pair",
                      "slider_frames", "lambda_min", "lambda_max"),
     ("gif", "heatmap", "prediction_plot", "before_after"), "Latent Shift (λ search, frames, GIF)"),
    ("integrated_gradients", ("status", "integrated_gradients"), ("integrated_gradients",),
     "Integrated Gradients"),
    ("done", ("status", "warnings", "downloads"), ("downloads",), "summary.json and the downloads"),
)
ORDER = [stage for stage, *_ in STAGES]
MAX_RUNS = 32


class _Run:
    """One started explanation: its stage generator and the latest state of its result."""

    def __init__(self, stages: Iterator[Explanation]):
        self.stages = stages
        self.explanation: Explanation | None = None
        self.lock = threading.Lock()


_runs: OrderedDict[str, _Run] = OrderedDict()
_runs_lock = threading.Lock()


def start(path: str, classifier_id: str, autoencoder_id: str, options) -> str:
    """Register a new run (nothing computed yet) and return its id; the oldest runs are forgotten."""
    run_id = secrets.token_hex(8)
    with _runs_lock:
        _runs[run_id] = _Run(handlers.iter_explanation(path, classifier_id, autoencoder_id, options))
        while len(_runs) > MAX_RUNS:
            _runs.popitem(last=False)
    return run_id


def advance(run_id: str | None, stage: str) -> dict[str, Any]:
    """Run the explanation up to ``stage``; the values of that stage's outputs, by name.

    A refusal (``gr.Error`` from the pipeline) ends the run and comes back as the status text,
    not raised, so no output box shows an error badge. An unknown run id (refused earlier, or
    forgotten) skips every output.
    """
    outputs = STAGES[ORDER.index(stage)][1]
    with _runs_lock:
        run = _runs.get(run_id) if run_id else None
    if run is None:
        return {name: gr.skip() for name in outputs}
    with run.lock:
        try:
            while run.explanation is None or ORDER.index(run.explanation.stage) < ORDER.index(stage):
                run.explanation = next(run.stages)
        except StopIteration:
            pass
        except gr.Error as error:
            forget(run_id)
            return _only(handlers.refusal_values(error.message), outputs)
    if stage == "done":
        forget(run_id)
    values = handlers.result_values(run.explanation)
    values.update(run_id=run_id)
    values.setdefault("lambda_min", gr.skip())
    values.setdefault("lambda_max", gr.skip())
    return _only(values, outputs)


def forget(run_id: str | None) -> None:
    """Drop a run (finished or refused)."""
    with _runs_lock:
        _runs.pop(run_id, None)


def _only(values: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: values.get(name, gr.skip()) for name in names}
