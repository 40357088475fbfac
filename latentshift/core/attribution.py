"""Traditional attribution maps shown beside the Latent Shift: Grad-CAM and Integrated Gradients.

Thin wrappers around captum, so the demo compares the Latent Shift with the maps the paper did
(Cohen et al., MIDL 2021). Input ``x`` is (1, 1, H, W) in the model's pixel range
[-1024, 1024], ``target`` an output index, the map an (H, W) float32 array, higher = more
important (:func:`latentshift.core.maps.normalize_map` brings it to [0, 1]). Both explain the
target's **logit**: the sigmoid saturates for confident predictions and would shrink the
gradients to almost nothing. The model is put in eval mode; gradients are enabled locally
(also inside a caller's ``torch.no_grad()`` / ``torch.inference_mode()``).
"""

from __future__ import annotations

import logging
import operator
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
from torch import nn

from ..errors import OptionsError
from ..options import DEFAULTS

logger = logging.getLogger(__name__)

#: Integration steps of Integrated Gradients (Gauss-Legendre nodes) at the first try, and the
#: tolerance on its convergence delta that decides whether they suffice (measured in
#: docs/benchmark.md with ``python -m latentshift_research.tools.ig_steps``).
DEFAULT_IG_STEPS = DEFAULTS.ig_steps
DEFAULT_IG_TOLERANCE = DEFAULTS.ig_tolerance
#: How often the steps may be doubled to meet the tolerance (16 -> 32 -> 64).
MAX_IG_DOUBLINGS = 2
#: Images per forward/backward pass inside Integrated Gradients on the CPU (bounds memory; 8, 16
#: and 32 cost the same per image on 2 cores). On other devices every step of a try goes in one pass.
DEFAULT_IG_BATCH = 8
#: See :class:`IntegratedGradientsMap` for why a mid-grey image is the default.
DEFAULT_IG_BASELINE = "zeros"


def find_gradcam_layer(model: nn.Module) -> nn.Module:
    """The module whose activations Grad-CAM uses for ``model``: ``model.gradcam_layer`` when
    set, else the last convolutional block (descend while one child holds a convolution; at
    several, take the last, e.g. ``features.denseblock4`` of a DenseNet). A block whose only
    convolution is a direct child is returned whole (its activation included) unless it
    also pools or flattens. ValueError when the model has no ``nn.Conv2d``.
    """
    layer = getattr(model, "gradcam_layer", None)
    if layer is not None:
        if not isinstance(layer, nn.Module):
            raise ValueError(f"{type(model).__name__}.gradcam_layer is a {type(layer).__name__}, "
                             "not an nn.Module")
        return layer
    if not _contains_conv(model):
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d, so Grad-CAM has no layer to use")
    node = model
    while True:
        conv_children = [child for child in node.children() if _contains_conv(child)]
        if not conv_children:  # node is itself a convolution
            return node
        if len(conv_children) > 1:
            logger.debug("Grad-CAM layer of %s: last conv block %s", type(model).__name__,
                         type(conv_children[-1]).__name__)
            return conv_children[-1]
        only_child = conv_children[0]
        if isinstance(only_child, nn.Conv2d):
            is_conv_block = node is not model and not any(
                isinstance(m, _NON_SPATIAL_MODULES) for m in node.modules())
            return node if is_conv_block else only_child
        node = only_child


