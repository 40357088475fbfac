"""``run_batch``: plan the tasks, skip the finished ones, run the rest, write the results.

Tasks are item × classifier (an item's own ``classifier`` cell replaces the list), in input
order; rows come back in that order whichever way they ran, so results.csv does not depend
on ``--workers``, ``--item-batch`` or Ray. The results and the gallery are written at the end, and also when
the run is interrupted (with the rows finished so far; a rerun does the rest).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionsError
from ..settings import Settings
from ..weights import Manifest
from . import gallery, parallel, resume
from .inputs import Item, content_hash, read_items
from .results import relabel, write_results
from .run import BatchConfig, Task

logger = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What :func:`run_batch` did: rows in task order, how many were run, skipped, failed."""

    rows: list[dict]
    computed: int
    skipped: int
    seconds: float
    files: list[Path]

    @property
    def errors(self) -> list[dict]:
        return [row for row in self.rows if row.get("error")]

    @property
    def items_per_minute(self) -> float:
        """Tasks computed (not skipped) per minute of this run."""
        return 60.0 * self.computed / self.seconds if self.seconds > 0 and self.computed else 0.0


def plan_tasks(items: list[Item], classifiers: list[str], config: BatchConfig) -> list[Task]:
    """One task per item × classifier, each with its resume key."""
    tasks = []
    for item in items:
        digest = content_hash(item.path)
        options = config.options.replace(target=item.target or config.options.target).to_dict()
        for classifier in ([item.classifier] if item.classifier else classifiers):
            tasks.append(Task(item, classifier, resume.task_key(digest, classifier, config.autoencoder, options)))
    return tasks


def resolve_classifiers(requested: list[str], items: list[Item], manifest_path: str | None,
                        settings: Settings | None = None) -> list[str]:
    """The classifier ids to use (default: the embedded one); unknown ids raise OptionsError.
    The manifest is the one the tasks' pipelines load (:meth:`Manifest.for_user`)."""
    manifest = Manifest.for_user(manifest_path, settings)
    known = {entry.id for entry in manifest.of_kind("classifier")}
    ids = list(dict.fromkeys(requested)) or [manifest.default("classifier").id]
    unknown = sorted({i for i in ids + [item.classifier for item in items if item.classifier] if i not in known})
    if unknown:
        raise OptionsError(f"unknown classifier(s) {', '.join(unknown)}; the manifest has: {', '.join(sorted(known))}")
    return ids


def run_batch(source: str | Path, config: BatchConfig, classifiers: list[str] | tuple = (), *, workers: int = 1,
              ray_address: str | None = None, progress: bool = True) -> BatchReport:
    """Explain every item of ``source`` (folder or CSV) into ``config.out_dir``; see the module doc."""
    if workers < 1:
        raise OptionsError(f"--workers must be at least 1, not {workers}")
    started = time.perf_counter()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = read_items(source, exclude=out_dir)
    config = config.with_settings()
    tasks = plan_tasks(items, resolve_classifiers(list(classifiers), items, config.manifest, config.settings), config)
    rows: dict[int, dict] = {}
    todo = []
    for index, task in enumerate(tasks):
        row = resume.finished_row(out_dir / task.folder, task.key)
        if row is None:
            todo.append((index, task))
        else:
            rows[index] = relabel(row, task.item.label)
    logger.info("%d tasks: %d already done, %d to run", len(tasks), len(rows), len(todo))
    if ray_address:
        results = parallel.ray_tasks(todo, config, ray_address)
    elif workers > 1 and len(todo) > 1:
        results = parallel.local_workers(todo, config, min(workers, len(todo)))
    else:
        results = parallel.sequential(todo, config)
    try:
        for index, row in _progress(results, len(todo), skipped=len(rows), enabled=progress):
            rows[index] = row
    finally:
        ordered = [rows[i] for i in sorted(rows)]
        files = write_results(ordered, out_dir) + [gallery.write_gallery(ordered, out_dir)]
    return BatchReport(ordered, len(todo), len(tasks) - len(todo), time.perf_counter() - started, files)


def _progress(results, total: int, *, skipped: int, enabled: bool):
    """Pass the results through, with a tqdm bar showing items per minute and time left."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="item", disable=not enabled or total == 0, dynamic_ncols=True,
               desc=f"explaining ({skipped} done before)" if skipped else "explaining",
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                          "[{elapsed} elapsed, {remaining} left{postfix}]")
    started = time.perf_counter()
    try:
        for result in results:
            bar.update(1)
            bar.set_postfix_str(f"{60 * bar.n / max(time.perf_counter() - started, 1e-9):.1f} items/min")
            yield result
    finally:
        bar.close()
