"""Core: the explanation methods, each a class with ``attribute(x, target, ...)`` (captum's shape).

* :class:`LatentShift` — the counterfactual sweep (Cohen et al., MIDL 2021) → one
  :class:`ShiftResult` per image, its options one :class:`ShiftOptions`;
* :class:`GradCAM`, :class:`IntegratedGradientsMap` — the traditional maps shown beside it.

Every method takes images in the model pixel range [-1024, 1024] and an integer output index
``target``: ``LatentShift`` a batch (B, 1, H, W) and a list of B results, the maps one image
(1, 1, H, W) and one result. Each result's ``map`` is an (H, W) float32 array where higher
means more important. No UI, file or model-loading code lives here.
"""

from .attribution import GradCAM, IntegratedGradientsMap, MapResult
from .shift import LatentShift, ShiftOptions, ShiftResult

__all__ = ["LatentShift", "ShiftOptions", "ShiftResult", "GradCAM", "IntegratedGradientsMap", "MapResult"]
