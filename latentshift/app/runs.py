"""One explanation from the page as ONE streamed event: an async generator that yields each stage's
outputs as the stage finishes, behind the admission line, with finished results kept in the store.

Why one event: there is no state between events to lose (one event per stage, with the live
generators kept between them, ended runs without a word and kept a closed tab's tensors alive).
Gradio closes the generator when the page goes away (it checks after each yield), and its
``finally`` closes the pipeline's generator and gives the place in line back. Every run ends in
exactly one of: the full result, "Busy: N ahead of you" (refused at once by :mod:`.admission`), or
a refusal that says why, always in the status line. The stages run in a worker thread
(``anyio.to_thread.run_sync``), so an abandoned run frees its memory at most one stage later.
"""

from __future__ import annotations

import datetime
import functools
import logging
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import anyio
import gradio as gr

from ..options import ExplainOptions
from ..pipeline import Explanation
from ..results.store import Lookup, ResultStore, StoredResult, result_key
from ..weights import sha256_of
from . import admission, handlers

logger = logging.getLogger("latentshift.app")

#: Every output a run from the page updates (by name).
OUTPUTS = ("predictions", "target", "status", "outcome", "warnings", *handlers.RESULT_NAMES, "slider_frames",
           "slider_caption", "slider_pair", "lambda_min", "lambda_max", "share_link", "banner", "explain_anyway")
LINK_STATES = {
    "expired": "This shared result has expired: results are kept {days:g} days. Explain the X-ray again.",
    "deleted": "This shared result was deleted from the server. Explain the X-ray again.",
    "missing": "This shared result can no longer be read on this server. Explain the X-ray again.",
    "unknown": "No result with this link is kept on this server (it may come from another server, or be "
               "mistyped). Explain the X-ray again.",
}


