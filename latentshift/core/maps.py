"""The one normaliser of attribution maps, any (H, W) map to [0, 1] (numpy only: loads no model code)."""

from __future__ import annotations

from typing import Any

import numpy as np

#: The percentile of a map that is shown at full scale (a few extreme pixels do not flatten the rest).
DEFAULT_PERCENTILE = 99.5


def normalize_map(saliency: Any, absolute: bool = False, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """Scale an (H, W) map to (H, W) float64 in [0, 1]; all zeros when no value is positive.

    ``absolute`` counts |map| (signed maps such as Integrated Gradients), else only the positive
    part. The value at ``percentile`` of the rectified map maps to 1, larger ones are clipped
    (the maximum is used when that value is 0). ValueError for a map that is not 2-D or not
    finite, or a percentile outside (0, 100].
    """
    values = np.asarray(saliency, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("the map has NaN or infinite values")
    if not 0 < float(percentile) <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    values = np.abs(values) if absolute else np.maximum(values, 0.0)
    scale = float(np.percentile(values, percentile))
    if scale <= 0:
        scale = float(values.max())
    if scale <= 0:
        return np.zeros_like(values)
    return np.clip(values / scale, 0.0, 1.0)
