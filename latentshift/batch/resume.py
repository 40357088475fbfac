"""Resuming a batch: a task is done when its done-marker matches and its files are all there.

The marker (``done.json`` in the task's folder) is written **last**, through a temporary file
and ``os.replace``, so a run stopped at any moment (Ctrl-C, SIGKILL, power) leaves either a
complete task with its marker or a task without one, which a rerun does again. The marker's
key is the image's content hash, the requested model ids and the options (with the item's
target); a change of any of them redoes the task.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

MARKER_NAME = "done.json"
#: Bump when what a task writes changes, so old markers no longer count.
MARKER_VERSION = 1


def task_key(image_sha256: str | None, classifier_id: str, autoencoder_id: str | None, options: dict) -> dict:
    """What must be the same for a finished task to be reused."""
    return {"version": MARKER_VERSION, "image_sha256": image_sha256, "classifier": classifier_id,
            "autoencoder": autoencoder_id or "", "options": options}


def finished_row(folder: Path, key: dict) -> dict | None:
    """The stored results row of a complete task with this key, or None (redo it)."""
    marker = folder / MARKER_NAME
    if key["image_sha256"] is None:
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("key") != key:
        logger.debug("%s: marker is for other content, models or options", folder)
        return None
    missing = [name for name in data.get("files", []) if not (folder / name).is_file()]
    if missing:
        logger.info("%s: redoing, files missing: %s", folder, ", ".join(missing))
        return None
    return data.get("row")


def clear_marker(folder: Path) -> None:
    """Forget that the task was done (before it is redone)."""
    (folder / MARKER_NAME).unlink(missing_ok=True)


def write_marker(folder: Path, key: dict, row: dict, files: list[str]) -> Path:
    """Write the marker atomically (temporary file in the same folder, fsync, os.replace)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"key": key, "files": sorted(files), "row": row}, indent=1, ensure_ascii=False)
    handle, temporary = tempfile.mkstemp(prefix=".done-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, folder / MARKER_NAME)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return folder / MARKER_NAME