def _day(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d")


def share_text(stored: StoredResult) -> str:
    """The link line of a stored result (a relative link, so it works behind any proxy prefix)."""
    return (f"[Link to this result](?result={stored.id}) — kept until {_day(stored.expires)}; "
            f"anyone with the link can open it.")


def run_key(path: str, classifier_id: str, autoencoder_id: str, options: ExplainOptions) -> tuple[str, str, str]:
    """(result id, classifier id, autoencoder id) with '' resolved to the pair that answers now."""
    pipeline = handlers.pipeline_for(classifier_id, autoencoder_id)
    models = {"classifier": pipeline.classifier_id, "autoencoder": pipeline.autoencoder_id}
    return result_key(sha256_of(path), models, options.to_dict()), *models.values()


def stored_values(stored: StoredResult, note: str = "") -> dict[str, Any]:
    """The page's values for a stored result: the saved texts and the stored files."""
    page = stored.record.get("page", {})
    values = {name: page.get(name) for name in handlers.KEPT_VALUES if name in page}
    for name in handlers.RESULT_IMAGES:
        values[name] = handlers.path_text(stored.file(name))
    captions = page.get("slider_captions") or {}
    frames = {side: [handlers.path_text(stored.file(key)), captions.get(side, side)]
              for side, key in (("input", "input"), ("curtailed", "counterfactual"), ("exaggerated", "exaggerated"))}
    frames = frames if all(path for path, _ in frames.values()) else None
    values.update(slider_frames=frames, **handlers.slider_value(frames), slider_pair=handlers.SLIDER_PAIRS[0][1])
    values["downloads"] = [handlers.path_text(stored.file(key)) for key in handlers.KEPT_FILES if stored.file(key)]
    values["status"] = f"{values.get('status', '')}\n\n{note}".strip()
    values["share_link"] = share_text(stored)
    # the input and the models too, so the person who opens the link can run it again with other settings
    values["image"] = handlers.path_text(stored.file("input"))
    for kind in ("classifier", "autoencoder"):
        if stored.record.get(kind):
            values[kind] = stored.record[kind]
    return values


def link_values(found: Lookup, retention_days: float) -> dict[str, Any]:
    """The page's values for a ``?result=`` link: the stored result, or why there is none."""
    if found.result is not None:
        return stored_values(found.result, f"Opened from a shared link (explained {_day(found.result.created)}).")
    message = LINK_STATES[found.state].format(days=retention_days)
    return {**handlers.refusal_values(message), "status": f"⚠ {message}", "share_link": ""}


def keep(store: ResultStore, result_id: str, explanation: Explanation, values: dict[str, Any]) -> StoredResult:
    """Store a finished explanation's files and page texts under ``result_id``."""
    return store.put(result_id, *handlers.kept_record(explanation, values))


class Runs:
    """The page's explanations: the admission line and the result store they share."""

    def __init__(self, line: admission.Line, store: ResultStore, retention_days: float):
        self.line, self.store, self.retention_days = line, store, retention_days

    async def explain(self, path: str, classifier_id: str, autoencoder_id: str,
                      options: ExplainOptions) -> AsyncIterator[dict[str, Any]]:
        """Values by output name: from the store at once, or stage by stage, or one message."""
        try:
            result_id, classifier_id, autoencoder_id = await anyio.to_thread.run_sync(
                run_key, path, classifier_id, autoencoder_id, options)
        except gr.Error as error:
            yield handlers.refusal_values(error.message)
            return
        stored = await anyio.to_thread.run_sync(self.store.get, result_id)
        if stored is not None:
            yield stored_values(stored, "Shown from the result store: this image was explained before with "
                                        "the same models and settings.")
            return
        try:
            ticket = self.line.admit()
        except admission.LineFull as full:
            gr.Warning(str(full), duration=10)
            yield {"status": f"**{full}**"}
            return
        try:
            async with aclosing(ticket.turn()) as turns:
                async for ahead in turns:
                    yield {"status": admission.waiting_text(ahead)}
            stored = await anyio.to_thread.run_sync(self.store.get, result_id)  # explained while this one waited
            if stored is not None:
                yield stored_values(stored, "Shown from the result store: the same image was explained with the "
                                            "same models and settings while this one waited.")
                return
            async with aclosing(self._stages(result_id, path, classifier_id, autoencoder_id, options)) as stages:
                async for values in stages:
                    yield values
        finally:
            ticket.release()

    async def _stages(self, result_id: str, path: str, classifier_id: str, autoencoder_id: str,
                      options: ExplainOptions) -> AsyncIterator[dict[str, Any]]:
        stages = handlers.iter_explanation(path, classifier_id, autoencoder_id, options)
        explanation = values = None
        try:
            while (stage := await anyio.to_thread.run_sync(next, stages, None)) is not None:
                explanation, values = stage, handlers.result_values(stage)
                yield {**values, "share_link": ""}
        except gr.Error as error:
            yield {**handlers.refusal_values(error.message), "share_link": ""}
            return
        finally:
            stages.close()
        if explanation is None or explanation.stage != "done":
            return
        try:
            stored = await anyio.to_thread.run_sync(keep, self.store, result_id, explanation, values)
        except OSError:
            logger.exception("could not keep result %s in the store", result_id)
            return
        yield {**values, "share_link": share_text(stored)}


def explain_endpoint(runs: Runs):
    """The ``/explain`` API (:func:`.handlers.explain`'s signature and docs) on the page's store and line:
    a stored result comes back at once; otherwise the call waits its turn, or is refused as busy."""

    @functools.wraps(handlers.explain)
    def explain(*args, **kwargs):
        request = handlers.explain_request(*args, **kwargs)
        result_id = run_key(request.path, request.classifier, request.autoencoder, request.options)[0]
        stored = runs.store.get(result_id)
        files = _files_of(stored) if stored is not None else _explained_in_turn(runs, result_id, request)
        return handlers.api_files(files)

    return explain


@contextmanager
def in_turn_or_busy(line: admission.Line) -> Iterator[admission.Ticket]:
    """Compute inside the ``with`` in this run's turn of ``line`` (a worker thread waits for it); a full
    line raises the busy message as Gradio's error (shown to the person, never cached)."""
    try:
        with admission.computing(line) as ticket:  # LineFull comes from admitting, before the turn
            yield ticket
    except admission.LineFull as full:
        raise gr.Error(str(full), title="Busy", print_exception=False) from None


def _files_of(stored: StoredResult) -> dict[str, Path | None]:
    return {key: stored.file(key) for key in handlers.EXPLAIN_API_FILES}


def _explained_in_turn(runs: Runs, result_id: str, request: handlers.ExplainRequest) -> dict[str, Path | None]:
    """Explain in the admission line's turn and keep the result (or take it from the store if the same
    explanation finished while this one waited)."""
    with in_turn_or_busy(runs.line):
        stored = runs.store.get(result_id)
        if stored is not None:
            return _files_of(stored)
        files, record = handlers.explained(request)
        try:
            return _files_of(runs.store.put(result_id, files, record))
        except OSError:
            logger.exception("could not keep result %s in the store", result_id)
            return dict(files)
