"""torchxrayvision architectures (DenseNet121 classifier, ResNetAE-101), built without weights.

The weights come from the Hub through :mod:`latentshift.weights`; torchxrayvision is
imported only when one of these models is built.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .conventions import PIXEL_RANGE


class XRVDenseNetClassifier(nn.Module):
    """torchxrayvision DenseNet121 returning logits (no sigmoid, no op_norm).

    Args:
        pathologies: names of the C outputs (torchxrayvision order; '' = unused).
        thresholds: optional operating points on the sigmoid output, length C.
        resolution: input side in pixels.
    Shapes: (N, 1, R, R) in [-1024, 1024] -> (N, C) logits.
    """

    def __init__(self, pathologies: Sequence[str], thresholds: Sequence[float] | None = None,
                 resolution: int = 224):
        super().__init__()
        import torchxrayvision as xrv

        self.net = xrv.models.DenseNet(weights=None, num_classes=len(pathologies),
                                       apply_sigmoid=False, op_threshs=None)
        self.pathologies = list(pathologies)
        self.thresholds = [float("nan") if t is None else float(t)
                           for t in (thresholds or [math.nan] * len(pathologies))]
        self.resolution = resolution
        self.input_range = PIXEL_RANGE

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last dense block (a property, so its weights are not listed twice)."""
        return self.net.features.denseblock4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.features(x)
        out = torch.relu(features)
        out = torch.nn.functional.adaptive_avg_pool2d(out, (1, 1)).flatten(1)
        return self.net.classifier(out)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accepts both our keys (``net.*``) and torchxrayvision's bare DenseNet keys."""
        if state_dict and not any(k.startswith("net.") for k in state_dict):
            state_dict = {f"net.{k}": v for k, v in state_dict.items() if k != "op_threshs"}
        state_dict = {k: v for k, v in state_dict.items() if k != "net.op_threshs"}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class XRVResNetAE(nn.Module):
    """torchxrayvision ResNetAE-101 (the paper's autoencoder), built without weights.

    Shapes: encode (N, 1, 224, 224) -> (N, 512, 3, 3); decode back to (N, 1, 224, 224).
    """

    def __init__(self, resolution: int = 224):
        super().__init__()
        import torchxrayvision as xrv

        self.net = xrv.autoencoders.ResNetAE101()
        self.net.weights = None
        self.resolution = resolution
        self.input_range = PIXEL_RANGE

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x, check_resolution=False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        size = [z.shape[0], 1, self.resolution, self.resolution]
        return self.net.decode(z, image_size=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accepts both our keys (``net.*``) and torchxrayvision's bare ResNetAE keys."""
        if state_dict and not any(k.startswith("net.") for k in state_dict):
            state_dict = {f"net.{k}": v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
