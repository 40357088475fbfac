"""ZeroGPU (Hugging Face's shared GPUs for Spaces) through the ``spaces`` package; a no-op elsewhere.

On a ZeroGPU Space (``SPACES_ZERO_GPU=true``, set by the platform) a GPU is lent only while a
``spaces.GPU`` function runs, in a forked worker that pickles its arguments and results. So the app's
GPU-bound calls (:mod:`.handlers`) use :func:`task` and take plain values (paths, model ids, options);
the models are loaded and moved to ``"cuda"`` in the main process first (the patched torch maps them
onto the lent GPU at each call), and what the calls return is on the CPU. Elsewhere, or without the
``spaces`` package, :func:`task` returns the function itself and the models stay on the CPU.
``spaces`` must be imported before anything initialises CUDA: the app package imports this module
before any model is loaded.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, TypeVar

try:  # Hugging Face's package (requirements.txt); optional for `pip install latentshift[app]`
    import spaces
except ImportError:  # pragma: no cover - exercised where the package is absent
    spaces = None

logger = logging.getLogger("latentshift.app")

F = TypeVar("F", bound=Callable)

#: Read once, at import, as ``spaces`` itself does.
ON_ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "t", "true")

#: Seconds of GPU asked for per call (ZeroGPU's default is 60; shorter requests queue first). Not
#: measured on a GPU: on 2 CPU cores the paper's pair explains with the default settings in 3.4-3.7 s
#: (docs/benchmark.md), so 60 s leaves room for the largest settings (100 frames, 2,048 IG steps) and
#: the first call's CUDA start-up; a comparison runs up to four classifiers, each with its own sweep.
PREDICT_SECONDS = 20
EXPLAIN_SECONDS = 60
COMPARE_SECONDS = 120


def task(duration: int) -> Callable[[F], F]:
    """Decorator: ``spaces.GPU(duration=duration)`` (the function itself outside ZeroGPU)."""

    def decorate(function: F) -> F:
        if spaces is None:
            return function
        return spaces.GPU(duration=duration)(function)

    return decorate


def device() -> str:
    """Where the app's models live: ``"cuda"`` on ZeroGPU (the patched torch reports a GPU), else the CPU."""
    if not ON_ZERO_GPU:
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    logger.warning("SPACES_ZERO_GPU is set but torch sees no GPU; the models stay on the CPU")
    return "cpu"
