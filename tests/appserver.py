"""Launch the Gradio app in-process on 127.0.0.1 for tests, with tiny models and small settings.

``serve_app(folder)`` is a context manager yielding an :class:`AppUnderTest` (url, the demo,
the app module, the Gradio cache folder). Settings are module constants of ``latentshift.app.serving``
patched for the duration (queue size, delete_cache) plus ``launch`` overrides
(max_file_size); the environment is restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator

from tiny_models import write_tiny_manifest

#: Small /explain settings: a whole run takes well under a second with the tiny models.
FAST_EXPLAIN = dict(classifier="", autoencoder="", target="", direction="both", frames=4, step_size=10.0,
                    lambda_min=-40.0, lambda_max=25.0, frame_duration_ms=50, ig_steps=4)


def app_committed() -> bool:
    """Whether app.py is tracked by git (the app tests need the finished app)."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    try:
        listed = subprocess.run(["git", "ls-files", "--error-unmatch", "app.py"], cwd=repo,
                                capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return (repo / "app.py").is_file()
    return listed.returncode == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class AppUnderTest:
    url: str
    demo: object
    app: ModuleType  # latentshift.app.serving (its settings)
    gradio_cache: Path
    downloads: Path
    runs: object = None  # latentshift.app.runs.Runs (its line and store)

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False, download_files=str(self.downloads))


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def runs_for_tests(results: Path, *, waiting: int | None = None, retention_days: float = 30.0):
    """The app's admission line and a result store under ``results`` (kept across restarts of a test)."""
    from latentshift.app import admission, serving
    from latentshift.app.runs import Runs

    store = serving.ResultSettings(folder=results, retention_days=retention_days).open_store()
    line = admission.Line(serving.EXPLAIN_CONCURRENCY, serving.EXPLAIN_WAITING if waiting is None else waiting)
    return Runs(line, store, retention_days)


@contextlib.contextmanager
def serve_app(folder: Path, *, queue_max_size: int | None = None,
              delete_cache: tuple[int, int] | None = None, max_file_size: str | int | None = None,
              run_folder_max_age_s: float | None = None, waiting: int | None = None,
              results: Path | None = None, retention_days: float = 30.0) -> Iterator[AppUnderTest]:
    """Build and launch the app on a free loopback port; close it afterwards.

    waiting: places in the admission line (default the app's); results: the result store's folder
    (default ``folder/results``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = folder / "models"
    models.mkdir(exist_ok=True)
    manifest = write_tiny_manifest(models)
    cache = folder / "gradio-cache"
    downloads = folder / "downloads"
    cache.mkdir(exist_ok=True)
    downloads.mkdir(exist_ok=True)
    with _environ(LATENTSHIFT_MANIFEST=str(manifest), GRADIO_TEMP_DIR=str(cache),
                  GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", NO_PROXY="127.0.0.1,localhost"):
        from latentshift.app import layout, server, serving

        patched = {}
        if queue_max_size is not None:
            patched["QUEUE_MAX_SIZE"] = queue_max_size
        if delete_cache is not None:
            patched["DELETE_CACHE"] = delete_cache
        saved = {name: getattr(serving, name) for name in patched}
        for name, value in patched.items():
            setattr(serving, name, value)
        folders = serving.run_folders()
        saved_age = folders.max_age_s
        if run_folder_max_age_s is not None:
            folders.max_age_s = run_folder_max_age_s
        demo = None
        try:
            runs = runs_for_tests(results or folder / "results", waiting=waiting, retention_days=retention_days)
            demo = layout.build_demo(runs)
            overrides = dict(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                             quiet=True, share=False)
            if max_file_size is not None:
                overrides["max_file_size"] = max_file_size
            server.launch(demo, **overrides)
            yield AppUnderTest(url=demo.local_url, demo=demo, app=serving, gradio_cache=cache, downloads=downloads,
                               runs=runs)
        finally:
            if demo is not None:
                demo.close(verbose=False)
            for name, value in saved.items():
                setattr(serving, name, value)
            folders.max_age_s = saved_age
