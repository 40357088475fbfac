"""Serving settings of the app: limits for a 2-vCPU machine, output folders, launch options.

Chosen for a free Hugging Face CPU Space (2 vCPU, see ``docs/app.md``): one explanation at
a time uses both cores, the rest wait in line. The command line (:func:`parse_args`) is read
before Gradio is imported, since huggingface_hub reads ``HF_HUB_OFFLINE`` at import; it reads the
environment's :class:`~latentshift.settings.Settings` once, puts the flags over them and keeps them
as ``command_line.settings``, which the app passes down.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..settings import RESULTS_DAYS_DEFAULT, RESULTS_DIR_DEFAULT, Settings

logger = logging.getLogger("latentshift.app")

EXPLAIN_CONCURRENCY = 1
PREDICT_CONCURRENCY = 1
#: Explanations (page, compare and API) waiting behind the running one; the next is told "Busy".
EXPLAIN_WAITING = 20
#: Gradio's queue. Explanations do not wait in it (they wait in the admission line), so it only holds
#: events for a moment; it is sized so that a burst of clicks from more pages than the line holds
#: never meets Gradio's bare "Queue is full" (check_limits).
QUEUE_MAX_SIZE = 64
#: Gradio's worker slots (``launch(max_threads=)``): every admitted run holds one while it waits.
MAX_THREADS = 64
MIRROR_EVERY_MINUTES = 10
MAX_FILE_SIZE = "32mb"
DELETE_CACHE = (600, 3600)        # every 10 min, delete Gradio's copies older than 1 h
RUN_FOLDER_MAX_AGE_S = 3600       # our own output folders live as long (checked every minute)


def parse_args(argv: list[str] | None = None, settings: Settings | None = None) -> argparse.Namespace:
    """The app's command line, with ``settings`` (default: the environment's, read here) and the flags
    over them as ``.settings``."""
    parser = argparse.ArgumentParser(
        prog="latentshift app",
        description="Latent Shift demo: animated counterfactual explanations of chest X-ray classifiers.")
    # Defaults follow Gradio's environment variables, which Hugging Face Spaces set (0.0.0.0:7860).
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default $GRADIO_SERVER_NAME or 127.0.0.1; "
                             "0.0.0.0 serves the network)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to listen on (default $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also create a temporary public gradio.live link (needs internet)")
    parser.add_argument("--offline", action="store_true",
                        help="never contact the Hugging Face Hub (sets HF_HUB_OFFLINE=1): "
                             "only embedded and already cached models are offered")
    parser.add_argument("--manifest", default=None,
                        help="your own models: a manifest merged over the package's "
                             "(default $LATENTSHIFT_EXTRA_MANIFEST; see README, 'Use your own model')")
    parser.add_argument("--root-path", default=os.environ.get("GRADIO_ROOT_PATH"),
                        help="URL prefix when served behind a reverse proxy, e.g. /latentshift "
                             "(default $GRADIO_ROOT_PATH)")
    parser.add_argument("--temp-max-age", type=float, default=float(RUN_FOLDER_MAX_AGE_S), metavar="SECONDS",
                        help=f"delete temporary files (Gradio's copies, the runs' folders) once older than this "
                             f"(default {RUN_FOLDER_MAX_AGE_S}); stored results are kept for --results-days")
    add_result_arguments(parser)
    command_line = parser.parse_args(argv)
    try:
        settings = settings or Settings.from_environ()
    except ValueError as exc:  # a malformed LATENTSHIFT_* value, named with its value
        parser.error(str(exc))
    command_line.settings = with_result_flags(settings, command_line).with_flags(offline=command_line.offline or None)
    return command_line


def delete_cache_for(max_age_s: float) -> tuple[int, int]:
    """Gradio's ``delete_cache`` for files kept ``max_age_s``: checked six times per period."""
    return max(1, int(max_age_s // 6)), max(1, int(max_age_s))


def add_result_arguments(parser: argparse.ArgumentParser) -> None:
    """The result store's settings (README, "Settings"); a flag not given is None (the settings' value)."""
    parser.add_argument("--results-dir", default=None,
                        help=f"where finished explanations are kept for their links (default "
                             f"$LATENTSHIFT_RESULTS_DIR or {RESULTS_DIR_DEFAULT})")
    parser.add_argument("--results-days", type=float, default=None,
                        help=f"days a result (and its link) is kept (default $LATENTSHIFT_RESULTS_DAYS or "
                             f"{RESULTS_DAYS_DEFAULT:g})")
    parser.add_argument("--results-repo", default=None,
                        help="a private Hugging Face dataset repo the store is mirrored to and restored from "
                             "at start (default $LATENTSHIFT_RESULTS_REPO; needs $HF_TOKEN)")


def with_result_flags(settings: Settings, command_line: argparse.Namespace) -> Settings:
    """``settings`` with the flags of :func:`add_result_arguments` that were given over them."""
    results_dir = None if command_line.results_dir is None else Path(command_line.results_dir)
    return settings.with_flags(results_dir=results_dir, results_days=command_line.results_days,
                               results_repo=command_line.results_repo)


@dataclass
class ResultSettings:
    """Where results are kept, for how long, and where they are mirrored (read once, at the entry point)."""

    folder: Path = RESULTS_DIR_DEFAULT
    retention_days: float = RESULTS_DAYS_DEFAULT
    mirror_repo: str | None = None
    token: str | None = None
    mirror_every_minutes: float = MIRROR_EVERY_MINUTES

    @classmethod
    def from_command_line(cls, command_line: argparse.Namespace) -> "ResultSettings":
        """From ``command_line.settings`` (read at the entry point, the result flags already over them:
        :func:`parse_args`, or ``latentshift results``)."""
        settings = command_line.settings
        return cls(folder=Path(settings.results_dir).expanduser(), retention_days=settings.results_days,
                   mirror_repo=settings.results_repo or None, token=settings.hf_token or None)

    def open_store(self):
        from ..results.store import ResultStore

        return ResultStore(Path(self.folder).expanduser(), self.retention_days)


def prepare_environment(command_line: argparse.Namespace | None = None) -> None:
    """What the app needs before Gradio and huggingface_hub are imported: ``HF_HUB_OFFLINE=1`` with
    ``--offline`` (huggingface_hub reads it at import), and ``--manifest`` checked and put into
    ``command_line.settings`` (as ``extra_manifest``) for the model store."""
    if command_line is not None and command_line.settings.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if command_line is not None and getattr(command_line, "manifest", None):
        path = Path(command_line.manifest).resolve()
        if not path.is_file():
            raise SystemExit(f"cannot start the app: manifest not found: {path}")
        command_line.settings = command_line.settings.replace(extra_manifest=str(path))


#: A run-folder root's name prefix, and the file in it that names the process that owns it.
ROOT_PREFIX, OWNER_FILE = "latentshift-app-", "owner.pid"


def orphaned_roots(temp_dir: Path) -> list[Path]:
    """The run-folder roots under ``temp_dir`` whose owner process is gone (a server killed with
    SIGKILL never runs its exit handler). Roots without an owner file, or of a live process, are not."""
    found = []
    for root in temp_dir.glob(f"{ROOT_PREFIX}*"):
        try:
            pid = int((root / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _process_alive(pid):
            found.append(root)
    return found


def remove_orphaned_roots(temp_dir: Path) -> int:
    """Delete :func:`orphaned_roots`; returns how many."""
    roots = orphaned_roots(temp_dir)
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
    return len(roots)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunFolders:
    """Output folders of the runs, under one ``tempfile.mkdtemp()`` root.

    A daemon thread deletes folders older than ``max_age_s`` (checked every ``max_age_s / 4``
    seconds, at most every minute), so an idle server keeps nothing for long; the root goes at
    exit, and a killed server's root at the next start (:func:`remove_orphaned_roots`). Gradio
    serves copies of the returned files from its own cache (``delete_cache``).
    """

    def __init__(self, max_age_s: float = RUN_FOLDER_MAX_AGE_S):
        removed = remove_orphaned_roots(Path(tempfile.gettempdir()))
        if removed:
            logger.info("removed %d run-folder root(s) of app processes that ended without cleaning up", removed)
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
        (self.root / OWNER_FILE).write_text(str(os.getpid()))
        self._max_age_s = max_age_s
        self._schedule_changed = threading.Event()
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)
        threading.Thread(target=self._prune_periodically, name="prune-run-folders", daemon=True).start()

    @property
    def max_age_s(self) -> float:
        return self._max_age_s

    @max_age_s.setter
    def max_age_s(self, seconds: float) -> None:
        self._max_age_s = seconds
        self._schedule_changed.set()

    def new(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="run-", dir=self.root))

    def prune(self) -> None:
        cutoff = time.time() - self.max_age_s
        for folder in self.root.iterdir():
            if folder.name.startswith("run-") and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)

    def _prune_periodically(self) -> None:
        while self.root.exists():
            self._schedule_changed.wait(timeout=max(1.0, min(self.max_age_s / 4, 60.0)))
            self._schedule_changed.clear()
            try:
                self.prune()
            except OSError:
                logger.exception("could not prune old run folders in %s", self.root)


@functools.cache
def run_folders() -> RunFolders:
    """The process's output folders (created on first use)."""
    return RunFolders()


def launch_options() -> dict:
    """Keyword arguments of ``demo.launch`` (theme and CSS are added by :func:`.server.launch`).

    The run folders' root is an allowed path: the API endpoints return our output files as
    they are (``gr.api`` does not copy them into Gradio's cache); each run folder has a random name.
    """
    return dict(max_file_size=MAX_FILE_SIZE, run_history=False, show_error=False, max_threads=MAX_THREADS,
                allowed_paths=[str(run_folders().root)])


def launch_messages(url: str, share_url: str | None = None) -> list[str]:
    """What the console says once the app serves, naming this app's own options."""
    lines = [f"Latent Shift demo serving on {url} (research demo, not for clinical use)"]
    lines.append(f"public link: {share_url}" if share_url
                 else "for a temporary public link start it with --share; --host 0.0.0.0 serves the network")
    return lines


def check_limits(line_capacity: int) -> None:
    """The admission line must fit in Gradio's queue and worker slots, so no event is dropped unseen."""
    if QUEUE_MAX_SIZE < 2 * line_capacity or MAX_THREADS < line_capacity + 8:
        raise ValueError(f"Gradio's queue ({QUEUE_MAX_SIZE}) and threads ({MAX_THREADS}) are too small for an "
                         f"admission line of {line_capacity}")
