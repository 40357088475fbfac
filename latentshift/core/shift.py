"""Latent Shift: counterfactual frames along the classifier's gradient in latent space.

Notation (see ``docs`` in the README): ``x`` is one image (1, 1, H, W) in the pixel range
[-1024, 1024], ``E``/``D`` the autoencoder's encoder/decoder, ``f`` the classifier,
``t`` the target output and ``p(z) = σ(f(D(z)))[t]``.

1. ``z = E(x)``; ``x0 = D(z)`` is the reconstruction (frame λ = 0).
2. ``g = ∂p/∂z`` at ``z`` (one backward pass).
3. ``frame(λ) = D(z + λ·g)``, ``pred(λ) = p(z + λ·g)``; λ < 0 curtails the feature the
   classifier sees, λ > 0 exaggerates it. λ is unitless (a multiple of the gradient).
4. The λ range is given, or searched per direction until a stop rule fires, either
   ``search="bisect"`` (default: bracket by doubling |λ| from ``step_size``, then bisect to
   :data:`BISECT_PRECISION` relative to |λ|) or ``search="ladder"`` (the reference
   implementation's ladder ``λ ← λ − step + λ // 10``, its check order and its end, exactly).
   Every evaluated λ is cached.
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
from ..options import DEFAULTS, DIRECTIONS, HEATMAP_MODES, SEARCH_MODES

logger = logging.getLogger(__name__)

Direction = Literal["both", "curtail", "exaggerate"]
HeatmapMode = Literal["int", "max", "mean", "mm"]

#: Ladder rungs per direction evaluated together at most (on an accelerator): the batch
#: doubles from ``search_batch`` up to this, so a long search needs few rounds while a batch
#: rarely overshoots the stop by many rungs (each overshooting rung is a wasted decode).
MAX_SEARCH_BATCH = 8

#: Relative precision of the bisect search: it stops once the bracket [λ_ok, λ_stop] is
#: narrower than this fraction of |λ_stop| and returns λ_stop (where a stop rule fired).
BISECT_PRECISION = 0.02

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
    """The reference implementation's search ladder on one side (0 excluded).

    Curtailing (``sign`` = -1) it is ``λ ← λ − step_size + λ // 10`` with floor division on
    the float values, as the reference computes it: −10, −21, −34, −48, −63, −80, … for
    step 10. Exaggerating (``sign`` = +1) is its mirror image (+10, +21, +34, …). The ladder
    is not clipped: it ends at the first rung with |λ| ≥ ``max_lambda`` (e.g. −3103).
    """
    rungs, current = [], 0.0  # ``current`` walks the curtail side (≤ 0)
    while current > -max_lambda:
        current = current - step_size + current // 10
        rungs.append(-current if sign > 0 else current)
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

    def attribute(self, x: torch.Tensor, target: int, *, lambda_range: tuple[float, float] | None = None,
                  step_size: float = DEFAULTS.step_size, frames: int = DEFAULTS.frames,
                  direction: Direction = DEFAULTS.direction, pred_diff: float = DEFAULTS.pred_diff,
                  pixel_budget: float = DEFAULTS.pixel_budget, max_lambda: float = DEFAULTS.max_lambda,
                  heatmap: HeatmapMode = DEFAULTS.heatmap, floor: float = 0.05, ceiling: float = 0.95,
                  search: str = DEFAULTS.search, precision: float = BISECT_PRECISION,
                  search_batch: int | None = None, initial_pred: float | None = None) -> ShiftResult:
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
            search: "bisect" (bracket and bisect, the default) or "ladder" (the reference's
                ladder and its exact answer); see :meth:`_search`.
            precision: relative precision of the bisect search (0.02 = 2 % of |λ|).
            search_batch: ladder rungs per direction per batch (doubles each round, up to
                :data:`MAX_SEARCH_BATCH`); default 1 on the CPU (where a batch of N costs
                about N single evaluations), 4 elsewhere.
            initial_pred: the target prediction of ``x`` when the caller already has it
                (saves one classifier call); computed otherwise.
        """
        self._check_options(x, target, lambda_range, step_size, frames, direction, pred_diff,
                            pixel_budget, max_lambda, heatmap, search_batch, search, precision)
        self.classifier.eval()
        self.autoencoder.eval()
        timings: dict[str, float] = {}
        started = time.perf_counter()
        x = x.to(self.device, torch.float32)
        z, gradient, reconstruction, reconstruction_pred = self._latent_gradient(x, target)
        if initial_pred is None:
            with torch.inference_mode():
                initial_pred = float(self._prediction(x, target)[0])
        timings["encode_gradient"] = time.perf_counter() - started

        cache = _FrameCache(self, z, gradient, reconstruction, reconstruction_pred, target)
        started = time.perf_counter()
        rules = None if lambda_range is not None else _StopRules(
            reconstruction_pred, pred_diff, cache.budget_threshold(pixel_budget), max_lambda, floor, ceiling)
        (lambda_min, lambda_max), stop_reasons = self._find_range(
            cache, lambda_range, direction, rules, step_size, search, precision, search_batch)
        timings["search"] = time.perf_counter() - started
        result = self._sweep(cache, lambda_min, lambda_max, frames, heatmap, timings)
        logger.debug("latent shift: range [%.1f, %.1f], %d evaluations, stops %s",
                     lambda_min, lambda_max, cache.evaluations, stop_reasons)
        return ShiftResult(**result, reconstruction=reconstruction.cpu(), initial_pred=initial_pred,
                           reconstruction_pred=reconstruction_pred, lambda_range=(lambda_min, lambda_max),
                           stop_reasons=stop_reasons, target=target, heatmap_mode=heatmap,
                           evaluations=cache.evaluations, timings=timings)

    def _find_range(self, cache, lambda_range, direction, rules, step_size, search, precision, search_batch):
        """((λ_min, λ_max), stop reason per side): the given range, or the search's ends."""
        if lambda_range is not None:
            lambda_min, lambda_max = float(lambda_range[0]), float(lambda_range[1])
            if direction == "curtail":
                lambda_max = 0.0
            elif direction == "exaggerate":
                lambda_min = 0.0
            stop_reasons = {side: "given_range" for side in ("curtail", "exaggerate")}
        else:
            sides = [s for s in ("curtail", "exaggerate") if direction in (s, "both")]
            found, stop_reasons = self._search(cache, sides, rules, step_size, search, precision, search_batch)
            lambda_min, lambda_max = found.get("curtail", 0.0), found.get("exaggerate", 0.0)
        for side in ("curtail", "exaggerate"):
            stop_reasons.setdefault(side, "not_requested")
        return (lambda_min, lambda_max), stop_reasons

    @staticmethod
    def _sweep(cache, lambda_min: float, lambda_max: float, frames: int, heatmap: str, timings: dict) -> dict:
        """The sweep's frames and predictions (cached λs reused), heatmap and pixel change."""
        started = time.perf_counter()
        lambdas = sweep_lambdas(lambda_min, lambda_max, frames)
        frame_batch, preds = cache.evaluate(lambdas)
        all_preds = cache.all_outputs(lambdas)
        timings["sweep"] = time.perf_counter() - started
        started = time.perf_counter()
        heatmap_array = compute_heatmap(frame_batch, cache.reconstruction, heatmap)
        pixel_change = cache.pixel_change(frame_batch)
        timings["heatmap"] = time.perf_counter() - started
        return dict(lambdas=lambdas, preds=preds.numpy().astype(np.float64), frames=frame_batch,
                    heatmap=heatmap_array, all_preds=all_preds, pixel_change=pixel_change)

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

    def _search(self, cache, sides, rules, step_size, search, precision, search_batch):
        """Search each side until a stop rule fires; ({side: λ_end}, {side: stop reason}).

        "ladder": the reference's rungs (:func:`lambda_ladder`), λ = 0 checked first, the
        end is the rung at which a rule fired. "bisect": |λ| doubles from ``step_size``
        (clipped at max_lambda) until a rule fires, then the bracket is bisected to
        ``precision``; the end is the closest λ found at which a rule fires. The rules are
        :class:`_StopRules` in the reference's order for both. On the CPU each side's probes
        are evaluated on their own (a batch costs its size); elsewhere the two sides'
        probes share a batch.
        """
        on_cpu = self.device.type == "cpu"
        if search == "ladder":
            batch = search_batch or (1 if on_cpu else 4)
            largest = 1 if on_cpu and search_batch is None else max(batch, MAX_SEARCH_BATCH)
            walkers = {side: _ladder_walker(cache, side, rules, step_size, batch, largest) for side in sides}
        elif not bool(cache.gradient.any()):  # p does not depend on z here: nothing moves
            return {side: 0.0 for side in sides}, {side: "not_moving" for side in sides}
        else:
            walkers = {side: _bisect_walker(cache, side, rules, step_size, precision) for side in sides}
        ends = _drive(cache, walkers, share=not on_cpu)
        return ({side: lam for side, (lam, _) in ends.items()},
                {side: reason for side, (_, reason) in ends.items()})

    def _check_options(self, x, target, lambda_range, step_size, frames, direction, pred_diff,
                       pixel_budget, max_lambda, heatmap, search_batch, search, precision):
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
        if search_batch is not None and search_batch < 1:
            raise OptionsError("search_batch must be at least 1")
        if search not in SEARCH_MODES:
            raise OptionsError(f"search must be one of {SEARCH_MODES}, got {search!r}")
        if not 0 < precision < 1:
            raise OptionsError(f"precision must be in (0, 1), got {precision}")


