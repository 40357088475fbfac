"""The Gradio app: ``layout`` (the page), ``handlers`` (plain functions), ``serving`` (limits,
folders, command line) and ``server`` (launch and run).

``latentshift app`` or ``python app.py`` serves it; :func:`build_demo` gives the Blocks unlaunched.
Nothing here imports Gradio until it is used, so the command line can set the environment first.
Research and teaching demo, not for clinical use.
"""

from __future__ import annotations

import os

# Medical uploads: no usage statistics leave the server (set before any module here imports Gradio).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# Gradio's queue keeps a record of the last GRADIO_ANALYTICS_MAX_EVENTS events (default 10,000) and rebuilds
# a pandas summary of all of them after every GRADIO_ANALYTICS_CACHE_FREQUENCY events (default 1): over a
# long day that is memory growing to 10,000 records and a summary costing more with every event. The app
# shows no such summary, so it keeps few records and summarises rarely (docs/limits.md, "Soak").
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "200")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

__all__ = ["build_demo", "launch", "main"]


def __getattr__(name: str):
    if name == "build_demo":
        from .layout import build_demo

        return build_demo
    if name in ("launch", "main"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'latentshift.app' has no attribute {name!r}")
