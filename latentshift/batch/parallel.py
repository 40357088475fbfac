"""Three ways to run the same tasks: in this process, in N local worker processes, as Ray tasks.

Each is a generator of ``(index, row)`` as the :func:`chunks` finish, calling
:func:`.run.run_chunk` on each. Local workers are spawned processes that load the models once
and share the cores out. Ray is imported only when asked for; each Ray task (one chunk) takes
one CPU (one GPU with ``--device cuda``), and the output folder must be one its workers can
write (on a cluster: a shared file system).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from typing import Iterator

from ..errors import OptionsError
from ..pipeline import Pipeline
from ..runtime import set_allocator_tunables
from .results import error_row
from .run import BatchConfig, Task, prepare_process, run_chunk

logger = logging.getLogger(__name__)

Indexed = list[tuple[int, Task]]


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def chunks(tasks: Indexed, size: int) -> list[Indexed]:
    """The tasks in chunks of up to ``size`` tasks of one classifier, in input order as far
    as that allows (a chunk goes out when it is full, the partial ones at the end, in the order
    they were started); with ``size`` 1, one chunk per task in input order."""
    if size < 1:
        raise OptionsError(f"--item-batch must be at least 1, not {size}")
    ready, open_chunks = [], {}
    for index, task in tasks:
        chunk = open_chunks.setdefault(task.classifier, [])
        chunk.append((index, task))
        if len(chunk) == size:
            ready.append(open_chunks.pop(task.classifier))
    return ready + list(open_chunks.values())


def sequential(tasks: Indexed, config: BatchConfig) -> Iterator[tuple[int, dict]]:
    """Run the chunks one after the other in this process."""
    for chunk in chunks(tasks, config.items_per_chunk):
        yield from zip([index for index, _ in chunk], run_chunk([task for _, task in chunk], config))


def _warm_worker(config: BatchConfig, classifiers: list[str]) -> None:
    """Worker start: the allocator settings, setup hook, threads, and every model of the batch loaded once."""
    set_allocator_tunables()
    prepare_process(config)
    for classifier in classifiers:
        try:
            Pipeline.get(classifier, config.autoencoder, device=config.device, manifest_path=config.manifest,
                         settings=config.settings)
        except Exception as exc:  # noqa: BLE001 - the tasks report it, row by row
            logger.warning("worker %d could not load %s: %s", os.getpid(), classifier, exc)


def _crashed_row(task: Task, exc: BaseException) -> dict:
    base = {"name": task.item.name, "path": task.item.path, "classifier": task.classifier,
            "label": task.item.label, "image_sha256": task.key["image_sha256"]}
    return error_row(base, f"worker failed: {type(exc).__name__}: {exc}", task.folder)


def local_workers(tasks: Indexed, config: BatchConfig, workers: int) -> Iterator[tuple[int, dict]]:
    """Run the chunks in ``workers`` spawned processes, models loaded once per process."""
    config = replace(config, threads=config.threads or max(1, available_cores() // workers))
    classifiers = list(dict.fromkeys(task.classifier for _, task in tasks))
    logger.info("%d local workers, %d torch thread(s) each", workers, config.threads)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_warm_worker, initargs=(config, classifiers))
    try:
        futures = {pool.submit(run_chunk, [task for _, task in chunk], config): chunk
                   for chunk in chunks(tasks, config.items_per_chunk)}
        for future in as_completed(futures):
            yield from _chunk_rows(futures[future], future.result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _chunk_rows(chunk: Indexed, result) -> Iterator[tuple[int, dict]]:
    """(index, row) of a finished chunk; ``result()`` gives its rows or raises when its worker died."""
    try:
        rows = result()
    except Exception as exc:  # noqa: BLE001 - a dead worker fails its tasks, not the batch
        rows = [_crashed_row(task, exc) for _, task in chunk]
    yield from zip([index for index, _ in chunk], rows)


def import_ray():
    """The ``ray`` module, or an :class:`OptionsError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise OptionsError("--ray needs Ray, which is not installed here: "
                           "pip install 'latentshift[distributed]' (or pip install 'ray>=2.40')") from None
    return ray


def ray_tasks(tasks: Indexed, config: BatchConfig, address: str) -> Iterator[tuple[int, dict]]:
    """Run the tasks as Ray tasks on the cluster at ``address`` ('auto': the one this machine is part of).

    When Ray is already initialised in this process (a notebook, a test), that connection is used.
    """
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise OptionsError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    config = replace(config, threads=config.threads or 1)
    gpus = 1 if str(config.device).startswith("cuda") else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=1)(run_chunk)
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending, queue = {}, chunks(tasks, config.items_per_chunk)
    while queue or pending:
        while queue and len(pending) < window:
            chunk = queue.pop(0)
            pending[remote.remote([task for _, task in chunk], config)] = chunk
        done, _ = ray.wait(list(pending), num_returns=1)
        yield from _chunk_rows(pending.pop(done[0]), lambda: ray.get(done[0]))
