"""Model conventions and architectures.

Every model follows the torchxrayvision conventions so that the demo models and the
Hub models go through the same pipeline:

* input: a float tensor of shape (N, 1, R, R), R = ``model.resolution`` (224), pixel
  range [-1024, 1024] (``model.input_range``);
* a **classifier** maps it to *logits* of shape (N, C) and carries
  ``pathologies`` (C names; an empty string marks an unused output), optional
  ``thresholds`` (C decision thresholds on the sigmoid output, NaN where unknown)
  and ``gradcam_layer`` (the module whose activations Grad-CAM uses — a property,
  so that its parameters are not registered twice in the state dict);
* an **autoencoder** has ``encode(x) -> z`` and ``decode(z) -> x̂`` with x̂ of the
  input's shape and range.

Architectures are built *without* weights from a name in :data:`ARCHITECTURES`;
:mod:`latentshift.weights` then loads a verified state dict into them.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

PIXEL_RANGE = (-1024.0, 1024.0)


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


#: Architecture name (as written in ``weights_manifest.json``) -> constructor taking
#: the manifest entry's ``architecture_kwargs`` plus ``labels``/``thresholds``/``resolution``.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str):
    """Decorator that registers a model constructor under ``name``."""

    def wrap(builder: Callable[..., nn.Module]):
        ARCHITECTURES[name] = builder
        return builder

    return wrap


@register_architecture("xrv-densenet121")
def _build_xrv_densenet(*, labels, thresholds=None, resolution=224, **_):
    return XRVDenseNetClassifier(labels, thresholds, resolution)


@register_architecture("xrv-resnetae101")
def _build_xrv_resnetae(*, resolution=224, **_):
    return XRVResNetAE(resolution)


def build_architecture(name: str, **kwargs) -> nn.Module:
    """Build the architecture ``name`` with freshly initialised weights."""
    _import_demo_architectures()
    try:
        builder = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        from .errors import WeightsError

        raise WeightsError(f"unknown architecture {name!r}; known: {known}") from None
    return builder(**kwargs)


def _import_demo_architectures() -> None:
    """The demo architectures register themselves when their module is imported."""
    from . import demo_models  # noqa: F401