def _drive(cache, walkers: dict, share: bool) -> dict[str, tuple[float, str]]:
    """Run the sides' walkers: each yields the λs it needs evaluated next and returns
    (λ_end, reason). ``share``: one batch for both sides' λs per round."""
    ends, wanted = {}, {}
    for side, walker in walkers.items():
        _advance(side, walker, wanted, ends, first=True)
    while wanted:
        if share:
            cache.evaluate(np.array([lam for lams in wanted.values() for lam in lams]))
        for side in list(wanted):
            if not share:
                cache.evaluate(np.array(wanted[side]))
            _advance(side, walkers[side], wanted, ends)
    return ends


def _advance(side, walker, wanted, ends, first=False) -> None:
    try:
        wanted[side] = next(walker) if first else walker.send(None)
    except StopIteration as stop:
        wanted.pop(side, None)
        ends[side] = stop.value


def _ladder_walker(cache, side, rules, step_size, batch, largest):
    """The reference search on one side: rungs 0, λ_1, λ_2, … checked in order against the
    previous rung's prediction, ``batch`` rungs at a time (doubling up to ``largest``);
    returns (the rung at which a rule fired, the rule)."""
    rungs = [0.0] + lambda_ladder(step_size, rules.max_lambda, -1 if side == "curtail" else 1)
    previous, index = rules.start_pred, 0
    while True:
        chunk = rungs[index:index + batch]
        index += len(chunk)
        yield chunk
        for lam in chunk:
            pred = cache.pred(lam)
            reason = rules.check(side, lam, pred, previous, cache.diff(lam))
            if reason is not None:
                return lam, reason
            previous = pred
        batch = min(batch * 2, largest)


