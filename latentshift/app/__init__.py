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

__all__ = ["build_demo", "launch", "main"]


def __getattr__(name: str):
    if name == "build_demo":
        from .layout import build_demo

        return build_demo
    if name in ("launch", "main"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'latentshift.app' has no attribute {name!r}")
