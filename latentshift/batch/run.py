"""The per-task functions that every way of running a batch (:mod:`.parallel`) calls.

:func:`run_task` explains one item with one classifier into ``OUT/<item>/<classifier>/`` (the
files of ``latentshift explain`` plus the done-marker of :mod:`.resume`) and returns its results
row; :func:`run_chunk` does it for several tasks of one classifier with the predictions and the
Latent Shift batched (``--item-batch``). A bad item gives a row with its error, never an
exception: image and option errors are final, anything else is retried by the next run.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import ImageInputError, OptionsError
from ..io.imaging import XrayImage
from ..options import ExplainOptions
from ..pipeline import Pipeline
from ..settings import Settings
from . import resume
from .inputs import Item
from .results import error_row, explanation_row

logger = logging.getLogger(__name__)

#: Items explained together (``--item-batch``) when not given: on a GPU a batch of images costs
#: about one image's time; on the CPU about its size, so items go one at a time there.
ITEM_BATCH_ACCELERATOR = 8
ITEM_BATCH_CPU = 1


@dataclass(frozen=True)
class BatchConfig:
    """Everything a task needs besides its item (picklable: it travels to workers and Ray tasks).

    ``setup`` ("module:function") is called once per process before any model is loaded;
    ``threads`` caps torch's threads (None: torch's default); ``item_batch``: see
    :attr:`items_per_chunk`; ``settings``: the model store's (None: :meth:`Pipeline.current_settings`,
    filled in by :meth:`with_settings` before the tasks travel).
    """

    out_dir: str
    options: ExplainOptions = field(default_factory=ExplainOptions)
    autoencoder: str | None = None
    manifest: str | None = None
    device: str = "cpu"
    setup: str | None = None
    threads: int | None = None
    item_batch: int | None = None
    settings: Settings | None = None

    def __post_init__(self):
        if self.item_batch is not None and (isinstance(self.item_batch, bool) or not isinstance(self.item_batch, int)
                                            or self.item_batch < 1):
            raise OptionsError(f"--item-batch must be a whole number of at least 1, not {self.item_batch!r}")

    def with_settings(self) -> "BatchConfig":
        """This config with its settings filled in, without the token (workers load models, they mirror nothing)."""
        return replace(self, settings=Pipeline.current_settings(self.settings).replace(hf_token=None))

    @property
    def items_per_chunk(self) -> int:
        """Items a worker explains together: ``item_batch``, or the default for the device."""
        if self.item_batch is not None:
            return self.item_batch
        return ITEM_BATCH_CPU if str(self.device).split(":")[0] == "cpu" else ITEM_BATCH_ACCELERATOR


@dataclass(frozen=True)
class Task:
    """One item explained by one classifier, with the key that tells whether it is done."""

    item: Item
    classifier: str
    key: dict

    @property
    def folder(self) -> str:
        """The task's folder relative to the output folder (POSIX)."""
        return f"{self.item.name}/{self.classifier}"


_PREPARED: set[tuple] = set()


def prepare_process(config: BatchConfig) -> None:
    """Once per process: the ``setup`` hook and torch's thread count."""
    marker = (config.setup, config.threads)
    if marker in _PREPARED:
        return
    if config.threads:
        torch.set_num_threads(int(config.threads))
    if config.setup:
        module, _, function = config.setup.partition(":")
        try:
            hook = getattr(importlib.import_module(module), function or "setup")
        except (ImportError, AttributeError) as exc:
            raise OptionsError(f"setup hook {config.setup!r} cannot be imported: {exc}") from None
        hook()
    _PREPARED.add(marker)


def run_task(task: Task, config: BatchConfig) -> dict:
    """Explain one item with one classifier; its row (never raises for a bad item)."""
    prepare_process(config)
    started = time.perf_counter()
    folder, base = _begin(task, config)
    try:
        pipeline = _pipeline(task, config)
        explanation = pipeline.explain(pipeline.load_image(task.item.path), _options(task, config), folder)
        row, files, final = *_explained(base, explanation, task), True
    except Exception as exc:  # noqa: BLE001 - one bad item never stops the batch
        row, final = _failed(task, base, exc)
        files = []
    return _finish(task, config, row, files, final, time.perf_counter() - started)


