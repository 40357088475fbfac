"""Core: the explanation methods, each a class with ``attribute(x, target, ...)`` (captum's shape).

* :class:`LatentShift` — the counterfactual sweep (Cohen et al., MIDL 2021) → :class:`ShiftResult`;
* :class:`GradCAM`, :class:`IntegratedGradientsMap` — the traditional maps shown beside it.

Every method takes ``x`` of shape (1, 1, H, W) in the model pixel range [-1024, 1024] and an
integer output index ``target``, and returns a result whose ``map`` is an (H, W) float32
array where higher means more important. No UI, file or model-loading code lives here.
"""

from .attribution import GradCAM, IntegratedGradientsMap, MapResult
from .shift import LatentShift, ShiftResult

__all__ = ["LatentShift", "ShiftResult", "GradCAM", "IntegratedGradientsMap", "MapResult"]
