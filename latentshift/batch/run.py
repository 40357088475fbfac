"""The per-task function: one item explained by one classifier, whatever runs it.

:func:`run_task` explains one item with one classifier into ``OUT/<item>/<classifier>/``
(the same files as ``latentshift explain`` plus the done-marker of :mod:`.resume`) and returns
its results row. Every way of running a batch (sequential, local worker processes, Ray tasks;
:mod:`.parallel`) calls this same function. A bad item gives a row with its error, never an
exception: image and option errors are kept (the same content fails the same way), anything
else is retried by the next run.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ImageInputError, OptionsError
from ..options import ExplainOptions
from ..pipeline import Pipeline
from . import resume
from .inputs import Item
from .results import error_row, explanation_row

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    """Everything a task needs besides its item (picklable: it travels to workers and Ray tasks).

    ``setup`` ("module:function") is called once per process before any model is loaded, e.g.
    to register your own architectures; ``threads`` caps torch's threads (None: torch's default).
    """

    out_dir: str
    options: ExplainOptions = field(default_factory=ExplainOptions)
    autoencoder: str | None = None
    manifest: str | None = None
    device: str = "cpu"
    setup: str | None = None
    threads: int | None = None


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
    folder = Path(config.out_dir) / task.folder
    resume.clear_marker(folder)
    base = {"name": task.item.name, "path": task.item.path, "classifier": task.classifier,
            "target": task.item.target or config.options.target or "", "label": task.item.label,
            "image_sha256": task.key["image_sha256"]}
    files, final = [], True
    try:
        pipeline = Pipeline.get(task.classifier, config.autoencoder, device=config.device,
                                manifest_path=config.manifest)
        options = config.options.replace(target=task.item.target or config.options.target)
        explanation = pipeline.explain(pipeline.load_image(task.item.path), options, folder)
        row = explanation_row(base, explanation, task.folder)
        files = [path.name for path in explanation.files.values()]
    except (ImageInputError, OptionsError) as exc:  # the same content fails the same way: keep it
        row = error_row(base, str(exc), task.folder)
    except Exception as exc:  # noqa: BLE001 - one bad item never stops the batch; retried next run
        logger.exception("%s with %s failed", task.item.name, task.classifier)
        row, final = error_row(base, f"{type(exc).__name__}: {exc}", task.folder), False
    row["seconds"] = round(time.perf_counter() - started, 3)
    if final:
        resume.write_marker(folder, task.key, row, files)
    return row
