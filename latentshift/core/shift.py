"""Latent Shift: counterfactual frames along the classifier's gradient in latent space.

Notation (see ``docs`` in the README): ``x`` is one image (1, 1, H, W) in the pixel range
[-1024, 1024], ``E``/``D`` the autoencoder's encoder/decoder, ``f`` the classifier,
``t`` the target output and ``p(z) = σ(f(D(z)))[t]``.

1. ``z = E(x)``; ``x0 = D(z)`` is the reconstruction (frame λ = 0).
2. ``g = ∂p/∂z`` at ``z`` (one backward pass).
3. ``frame(λ) = D(z + λ·g)``, ``pred(λ) = p(z + λ·g)``; λ < 0 curtails the feature the
   classifier sees, λ > 0 exaggerates it. λ is unitless (a multiple of the gradient).
4. The λ range is given, or searched per direction on the reference ladder
   ``λ_{k+1} = λ_k ∓ (step_size + |λ_k| / 10)``; the ladder is evaluated in batches (both
   directions in the same batch) and every evaluated λ is cached.
5. The sweep decodes and classifies the frames in batches, reusing cached λs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..errors import OptionsError
from ..options import DEFAULTS, DIRECTIONS, HEATMAP_MODES

logger = logging.getLogger(__name__)

Direction = Literal["both", "curtail", "exaggerate"]
HeatmapMode = Literal["int", "max", "mean", "mm"]

#: Ladder rungs per direction evaluated together at most: the batch doubles from
#: ``search_batch`` up to this, so a long search needs few rounds while a batch rarely
#: overshoots the stop by many rungs (each overshooting rung is a wasted decode).
MAX_SEARCH_BATCH = 8

#: Why a direction's search stopped (values of ``ShiftResult.stop_reasons``).
STOP_REASONS = {
    "pred_diff": "the prediction moved by at least pred_diff",
    "floor": "the prediction fell below the floor",
    "ceiling": "the prediction rose above the ceiling",
    "not_moving": "the prediction stopped moving in the wanted direction",
    "pixel_budget": "the image changed by more than the pixel budget",
    "max_lambda": "|λ| reached max_lambda",
    "given_range": "the λ range was given, no search",
    "not_requested": "this direction was not requested",
}


@dataclass
class ShiftResult:
    """What :meth:`LatentShift.attribute` returns.

    Attributes:
        lambdas: (F,) sorted λ of the frames, 0 included.
        preds: (F,) target prediction (probability in [0, 1]) of each frame.
        frames: (F, 1, H, W) decoded frames, pixel range about [-1024, 1024], on the CPU.
        heatmap: (H, W) float32 ≥ 0, where the frames change (see ``heatmap_mode``).
        reconstruction: (1, 1, H, W) ``D(E(x))``, the λ = 0 frame.
        initial_pred: target prediction of the input image itself.
        reconstruction_pred: target prediction of the reconstruction (λ = 0).
        all_preds: (F, C) prediction of *every* classifier output on each frame (the target's
            column equals ``preds``): what else moves along the target's path.
        lambda_range: (λ_min, λ_max) the sweep covered.
        stop_reasons: {"curtail": key, "exaggerate": key}, keys of :data:`STOP_REASONS`.
        pixel_change: (F,) ``sum|frame − x0| / sum|x0|`` per frame.
        target: target output index.
        evaluations: number of λ values decoded and classified (λ = 0 included).
        timings: seconds per stage ("encode_gradient", "search", "sweep", "heatmap").
    """

    lambdas: np.ndarray
    preds: np.ndarray
    frames: torch.Tensor
    heatmap: np.ndarray
    reconstruction: torch.Tensor
    initial_pred: float
    reconstruction_pred: float
    lambda_range: tuple[float, float]
    stop_reasons: dict[str, str]
    pixel_change: np.ndarray
    target: int
    heatmap_mode: str = "int"
    evaluations: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    all_preds: np.ndarray | None = None

    @property
    def map(self) -> np.ndarray:
        """(H, W) where the frames change: the same as ``heatmap`` (the core's common result field)."""
        return self.heatmap

    @property
    def zero_index(self) -> int:
        """Index of the λ = 0 frame (the reconstruction)."""
        return int(np.flatnonzero(self.lambdas == 0.0)[0])

    def summary(self) -> dict:
        """JSON-ready description (no image data)."""
        return {
            "target_index": self.target,
            "lambdas": [float(v) for v in self.lambdas],
            "preds": [float(v) for v in self.preds],
            "initial_pred": float(self.initial_pred),
            "reconstruction_pred": float(self.reconstruction_pred),
            "lambda_range": [float(v) for v in self.lambda_range],
            "stop_reasons": dict(self.stop_reasons),
            "stop_reason_text": {k: STOP_REASONS[v] for k, v in self.stop_reasons.items()},
            "pixel_change": [float(v) for v in self.pixel_change],
            "heatmap_mode": self.heatmap_mode,
            "evaluations": self.evaluations,
            "seconds": {k: round(v, 4) for k, v in self.timings.items()},
        }


def lambda_ladder(step_size: float, max_lambda: float, sign: int) -> list[float]:
    """The reference search ladder on one side: λ_{k+1} = λ_k + sign·(step + |λ_k|/10).

    The last rung is clipped to ``sign·max_lambda``. Returns λ_1, λ_2, ... (0 excluded).
    """
    rungs, current = [], 0.0
    while abs(current) < max_lambda:
        current = current + sign * (step_size + abs(current) / 10.0)
        if abs(current) >= max_lambda:
            current = sign * float(max_lambda)
        rungs.append(current)
    return rungs


def sweep_lambdas(lambda_min: float, lambda_max: float, frames: int) -> np.ndarray:
    """``frames`` λs evenly spaced over [λ_min, λ_max], with λ = 0 always included.

    The frames are shared between the two sides in proportion to their length, so the
    spacing is (nearly) even; the ends are kept exactly (they are usually cached).
    """
    if lambda_min == 0.0 and lambda_max == 0.0:
        return np.zeros(1)
    span = lambda_max - lambda_min
    intervals = max(frames - 1, 1)
    negative = int(round(intervals * (-lambda_min) / span))
    if lambda_min < 0 and negative == 0:
        negative = 1
    if lambda_max > 0 and negative == intervals:
        negative = intervals - 1 if intervals > 1 else negative
    positive = intervals - negative
    left = np.linspace(lambda_min, 0.0, negative + 1) if negative > 0 else np.zeros(1)
    right = np.linspace(0.0, lambda_max, positive + 1)[1:] if positive > 0 else np.zeros(0)
    return np.concatenate([left, right])


class LatentShift:
    """Latent Shift explanations (Cohen et al., MIDL 2021), captum style.

    Args:
        classifier: maps (N, 1, H, W) in [-1024, 1024] to scores (N, C).
        autoencoder: has ``encode(x) -> z`` and ``decode(z) -> x̂`` (x̂ shaped like x).
        apply_sigmoid: apply σ to the classifier's scores (True for logits; False when
            the classifier already returns probabilities).
        batch_size: frames decoded and classified per forward pass.

    Both models are used in eval mode on the device of the autoencoder's parameters.
    """

    def __init__(self, classifier: nn.Module, autoencoder: nn.Module, apply_sigmoid: bool = True,
                 batch_size: int = 8):
        self.classifier = classifier
        self.autoencoder = autoencoder
        self.apply_sigmoid = apply_sigmoid
        if batch_size < 1:
            raise OptionsError("batch_size must be at least 1")
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        for module in (self.autoencoder, self.classifier):
            for parameter in module.parameters():
                return parameter.device
        return torch.device("cpu")

    def _prediction(self, images: torch.Tensor, target: int) -> torch.Tensor:
        """(N, 1, H, W) -> (N,) target prediction in [0, 1] (or raw scores)."""
        return self._predictions(images)[:, target]

    def _predictions(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, C) predictions of every output in [0, 1] (or raw scores)."""
        scores = self.classifier(images)
        return torch.sigmoid(scores) if self.apply_sigmoid else scores

    def attribute(self, x: torch.Tensor, target: int, *,
                  lambda_range: tuple[float, float] | None = None,
                  step_size: float = DEFAULTS.step_size,
                  frames: int = DEFAULTS.frames,
                  direction: Direction = DEFAULTS.direction,
                  pred_diff: float = DEFAULTS.pred_diff,
                  pixel_budget: float = DEFAULTS.pixel_budget,
                  max_lambda: float = DEFAULTS.max_lambda,
                  heatmap: HeatmapMode = DEFAULTS.heatmap,
                  floor: float = 0.05,
                  ceiling: float = 0.95,
                  search_batch: int = 4) -> ShiftResult:
        """Explain ``target`` for image ``x`` of shape (1, 1, H, W) in [-1024, 1024].

        Args:
            target: index of the classifier output to explain.
            lambda_range: (λ_min, λ_max) with λ_min ≤ 0 ≤ λ_max; skips the search.
            step_size: first search step in λ; steps grow by |λ|/10.
            frames: number of sweep frames (λ = 0 included).
            direction: "both", "curtail" (λ ≤ 0) or "exaggerate" (λ ≥ 0).
            pred_diff: stop a direction once the prediction moved this much from λ = 0.
            pixel_budget: stop once ``sum|frame − x0| > pixel_budget · sum|x0|``.
            max_lambda: largest |λ| searched.
            heatmap: "int" (mean |Δ| of consecutive frames), "max"/"mean" (of |x0 − frame|),
                "mm" (|first − last|).
            floor, ceiling: stop curtailing below ``floor`` / exaggerating above ``ceiling``.
            search_batch: ladder rungs per direction in the first batch (doubles each round,
                up to :data:`MAX_SEARCH_BATCH`).
        """
        self._check_options(x, target, lambda_range, step_size, frames, direction, pred_diff,
                            pixel_budget, max_lambda, heatmap, search_batch)
        self.classifier.eval()
        self.autoencoder.eval()
        timings: dict[str, float] = {}
        started = time.perf_counter()
        x = x.to(self.device, torch.float32)
        z, gradient, reconstruction, reconstruction_pred = self._latent_gradient(x, target)
        with torch.inference_mode():
            initial_pred = float(self._prediction(x, target)[0])
        timings["encode_gradient"] = time.perf_counter() - started

        cache = _FrameCache(self, z, gradient, reconstruction, reconstruction_pred, target)
        started = time.perf_counter()
        if lambda_range is not None:
            lambda_min, lambda_max = float(lambda_range[0]), float(lambda_range[1])
            if direction == "curtail":
                lambda_max = 0.0
            elif direction == "exaggerate":
                lambda_min = 0.0
            stop_reasons = {side: "given_range" for side in ("curtail", "exaggerate")}
        else:
            rules = _StopRules(reconstruction_pred, pred_diff, pixel_budget, max_lambda, floor, ceiling)
            sides = [s for s in ("curtail", "exaggerate") if direction in (s, "both")]
            found, stop_reasons = self._search(cache, sides, rules, step_size, max_lambda, search_batch)
            lambda_min, lambda_max = found.get("curtail", 0.0), found.get("exaggerate", 0.0)
        for side in ("curtail", "exaggerate"):
            stop_reasons.setdefault(side, "not_requested")
        timings["search"] = time.perf_counter() - started

        started = time.perf_counter()
        lambdas = sweep_lambdas(lambda_min, lambda_max, frames)
        frame_batch, preds = cache.evaluate(lambdas)
        all_preds = cache.all_outputs(lambdas)
        timings["sweep"] = time.perf_counter() - started

        started = time.perf_counter()
        heatmap_array = compute_heatmap(frame_batch, reconstruction.cpu(), heatmap)
        pixel_change = cache.pixel_change(frame_batch)
        timings["heatmap"] = time.perf_counter() - started
        logger.debug("latent shift: range [%.1f, %.1f], %d evaluations, stops %s",
                     lambda_min, lambda_max, cache.evaluations, stop_reasons)
        return ShiftResult(
            lambdas=lambdas, preds=preds.numpy().astype(np.float64), frames=frame_batch,
            heatmap=heatmap_array, reconstruction=reconstruction.cpu(),
            initial_pred=initial_pred, reconstruction_pred=reconstruction_pred, all_preds=all_preds,
            lambda_range=(lambda_min, lambda_max), stop_reasons=stop_reasons,
            pixel_change=pixel_change, target=target, heatmap_mode=heatmap,
            evaluations=cache.evaluations, timings=timings)

    def latent_gradient(self, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, g): the latent code of ``x`` and ``∂p/∂z`` at it, both detached."""
        z, gradient, _, _ = self._latent_gradient(x.to(self.device, torch.float32), target)
        return z, gradient

    def _latent_gradient(self, x, target):
        with torch.inference_mode():
            z = self.autoencoder.encode(x)
        z = z.clone().requires_grad_(True)  # a normal tensor, outside inference mode
        with torch.enable_grad():
            reconstruction = self.autoencoder.decode(z)
            prediction = self._prediction(reconstruction, target)
            (gradient,) = torch.autograd.grad(prediction.sum(), z)
        return z.detach(), gradient.detach(), reconstruction.detach(), float(prediction.detach()[0])

    def _search(self, cache, sides, rules, step_size, max_lambda, search_batch):
        """Walk each side's ladder in batches until a stop rule fires.

        Returns ({side: λ_end}, {side: stop reason}).
        """
        ladders = {side: lambda_ladder(step_size, max_lambda, -1 if side == "curtail" else 1)
                   for side in sides}
        state = {side: _SideState() for side in sides}
        batch = search_batch
        while any(not s.done for s in state.values()):
            wanted = {side: ladders[side][state[side].next_rung:state[side].next_rung + batch]
                      for side in sides if not state[side].done}
            cache.evaluate(np.array([lam for rungs in wanted.values() for lam in rungs]))
            for side, rungs in wanted.items():
                side_state = state[side]
                for lam in rungs:
                    side_state.next_rung += 1
                    reason, keep = rules.check(side, lam, cache.pred(lam), side_state.last_pred,
                                               cache.change(lam))
                    if reason is None:
                        side_state.accept(lam, cache.pred(lam))
                        continue
                    if keep:
                        side_state.accept(lam, cache.pred(lam))
                    side_state.finish(reason)
                    break
                if not side_state.done and side_state.next_rung >= len(ladders[side]):
                    side_state.finish("max_lambda")
            batch = min(batch * 2, max(search_batch, MAX_SEARCH_BATCH))
        return ({side: s.last_lambda for side, s in state.items()},
                {side: s.reason for side, s in state.items()})

    def _check_options(self, x, target, lambda_range, step_size, frames, direction, pred_diff,
                       pixel_budget, max_lambda, heatmap, search_batch):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise OptionsError(f"x must be a tensor of shape (1, 1, H, W), got {shape}")
        if not torch.isfinite(x).all():
            raise OptionsError("x contains NaN or infinite values")
        if direction not in DIRECTIONS:
            raise OptionsError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if heatmap not in HEATMAP_MODES:
            raise OptionsError(f"heatmap must be one of {HEATMAP_MODES}, got {heatmap!r}")
        if not isinstance(target, (int, np.integer)) or target < 0:
            raise OptionsError(f"target must be a non-negative output index, got {target!r}")
        if frames < 2:
            raise OptionsError(f"frames must be at least 2, got {frames}")
        if lambda_range is not None:
            low, high = lambda_range
            if not (math.isfinite(low) and math.isfinite(high)) or not low <= 0.0 <= high or low == high:
                raise OptionsError(f"lambda_range must satisfy λ_min ≤ 0 ≤ λ_max with λ_min < λ_max, "
                                   f"got ({low}, {high})")
        if not step_size > 0 or not max_lambda > 0:
            raise OptionsError("step_size and max_lambda must be positive")
        if not 0 < pred_diff <= 1 or not pixel_budget > 0:
            raise OptionsError("pred_diff must be in (0, 1] and pixel_budget positive")
        if search_batch < 1:
            raise OptionsError("search_batch must be at least 1")


@dataclass
class _SideState:
    last_lambda: float = 0.0
    last_pred: float | None = None
    next_rung: int = 0
    reason: str = ""
    done: bool = False

    def accept(self, lam: float, pred: float) -> None:
        self.last_lambda, self.last_pred = lam, pred

    def finish(self, reason: str) -> None:
        self.reason, self.done = reason, True


@dataclass
class _StopRules:
    """The stop rules of the search; ``check`` returns (reason or None, keep this λ?)."""

    start_pred: float
    pred_diff: float
    pixel_budget: float
    max_lambda: float
    floor: float
    ceiling: float

    def check(self, side: str, lam: float, pred: float, last_pred: float | None, change: float):
        previous = self.start_pred if last_pred is None else last_pred
        curtail = side == "curtail"
        if change > self.pixel_budget:
            return "pixel_budget", False
        if (curtail and pred >= previous) or (not curtail and pred <= previous):
            return "not_moving", False
        if abs(pred - self.start_pred) >= self.pred_diff:
            return "pred_diff", True
        if curtail and pred < self.floor:
            return "floor", True
        if not curtail and pred > self.ceiling:
            return "ceiling", True
        if abs(lam) >= self.max_lambda:
            return "max_lambda", True
        return None, True


class _FrameCache:
    """Evaluated λ -> (frame, prediction), filled in batches, shared by search and sweep."""

    def __init__(self, explainer: LatentShift, z, gradient, reconstruction, reconstruction_pred, target):
        self.explainer = explainer
        self.z, self.gradient, self.target = z, gradient, target
        self.reconstruction = reconstruction.cpu()
        self.reference_mass = float(self.reconstruction.abs().sum()) or 1.0
        self.frames: dict[float, torch.Tensor] = {0.0: self.reconstruction[0]}
        self.preds: dict[float, float] = {0.0: reconstruction_pred}
        self.outputs: dict[float, torch.Tensor] = {}
        self.changes: dict[float, float] = {0.0: 0.0}
        self.evaluations = 1

    def pred(self, lam: float) -> float:
        return self.preds[float(lam)]

    def change(self, lam: float) -> float:
        return self.changes[float(lam)]

    def evaluate(self, lambdas: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (F, 1, H, W) and predictions (F,) for ``lambdas``, computing only new λs."""
        keys = [float(lam) for lam in lambdas]
        missing = list(dict.fromkeys(k for k in keys if k not in self.preds))
        size = self.explainer.batch_size
        with torch.inference_mode():
            for start in range(0, len(missing), size):
                chunk = missing[start:start + size]
                steps = torch.tensor(chunk, dtype=self.z.dtype, device=self.z.device)
                latents = self.z + steps.view(-1, *([1] * (self.z.dim() - 1))) * self.gradient
                images = self.explainer.autoencoder.decode(latents)
                outputs = self.explainer._predictions(images).float().cpu()
                images = images.float().cpu()
                for lam, image, output in zip(chunk, images, outputs):
                    self.frames[lam] = image.clone()
                    self.preds[lam] = float(output[self.target])
                    self.outputs[lam] = output.clone()
                    self.changes[lam] = float((image - self.reconstruction[0]).abs().sum()) / self.reference_mass
                self.evaluations += len(chunk)
        frames = torch.stack([self.frames[k] for k in keys]) if keys else torch.empty(0)
        return frames, torch.tensor([self.preds[k] for k in keys], dtype=torch.float64)

    def all_outputs(self, lambdas: np.ndarray) -> np.ndarray:
        """(F, C) predictions of every output at already evaluated ``lambdas``."""
        if 0.0 not in self.outputs and any(float(lam) == 0.0 for lam in lambdas):
            with torch.inference_mode():
                scores = self.explainer._predictions(self.reconstruction.to(self.z.device))
            self.outputs[0.0] = scores[0].float().cpu()
        return torch.stack([self.outputs[float(lam)] for lam in lambdas]).numpy().astype(np.float64)

    def pixel_change(self, frames: torch.Tensor) -> np.ndarray:
        diff = (frames - self.reconstruction).abs().flatten(1).sum(1) / self.reference_mass
        return diff.numpy().astype(np.float64)


def compute_heatmap(frames: torch.Tensor, reconstruction: torch.Tensor, mode: str = "int") -> np.ndarray:
    """(F, 1, H, W) frames and (1, 1, H, W) reconstruction -> (H, W) float32 map ≥ 0.

    "int": mean over consecutive frames of |frame_i − frame_{i+1}|; "max"/"mean": max/mean
    over frames of |x0 − frame_i|; "mm": |first − last|.
    """
    if mode not in HEATMAP_MODES:
        raise OptionsError(f"heatmap must be one of {HEATMAP_MODES}, got {mode!r}")
    frames = frames[:, 0].float()
    if frames.shape[0] < 2:
        return np.zeros(frames.shape[-2:], dtype=np.float32)
    if mode == "int":
        result = (frames[1:] - frames[:-1]).abs().mean(0)
    elif mode == "max":
        result = (frames - reconstruction[0]).abs().amax(0)
    elif mode == "mean":
        result = (frames - reconstruction[0]).abs().mean(0)
    else:
        result = (frames[0] - frames[-1]).abs()
    return result.numpy().astype(np.float32)