def _bisect_walker(cache, side, rules, step_size, precision):
    """Bracket-and-bisect on one side; returns (λ_end, rule): λ_end fires a rule and is within
    ``precision``·|λ_end| of a λ that fires none (or is ±max_lambda, or 0).

    Bracket: from ``step_size``, each next |λ| is where the last two probes' prediction and
    pixel change, extended linearly, would fire a rule (times 1 + precision/2, between 1.25×
    and 8× the last |λ|; 2× when they do not say). Bisect: each split point is the rules'
    interpolated crossing, just on the far side of it from the longer part of the bracket, so
    a good estimate closes the bracket in two probes; the plain midpoint whenever a split
    did not halve the bracket.
    """
    sign = -1.0 if side == "curtail" else 1.0
    reason = rules.check(side, 0.0, rules.start_pred, rules.start_pred, 0.0)
    if reason is not None:
        return 0.0, reason
    previous, low, low_pred = 0.0, 0.0, rules.start_pred
    high = sign * min(float(step_size), rules.max_lambda)
    while True:  # bracket
        yield [high]
        reason = rules.check(side, high, cache.pred(high), low_pred, cache.diff(high), check_max=False)
        if reason is None and abs(high) >= rules.max_lambda:
            return high, "max_lambda"
        if reason is not None:
            break
        previous, low, low_pred = low, high, cache.pred(high)
        guess = _crossing(cache, rules, side, previous, low)
        factor = 2.0 if guess is None else min(max(guess / low * (1 + precision / 2), 1.25), 8.0)
        high = sign * min(abs(low) * factor, rules.max_lambda)
    halved = True
    while abs(high - low) > precision * abs(high):
        middle = _split_point(cache, rules, side, low, high, precision) if halved else (low + high) / 2
        width = abs(high - low)
        yield [middle]
        found = rules.check(side, middle, cache.pred(middle), low_pred, cache.diff(middle))
        if found is None:
            low, low_pred = middle, cache.pred(middle)
        else:
            high, reason = middle, found
        halved = abs(high - low) <= width / 2
    return high, reason


