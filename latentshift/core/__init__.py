"""Core: the explanation methods, each a class with ``attribute(x, target, ...)`` (captum's shape).

* :class:`LatentShift` — the counterfactual sweep (Cohen et al., MIDL 2021) → one
  :class:`ShiftResult` per image, its options one :class:`ShiftOptions`;
* :class:`GradCAM`, :class:`IntegratedGradientsMap` — the traditional maps shown beside it;
* :func:`~latentshift.core.maps.normalize_map` — any of their maps to [0, 1] for display.

Every method takes images in the model pixel range [-1024, 1024] and an integer output index
``target``: ``LatentShift`` a batch (B, 1, H, W) and a list of B results, the maps one image
(1, 1, H, W) and one result. Each result's ``map`` is an (H, W) float32 array where higher
means more important. No UI, file or model-loading code lives here. The names below are
imported on first use, so :mod:`latentshift.core.maps` loads without torch.
"""

import importlib

#: Public name -> the module of this room that defines it.
_EXPORTS = {"LatentShift": ".shift", "ShiftOptions": ".shift", "ShiftResult": ".shift", "GradCAM": ".attribution",
            "IntegratedGradientsMap": ".attribution", "MapResult": ".attribution", "normalize_map": ".maps"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentshift.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
