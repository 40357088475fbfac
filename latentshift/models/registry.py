"""The explicit architecture registry: manifest name -> constructor.

Every architecture the package ships is listed here by name (no registration as a side
effect of an import); a user's own architecture is added with
:func:`register_architecture` before its manifest entry is loaded.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import WeightsError
from . import demo, xrv

#: Architecture name (as written in ``weights_manifest.json``) -> constructor taking the
#: manifest entry's ``architecture_kwargs`` plus ``labels``/``thresholds``/``resolution``.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str):
    """Decorator that registers a model constructor under ``name``."""

    def wrap(builder: Callable[..., nn.Module]):
        ARCHITECTURES[name] = builder
        return builder

    return wrap


def build_architecture(name: str, **kwargs) -> nn.Module:
    """Build the architecture ``name`` with freshly initialised weights."""
    try:
        builder = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise WeightsError(f"unknown architecture {name!r}; known: {known}") from None
    return builder(**kwargs)


def _xrv_densenet(*, labels, thresholds=None, resolution=224, **_):
    return xrv.XRVDenseNetClassifier(labels, thresholds, resolution)


def _xrv_resnetae(*, resolution=224, **_):
    return xrv.XRVResNetAE(resolution)


ARCHITECTURES.update({
    "xrv-densenet121": _xrv_densenet,
    "xrv-resnetae101": _xrv_resnetae,
    **demo.BUILDERS,
})