def _crossing(cache, rules, side, a: float, b: float) -> float | None:
    """The λ where the rules that are continuous in λ (pixel budget, pred_diff, floor/ceiling)
    would first fire, on straight lines through the prediction and pixel change at the
    evaluated λs ``a`` and ``b`` (same side, |a| < |b|): a + t·(b − a) for the smallest t > 0;
    None when no line reaches its limit going outwards."""
    steps = []
    d_a, d_b = cache.diff(a), cache.diff(b)
    if d_b > d_a:
        steps.append((rules.pixel_threshold - d_a) / (d_b - d_a))
    p_a, p_b = cache.pred(a), cache.pred(b)
    limits = ((rules.start_pred - rules.pred_diff, rules.floor) if side == "curtail"
              else (rules.start_pred + rules.pred_diff, rules.ceiling))
    if p_b != p_a:
        steps += [(limit - p_a) / (p_b - p_a) for limit in limits]
    steps = [t for t in steps if t > 0 and math.isfinite(t)]
    return a + min(steps) * (b - a) if steps else None


def _split_point(cache, rules, side, low: float, high: float, precision: float) -> float:
    """The next bisect probe in (low, high): the interpolated crossing moved by precision/2·|λ|
    towards the longer part of the bracket, kept 5 % of the bracket away from its ends; the
    midpoint when the interpolation says nothing."""
    crossing = _crossing(cache, rules, side, low, high)
    width = high - low
    if crossing is None or not min(low, high) < crossing < max(low, high):
        return (low + high) / 2
    shift = precision / 2 * abs(crossing) * math.copysign(1.0, width)
    probe = crossing + shift if abs(high - crossing) > abs(crossing - low) else crossing - shift
    inner_low, inner_high = low + 0.05 * width, high - 0.05 * width
    return min(max(probe, min(inner_low, inner_high)), max(inner_low, inner_high))


@dataclass
class _StopRules:
    """The reference's stop rules in its order (``check`` returns the rule that fires or None).

    ``pixel_threshold`` is ``pixel_budget · sum|x0|`` in float32, as the reference compares
    ``sum|frame − x0| > sum|x0| · budget``.
    """

    start_pred: float
    pred_diff: float
    pixel_threshold: float
    max_lambda: float
    floor: float
    ceiling: float

    def check(self, side: str, lam: float, pred: float, previous: float, diff_sum: float,
              check_max: bool = True) -> str | None:
        """The first rule that fires at λ (pred and ``previous``, the last accepted λ's, in
        [0, 1]; ``diff_sum`` = sum|frame − x0| in pixel units), else None."""
        if side == "curtail":
            if previous < pred:
                return "not_moving"
            if pred < self.floor:
                return "floor"
            if self.start_pred - self.pred_diff > pred:
                return "pred_diff"
        else:
            if previous > pred:
                return "not_moving"
            if pred > self.ceiling:
                return "ceiling"
            if self.start_pred + self.pred_diff < pred:
                return "pred_diff"
        if check_max and abs(lam) >= self.max_lambda:
            return "max_lambda"
        if diff_sum > self.pixel_threshold:
            return "pixel_budget"
        return None


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
        self.diffs: dict[float, float] = {0.0: 0.0}
        self.evaluations = 1

    def pred(self, lam: float) -> float:
        return self.preds[float(lam)]

    def change(self, lam: float) -> float:
        """sum|frame − x0| / sum|x0| at an evaluated λ."""
        return self.changes[float(lam)]

    def diff(self, lam: float) -> float:
        """sum|frame − x0| (float32 sum, pixel units) at an evaluated λ."""
        return self.diffs[float(lam)]

    def budget_threshold(self, pixel_budget: float) -> float:
        """``sum|x0| · pixel_budget`` computed in float32, as the reference does."""
        return float(self.reconstruction.abs().sum() * pixel_budget)

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
                    diff = float((image - self.reconstruction[0]).abs().sum())
                    self.diffs[lam] = diff
                    self.changes[lam] = diff / self.reference_mass
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
