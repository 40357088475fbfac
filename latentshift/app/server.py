"""Serving the app: :func:`launch` with the serving options, :func:`main` until stopped."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import gradio as gr

from ..errors import LatentShiftError
from ..pipeline import Pipeline
from . import serving
from .layout import CSS, build_demo

logger = logging.getLogger("latentshift.app")


def launch(demo: gr.Blocks, **overrides):
    """``demo.launch`` with the app's serving options; keyword arguments override them."""
    options = {**serving.launch_options(), "css": CSS, "theme": gr.themes.Soft(primary_hue="blue")}
    options["allowed_paths"] = [*options["allowed_paths"], *getattr(demo, "result_paths", [])]
    return demo.launch(**{**options, **overrides})


def serving_runs(settings: serving.ResultSettings):
    """The admission line and the result store of a served app (restored from, and mirrored to, the
    dataset repo where one is configured)."""
    from ..results.mirror import start_mirror
    from .admission import Line
    from .runs import Runs

    store = settings.open_store()
    start_mirror(store, settings.mirror_repo, settings.token, every_minutes=settings.mirror_every_minutes)
    store.sweep()
    return Runs(Line(serving.EXPLAIN_CONCURRENCY, serving.EXPLAIN_WAITING), store, settings.retention_days)


def main(command_line: argparse.Namespace) -> None:
    """Build and serve the app until stopped (Ctrl-C or SIGTERM)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A stop from the host (SIGTERM) exits like Ctrl-C, so the run folders are deleted at exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Pipeline.configure(command_line.settings)  # read once at the entry point (serving.parse_args)
    try:
        serving.run_folders().max_age_s = command_line.temp_max_age
        demo = build_demo(serving_runs(serving.ResultSettings.from_command_line(command_line)),
                          delete_cache=serving.delete_cache_for(command_line.temp_max_age))
    except LatentShiftError as exc:
        raise SystemExit(f"cannot start the app: {exc}") from None
    launch(demo, server_name=command_line.host, server_port=command_line.port, share=command_line.share,
           root_path=command_line.root_path, quiet=True, prevent_thread_lock=True)
    for line in serving.launch_messages(demo.local_url, demo.share_url):
        logger.info("%s", line)
    demo.block_thread()
