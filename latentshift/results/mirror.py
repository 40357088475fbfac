"""Mirror of the result store to a Hugging Face dataset repo, and restore from it at start.

A Space's disk does not outlive a restart and persistent storage is gone, so where a token and a
dataset repo are configured the store's ``entries/`` folder is pushed with huggingface_hub's own
:class:`~huggingface_hub.CommitScheduler` (every few minutes, in a background thread, only
files that changed), into a **private** dataset repo (it holds uploaded X-rays). Before each push a
``catalog.json`` lists the results the store holds; at start :func:`restore` reads it and fetches
each result the local store lacks and that has not expired, checks every file against the result's
record (size and sha256), and adds it to the store atomically, as a fresh write would be.

The mirror only adds: a result expired or deleted here stays in the repo until the repo is cleaned
(``restore`` skips expired ones, and a deleted result's tombstone keeps it from coming back while the
local index lives).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from .store import RECORD_NAME, ResultStore, file_sha256, valid_id

logger = logging.getLogger("latentshift.results")

CATALOG_NAME = "catalog.json"
PATH_IN_REPO = "entries"


def write_catalog(store: ResultStore) -> Path:
    """``entries/catalog.json``: id -> created and file names, of every result the store holds.

    Left untouched when it would not change, so that a push with nothing new sends nothing (the
    scheduler compares modification times)."""
    catalog = {}
    for result_id, created, expires, _state, _bytes in store.list():
        found = store.get(result_id)
        if found is not None:
            names = [RECORD_NAME] + [entry["name"] for entry in found.record.get("files", {}).values()]
            catalog[result_id] = {"created": created, "expires": expires, "files": names}
    path = store.entries / CATALOG_NAME
    text = json.dumps({"results": catalog}, indent=1)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    staging = path.with_suffix(".json.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
    return path


def restore(store: ResultStore, repo_id: str, token: str | None = None, endpoint: str | None = None,
            now: float | None = None) -> list[str]:
    """Fetch the results the repo holds and the store lacks (not expired); the ids added."""
    from huggingface_hub import hf_hub_download

    def fetch(name: str, folder: Path) -> Path:
        return Path(hf_hub_download(repo_id, f"{PATH_IN_REPO}/{name}", repo_type="dataset", token=token,
                                    endpoint=endpoint, local_dir=folder))

    now = time.time() if now is None else now
    work = Path(tempfile.mkdtemp(prefix="restore-", dir=store.tmp))
    added = []
    try:
        catalog = json.loads(fetch(CATALOG_NAME, work).read_text(encoding="utf-8")).get("results", {})
        for result_id, entry in catalog.items():
            if not valid_id(result_id) or store.lookup(result_id).state != "unknown":
                continue  # held here already, or expired / deleted here
            if float(entry.get("created", 0)) + store.retention_s <= now:
                continue
            relative = f"{result_id[:2]}/{result_id}"
            for name in entry.get("files", []):
                fetch(f"{relative}/{name}", work)
            problem = whole_entry(work / PATH_IN_REPO / relative)
            if problem:
                logger.warning("not restoring result %s from %s: %s", result_id, repo_id, problem)
                continue
            store.adopt(result_id, work / PATH_IN_REPO / relative)
            added.append(result_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return added


def whole_entry(folder: Path) -> str:
    """'' when ``folder`` holds a record and every file it names, with the recorded size and sha256."""
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"no readable record ({error})"
    for name, entry in record.get("files", {}).items():
        path = folder / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            return f"{name} is missing or differs from the record"
    return ""


def start_mirror(store: ResultStore, repo_id: str | None, token: str | None, every_minutes: float = 10,
                 endpoint: str | None = None):
    """Restore from ``repo_id`` and mirror to it from now on; None (and a log line) when not configured
    or the Hub cannot be reached: the store then works locally only."""
    if not repo_id or not token:
        logger.info("result store %s: not mirrored (set LATENTSHIFT_RESULTS_REPO and HF_TOKEN to mirror it)",
                    store.root)
        return None
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        added = restore(store, repo_id, token, endpoint)
        logger.info("restored %d result(s) from dataset %s", len(added), repo_id)
    except RepositoryNotFoundError:
        logger.info("dataset %s not found (or the token cannot read it): nothing restored; the first push "
                    "creates it", repo_id)
    except Exception as error:  # noqa: BLE001 - an empty or unreachable repo must not stop the app
        logger.warning("could not restore results from dataset %s: %s", repo_id, error)
    try:
        return _scheduler(store, repo_id, token, every_minutes, endpoint)
    except Exception as error:  # noqa: BLE001
        logger.warning("results are not mirrored to dataset %s: %s", repo_id, error)
        return None


def _scheduler(store: ResultStore, repo_id: str, token: str, every_minutes: float, endpoint: str | None):
    from huggingface_hub import CommitScheduler, HfApi

    class CatalogedScheduler(CommitScheduler):
        """huggingface_hub's CommitScheduler that writes the catalog before each push."""

        def push_to_hub(self):
            write_catalog(store)
            try:
                return super().push_to_hub()
            except Exception as error:
                logger.warning("push of results to dataset %s failed, the next push (in %g min) retries: %s",
                               repo_id, every_minutes, (str(error).splitlines() or [repr(error)])[0])
                raise

    return CatalogedScheduler(repo_id=repo_id, repo_type="dataset", folder_path=store.entries,
                              path_in_repo=PATH_IN_REPO, every=every_minutes, private=True, token=token,
                              ignore_patterns=["*.tmp"], hf_api=HfApi(endpoint=endpoint, token=token))