#: Modules after which activations are no longer an (N, C, h, w) map.
_NON_SPATIAL_MODULES = (nn.Linear, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _contains_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


@dataclass(frozen=True)
class MapResult:
    """An attribution map, the result of :class:`GradCAM` and :class:`IntegratedGradientsMap`.

    Attributes:
        map: (H, W) float32; Grad-CAM ≥ 0; IG signed, summing to about logit(x) − logit(baseline).
        method: "gradcam" or "integrated_gradients".
        convergence_delta: IG only: sum(map) − (logit(x) − logit(baseline)), in logits; else None.
        n_steps: IG only: integration steps used; else None.
    """

    map: np.ndarray
    method: str = ""
    convergence_delta: float | None = None
    n_steps: int | None = None


class GradCAM:
    """Grad-CAM (Selvaraju et al., 2017) of a classifier's target logit via captum's ``LayerGradCam``,
    upsampled bilinearly to the input size.

    Args:
        model: classifier (N, 1, H, W) -> logits (N, C).
        layer: module whose output is used; default :func:`find_gradcam_layer`.
        relu_attributions: keep only the positive part (Grad-CAM as published).
    """

    def __init__(self, model: nn.Module, layer: nn.Module | None = None, relu_attributions: bool = True):
        self.model = model.eval()
        self.layer = layer if layer is not None else find_gradcam_layer(model)
        self.relu_attributions = relu_attributions

    def attribute(self, x: torch.Tensor, target: int) -> MapResult:
        """Grad-CAM map of ``target`` for ``x`` (1, 1, H, W)."""
        target = _check_target(self.model, target)
        height, width = _check_input(x)
        inputs = _input_for(self.model, x)
        # captum hooks the layer for the duration of the call; a concurrent call on the
        # same layer would see the other call's activations, hence one call at a time.
        with _layer_lock(self.layer), _gradients_enabled():
            layer_map = LayerGradCam(self.model, self.layer).attribute(
                inputs, target=target, relu_attributions=self.relu_attributions)
        if layer_map.dim() != 4:
            raise ValueError(f"Grad-CAM layer {type(self.layer).__name__} gives {layer_map.dim()}-D "
                             "activations; choose a layer with (N, C, h, w) output")
        upsampled = LayerAttribution.interpolate(layer_map.detach(), (height, width),
                                                 interpolate_mode="bilinear")
        return MapResult(_to_map(upsampled), method="gradcam")


class IntegratedGradientsMap:
    """Integrated Gradients (Sundararajan et al., 2017) of a target logit, via captum.

    Baseline: the default ``"zeros"`` is a uniform mid-grey image (0 in [-1024, 1024]), as in
    captum and the paper's comparison: between air and bone, so dark (lung) and bright pixels
    can both receive attribution. ``"black"`` (-1024) gives nearly zero attribution to dark
    lung pixels, because IG scales each gradient by (x − baseline). No uniform image is a
    neutral input: the map explains the difference from the baseline's logit.

    Steps: ``n_steps`` Gauss-Legendre nodes first; while |convergence delta| exceeds
    ``tolerance`` · max(|logit(x) − logit(baseline)|, 1), the steps are doubled, at most
    :data:`MAX_IG_DOUBLINGS` times.

    Args:
        model: classifier (N, 1, H, W) -> logits (N, C).
        baseline: "zeros" | "black" | float | tensor broadcastable to the input.
        n_steps: integration steps of the first try (see :data:`DEFAULT_IG_STEPS`).
        internal_batch_size: images per forward/backward pass; None: :data:`DEFAULT_IG_BATCH`
            on the CPU, all steps at once on other devices.
        method: captum's integration rule ("gausslegendre", "riemann_trapezoid", ...).
        tolerance: accepted |convergence delta| as a fraction of the logit change (at
            least 1 logit); 0 or None keeps ``n_steps`` fixed.
    """

    def __init__(self, model: nn.Module, baseline: str | float | torch.Tensor = DEFAULT_IG_BASELINE,
                 n_steps: int = DEFAULT_IG_STEPS, internal_batch_size: int | None = None,
                 method: str = "gausslegendre", tolerance: float | None = DEFAULT_IG_TOLERANCE):
        if int(n_steps) < 1:
            raise OptionsError(f"Integrated Gradients needs n_steps >= 1, got {n_steps}")
        if internal_batch_size is not None and int(internal_batch_size) < 1:
            raise OptionsError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
        if isinstance(baseline, str) and baseline not in ("zeros", "black"):
            raise OptionsError(f"unknown baseline {baseline!r}; use 'zeros', 'black', a number or a tensor")
        if tolerance is not None and not 0 <= float(tolerance) < float("inf"):
            raise OptionsError(f"the IG tolerance must be a number >= 0, got {tolerance}")
        self.model = model.eval()
        self.baseline = baseline
        self.n_steps = int(n_steps)
        self.internal_batch_size = None if internal_batch_size is None else int(internal_batch_size)
        self.method = method
        self.tolerance = float(tolerance or 0.0)

    def baseline_for(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline image for ``x``: a tensor of x's shape, dtype and device."""
        if isinstance(self.baseline, torch.Tensor):
            try:
                return self.baseline.to(dtype=x.dtype, device=x.device).expand_as(x).clone()
            except RuntimeError:
                raise OptionsError(f"baseline of shape {tuple(self.baseline.shape)} does not broadcast "
                                   f"to the input's {tuple(x.shape)}") from None
        if self.baseline == "zeros":
            value = 0.0
        elif self.baseline == "black":
            value = float(getattr(self.model, "input_range", (-1024.0, 1024.0))[0])
        else:
            value = float(self.baseline)
        return torch.full_like(x, value)

    def attribute(self, x: torch.Tensor, target: int) -> MapResult:
        """Integrated Gradients of ``target``'s logit for ``x`` (1, 1, H, W): a signed map."""
        target = _check_target(self.model, target)
        _check_input(x)
        inputs = _input_for(self.model, x)
        baseline = self.baseline_for(inputs)
        integrated_gradients = IntegratedGradients(self.model)
        steps = self.n_steps
        batch = self.internal_batch_size or (DEFAULT_IG_BATCH if inputs.device.type == "cpu" else None)
        with _gradients_enabled():
            for doubling in range(MAX_IG_DOUBLINGS + 1):
                attributions, delta = integrated_gradients.attribute(
                    inputs, baselines=baseline, target=target, n_steps=steps, method=self.method,
                    internal_batch_size=batch, return_convergence_delta=True)
                delta = float(delta.detach().reshape(-1)[0])
                if self._converged(attributions, delta) or doubling == MAX_IG_DOUBLINGS:
                    break
                logger.debug("IG convergence delta %.4g at %d steps: refining with %d", delta, steps, 2 * steps)
                steps *= 2
        return MapResult(method="integrated_gradients", map=_to_map(attributions.detach().sum(dim=1, keepdim=True)),
                         convergence_delta=delta, n_steps=steps)

    def _converged(self, attributions: torch.Tensor, delta: float) -> bool:
        """Whether |delta| is within the tolerance (always, when the tolerance is 0)."""
        if self.tolerance <= 0:
            return True
        logit_change = float(attributions.detach().double().sum()) - delta  # logit(x) - logit(baseline)
        return abs(delta) <= self.tolerance * max(abs(logit_change), 1.0)


# -- helpers -------------------------------------------------------------------------

_LAYER_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_LAYER_LOCKS_GUARD = threading.Lock()


def _layer_lock(layer: nn.Module) -> threading.Lock:
    with _LAYER_LOCKS_GUARD:
        return _LAYER_LOCKS.setdefault(layer, threading.Lock())


@contextmanager
def _gradients_enabled() -> Iterator[None]:
    """Autograd on for this thread only, also inside no_grad/inference_mode."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _check_input(x: torch.Tensor) -> tuple[int, int]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 1:
        raise ValueError(f"expected an image tensor of shape (1, 1, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating point image, got {x.dtype}")
    return int(x.shape[2]), int(x.shape[3])


def _check_target(model: nn.Module, target: int) -> int:
    try:
        index = operator.index(target)
    except TypeError:
        raise OptionsError(f"target must be an integer output index, got {target!r}") from None
    pathologies = getattr(model, "pathologies", None)
    if pathologies is not None:
        if not 0 <= index < len(pathologies):
            raise OptionsError(f"target index {index} is out of range for a classifier with "
                               f"{len(pathologies)} outputs")
        if not pathologies[index]:
            raise OptionsError(f"output {index} of the classifier is unused (no pathology name)")
    elif index < 0:
        raise OptionsError(f"target index must be >= 0, got {index}")
    return index


def _input_for(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A fresh, non-inference copy of ``x`` on the model's device (the caller's tensor is untouched)."""
    parameter = next(model.parameters(), None)
    device, dtype = (x.device, x.dtype) if parameter is None else (parameter.device, parameter.dtype)
    with torch.inference_mode(False):
        return x.detach().to(device=device, dtype=dtype).clone()


def _to_map(attributions: torch.Tensor) -> np.ndarray:
    """(1, 1, H, W) tensor -> (H, W) float32 array."""
    return attributions[0, 0].to("cpu", torch.float32).numpy().copy()