def run_chunk(tasks: list[Task], config: BatchConfig) -> list[dict]:
    """Explain several tasks of one classifier together; their rows, in order (never raises
    for a bad item). Each item is read on its own, the readable ones explained by
    :meth:`Pipeline.explain_many`, and redone one by one if that fails; a row's ``seconds``
    is its reading time plus its share of the batched run.
    """
    if len(tasks) < 2 or len({task.classifier for task in tasks}) > 1:
        return [run_task(task, config) for task in tasks]
    prepare_process(config)
    try:
        pipeline = _pipeline(tasks[0], config)
    except Exception:  # noqa: BLE001 - each task reports the model's failure in its own row
        return [run_task(task, config) for task in tasks]
    rows, loaded = {}, []
    for position, task in enumerate(tasks):
        started = time.perf_counter()
        folder, base = _begin(task, config)
        try:
            image = pipeline.load_image(task.item.path)
        except Exception as exc:  # noqa: BLE001 - this item's own error row
            row, final = _failed(task, base, exc)
            rows[position] = _finish(task, config, row, [], final, time.perf_counter() - started)
        else:
            loaded.append(_Loaded(position, task, folder, base, image, time.perf_counter() - started))
    if loaded:
        rows.update(_explain_loaded(pipeline, loaded, config))
    return [rows[position] for position in range(len(tasks))]


class _Loaded(NamedTuple):
    """A chunk's item whose image was read: its place in the chunk, task, folder, row columns,
    image and the seconds its reading took."""

    position: int
    task: Task
    folder: Path
    base: dict
    image: XrayImage
    reading: float


def _explain_loaded(pipeline: Pipeline, loaded: list[_Loaded], config: BatchConfig) -> dict[int, dict]:
    """{position: row} of the read items of a chunk, explained together (or one by one if that fails)."""
    started = time.perf_counter()
    try:
        explanations = pipeline.explain_many([item.image for item in loaded],
                                             [_options(item.task, config) for item in loaded],
                                             [item.folder for item in loaded])
    except Exception as exc:  # noqa: BLE001 - redo them one by one: only a bad item fails
        logger.warning("%d items explained together failed (%s: %s); explaining them one by one",
                       len(loaded), type(exc).__name__, exc)
        return {item.position: run_task(item.task, config) for item in loaded}
    share = (time.perf_counter() - started) / len(loaded)
    rows = {}
    for item, explanation in zip(loaded, explanations):
        row, files = _explained(item.base, explanation, item.task)
        rows[item.position] = _finish(item.task, config, row, files, True, item.reading + share)
    return rows


def _begin(task: Task, config: BatchConfig) -> tuple[Path, dict]:
    """(the task's folder, its marker cleared; the item's own row columns)."""
    folder = Path(config.out_dir) / task.folder
    resume.clear_marker(folder)
    base = {"name": task.item.name, "path": task.item.path, "classifier": task.classifier,
            "target": task.item.target or config.options.target or "", "label": task.item.label,
            "image_sha256": task.key["image_sha256"]}
    return folder, base


def _pipeline(task: Task, config: BatchConfig) -> Pipeline:
    return Pipeline.get(task.classifier, config.autoencoder, device=config.device, manifest_path=config.manifest,
                        settings=config.settings)


def _options(task: Task, config: BatchConfig) -> ExplainOptions:
    """The batch's options with the item's own target."""
    return config.options.replace(target=task.item.target or config.options.target)


def _explained(base: dict, explanation, task: Task) -> tuple[dict, list[str]]:
    """(row, file names) of a finished explanation."""
    return explanation_row(base, explanation, task.folder), [path.name for path in explanation.files.values()]


def _failed(task: Task, base: dict, exc: Exception) -> tuple[dict, bool]:
    """(error row, whether it is final): image and option errors are (the same content fails
    the same way); anything else is retried by the next run."""
    if isinstance(exc, (ImageInputError, OptionsError)):
        return error_row(base, str(exc), task.folder), True
    logger.error("%s with %s failed", task.item.name, task.classifier, exc_info=exc)
    return error_row(base, f"{type(exc).__name__}: {exc}", task.folder), False


def _finish(task: Task, config: BatchConfig, row: dict, files: list[str], final: bool, seconds: float) -> dict:
    """The row with its seconds; the done-marker written when the outcome is final."""
    row["seconds"] = round(seconds, 3)
    if final:
        resume.write_marker(Path(config.out_dir) / task.folder, task.key, row, files)
    return row
