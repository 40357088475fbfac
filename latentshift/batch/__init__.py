"""Batch explanations over a folder or a CSV of images, and a static gallery of the results.

``latentshift batch INPUT --out DIR`` (see :mod:`latentshift.cli.batch`) plans one task per
image × classifier (:mod:`.inputs`), skips the tasks whose outputs are complete for the same
image content, models and options (:mod:`.resume`), runs the rest in chunks of up to
``--item-batch`` tasks of one classifier (:func:`.run.run_chunk`, which batches the items'
predictions and Latent Shifts; one item: :func:`.run.run_task`) sequentially, in local worker
processes or as Ray tasks (:mod:`.parallel`), and writes ``results.csv`` (:mod:`.results`) and ``index.html``
(:mod:`.gallery`); :func:`.driver.run_batch` ties it together.
"""

from .driver import BatchReport, run_batch
from .inputs import Item, read_items
from .run import BatchConfig, Task, run_chunk, run_task

__all__ = ["BatchConfig", "BatchReport", "Item", "Task", "read_items", "run_batch", "run_chunk", "run_task"]
