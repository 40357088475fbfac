"""Latent Shift: counterfactual frames along the classifier's gradient in latent space.

``x`` is one image (1, 1, H, W) in [-1024, 1024], ``E``/``D`` the autoencoder's encoder and
decoder, ``f`` the classifier, ``t`` the target output, ``z0 = E(x)``, λ a unitless multiple of
the gradient ``g = ∂pred(0)/∂z`` at z0 (λ < 0 curtails the finding, λ > 0 exaggerates it).
A frame is ``clip(x + D(z0 + λ·g) − D(z0))`` (``frames_from="input"``: λ = 0 is the input)
or the paper's ``D(z0 + λ·g)`` (``"reconstruction"``), and ``pred(λ) = σ(f(frame(λ)))[t]``.

The λ range is given, or searched per side until a stop rule fires: ``search="bisect"``
brackets the first λ where a rule fires and narrows it to :data:`BISECT_PRECISION` of |λ|
(:func:`_bisect_walker`); ``search="ladder"`` is the reference implementation's ladder
(:func:`lambda_ladder`) with its check order and end. Every evaluated λ is cached and the
sweep reuses it. :meth:`LatentShift.attribute` takes B ≥ 1 images: one encode and backward
pass for all, the searches in lockstep with shared batches, one batched sweep.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import OptionsError
from ..models.conventions import PIXEL_RANGE
from ..options import (DEFAULTS, DIRECTIONS, FRAME_SOURCES, HEATMAP_MODES, SEARCH_MODES, STOP_LIMITS, ExplainOptions,
                       stop_words)

logger = logging.getLogger(__name__)

Direction = Literal["both", "curtail", "exaggerate"]
HeatmapMode = Literal["int", "max", "mean", "mm"]

#: Most ladder rungs per side evaluated together (on an accelerator; the batch doubles from
#: ``search_batch`` up to this, and each rung past the stop is a wasted decode).
MAX_SEARCH_BATCH = 8

#: The bisect search stops once the bracket [λ_ok, λ_stop] is narrower than this fraction of
#: |λ_stop| and returns λ_stop.
BISECT_PRECISION = 0.02

#: Largest growth of |λ| from one bracketing probe to the next (and of the first over step_size).
MAX_GROWTH = 128.0


@dataclass
class ShiftResult:
    """What :meth:`LatentShift.attribute` returns for each image.

    Attributes:
        lambdas: (F,) sorted λ of the frames, 0 included.
        preds: (F,) target prediction in [0, 1] of each frame.
        frames: (F, 1, H, W) the frames shown (see ``frames_from``), about [-1024, 1024], on the CPU.
        heatmap: (H, W) float32 ≥ 0, where the frames change (see ``heatmap_mode``).
        reconstruction: (1, 1, H, W) ``D(E(x))``.
        initial_pred: target prediction of the input itself.
        reconstruction_pred: the reconstruction's target prediction in the paper's mode; None in
            the input mode.
        all_preds: (F, C) prediction of every classifier output on each frame.
        lambda_range: (λ_min, λ_max) the sweep covered.
        stop_reasons: {"curtail": key, "exaggerate": key}, keys of :data:`latentshift.options.STOP_WORDS`.
        limits: the search's limits by name (:data:`latentshift.options.STOP_LIMITS`).
        pixel_change: (F,) ``sum|frame − x0| / sum|x0|`` per frame (x0: the λ = 0 frame).
        evaluations: λ values decoded and classified (λ = 0 included, bisect's aiming probe not).
        timings: seconds per stage ("encode_gradient", "search", "sweep", "heatmap").
    """

    lambdas: np.ndarray
    preds: np.ndarray
    frames: torch.Tensor
    heatmap: np.ndarray
    reconstruction: torch.Tensor
    initial_pred: float
    reconstruction_pred: float | None
    lambda_range: tuple[float, float]
    stop_reasons: dict[str, str]
    pixel_change: np.ndarray
    target: int
    heatmap_mode: str = "int"
    evaluations: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    all_preds: np.ndarray | None = None
    frames_from: str = "reconstruction"
    limits: dict[str, float] = field(default_factory=lambda: {k: getattr(DEFAULTS, k) for k in STOP_LIMITS})

    @property
    def map(self) -> np.ndarray:
        """``heatmap``, under the field name every core result has."""
        return self.heatmap

    @property
    def zero_index(self) -> int:
        """Index of the λ = 0 frame."""
        return int(np.flatnonzero(self.lambdas == 0.0)[0])

    @property
    def zero_pred(self) -> float:
        """Target prediction of the λ = 0 frame, where the search starts."""
        return float(self.preds[self.zero_index])

    def counterfactual_index(self, side: str) -> int | None:
        """Index of ``side``'s counterfactual frame: the lowest prediction with λ < 0 ("curtail")
        or the highest with λ > 0 ("exaggerate"), the one nearest the end on a tie; None when no
        frame is on that side."""
        on_side = np.flatnonzero(self.lambdas < 0 if side == "curtail" else self.lambdas > 0)
        if on_side.size == 0:
            return None
        if side == "curtail":
            return int(on_side[np.argmin(self.preds[on_side])])
        reverse = on_side[::-1]
        return int(reverse[np.argmax(self.preds[reverse])])

    def summary(self) -> dict:
        """JSON-ready description (no image data)."""
        return {
            "target_index": self.target,
            "lambdas": [float(v) for v in self.lambdas],
            "preds": [float(v) for v in self.preds],
            "initial_pred": float(self.initial_pred),
            "reconstruction_pred": None if self.reconstruction_pred is None else float(self.reconstruction_pred),
            "frames_from": self.frames_from,
            "lambda_range": [float(v) for v in self.lambda_range],
            "stop_reasons": dict(self.stop_reasons),
            "stop_reason_text": {k: stop_words(v, self.limits) for k, v in self.stop_reasons.items()},
            "limits": dict(self.limits),
            "counterfactual_lambdas": {side: None if (i := self.counterfactual_index(side)) is None
                                       else float(self.lambdas[i]) for side in ("curtail", "exaggerate")},
            "pixel_change": [float(v) for v in self.pixel_change],
            "heatmap_mode": self.heatmap_mode,
            "evaluations": self.evaluations,
            "seconds": {k: round(v, 4) for k, v in self.timings.items()},
        }


def lambda_ladder(step_size: float, max_lambda: float, sign: int) -> list[float]:
    """The reference implementation's search ladder on one side (0 excluded).

    Curtailing (``sign`` = -1) it is ``λ ← λ − step_size + λ // 10`` (float floor division):
    −10, −21, −34, −48, … for step 10; exaggerating is its mirror image. It ends, unclipped,
    at the first rung with |λ| ≥ ``max_lambda``.
    """
    rungs, current = [], 0.0  # ``current`` walks the curtail side (≤ 0)
    while current > -max_lambda:
        current = current - step_size + current // 10
        rungs.append(-current if sign > 0 else current)
    return rungs


def sweep_lambdas(lambda_min: float, lambda_max: float, frames: int) -> np.ndarray:
    """``frames`` λs over [λ_min, λ_max], 0 and both ends included, shared between the sides
    in proportion to their length (nearly even spacing)."""
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


@dataclass(frozen=True)
class ShiftOptions:
    """How :meth:`LatentShift.attribute` finds and sweeps its λ range, checked when made
    (:class:`~latentshift.errors.OptionsError`). The fields shared with
    :class:`~latentshift.options.ExplainOptions` mean the same and default the same
    (:meth:`from_explain` copies them); besides those:

    Attributes:
        precision: relative precision of the bisect search (0.02 = 2 % of |λ|).
        search_batch: ladder rungs per side per batch (doubling up to :data:`MAX_SEARCH_BATCH`);
            default 1 on the CPU, 4 elsewhere.
    """

    lambda_range: tuple[float, float] | None = None
    step_size: float = DEFAULTS.step_size
    frames: int = DEFAULTS.frames
    direction: Direction = DEFAULTS.direction
    pred_diff: float = DEFAULTS.pred_diff
    pixel_budget: float = DEFAULTS.pixel_budget
    max_lambda: float = DEFAULTS.max_lambda
    heatmap: HeatmapMode = DEFAULTS.heatmap
    floor: float = DEFAULTS.floor
    ceiling: float = DEFAULTS.ceiling
    search: str = DEFAULTS.search
    precision: float = BISECT_PRECISION
    search_batch: int | None = None
    frames_from: str = DEFAULTS.frames_from

    def __post_init__(self) -> None:
        self._check_choices()
        if self.frames < 2:
            raise OptionsError(f"frames must be at least 2, got {self.frames}")
        if self.lambda_range is not None:
            low, high = (float(value) for value in self.lambda_range)
            if not (math.isfinite(low) and math.isfinite(high)) or not low <= 0.0 <= high or low == high:
                raise OptionsError(f"lambda_range must satisfy λ_min ≤ 0 ≤ λ_max with λ_min < λ_max, "
                                   f"got ({low}, {high})")
            object.__setattr__(self, "lambda_range", (low, high))  # a tuple of floats, whatever was given
        if not self.step_size > 0 or not self.max_lambda > 0:
            raise OptionsError("step_size and max_lambda must be positive")
        if not 0 < self.pred_diff <= 1 or not self.pixel_budget > 0:
            raise OptionsError("pred_diff must be in (0, 1] and pixel_budget positive")
        if self.search_batch is not None and self.search_batch < 1:
            raise OptionsError("search_batch must be at least 1")
        if not 0 < self.precision < 1:
            raise OptionsError(f"precision must be in (0, 1), got {self.precision}")

    def _check_choices(self) -> None:
        for name, choices in (("direction", DIRECTIONS), ("heatmap", HEATMAP_MODES), ("search", SEARCH_MODES),
                              ("frames_from", FRAME_SOURCES)):
            if getattr(self, name) not in choices:
                raise OptionsError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")

    @classmethod
    def from_explain(cls, options: ExplainOptions) -> "ShiftOptions":
        """The shift options of an explanation's options (the fields of the same name)."""
        return cls(lambda_range=options.lambda_range, step_size=float(options.step_size), frames=int(options.frames),
                   direction=options.direction, pred_diff=float(options.pred_diff),
                   pixel_budget=float(options.pixel_budget), max_lambda=float(options.max_lambda),
                   heatmap=options.heatmap, search=options.search, frames_from=options.frames_from,
                   floor=float(options.floor), ceiling=float(options.ceiling))

    @property
    def limits(self) -> dict[str, float]:
        """The search's limits by name (:data:`latentshift.options.STOP_LIMITS`), as a result records them."""
        return {name: float(getattr(self, name)) for name in STOP_LIMITS}

    def replace(self, **changes) -> "ShiftOptions":
        """A copy with ``changes`` applied (checked)."""
        return replace(self, **changes)


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
    def pixel_range(self) -> tuple[float, float]:
        """(low, high) pixel values the classifier takes (its ``input_range``, else [-1024, 1024])."""
        return tuple(getattr(self.classifier, "input_range", PIXEL_RANGE))

    @property
    def device(self) -> torch.device:
        for module in (self.autoencoder, self.classifier):
            for parameter in module.parameters():
                return parameter.device
        return torch.device("cpu")

    def _predictions(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, C) predictions of every output in [0, 1] (or raw scores)."""
        scores = self.classifier(images)
        return torch.sigmoid(scores) if self.apply_sigmoid else scores

    def attribute(self, inputs: torch.Tensor, target: int | Sequence[int], options: ShiftOptions | None = None,
                  *, initial_preds: Sequence[float] | None = None) -> list[ShiftResult]:
        """Explain ``target`` for each image of ``inputs``: one :class:`ShiftResult` per image.

        Args:
            inputs: (B, 1, H, W) images, B ≥ 1, in the classifier's pixel range ([-1024, 1024]).
            target: the classifier output to explain: one index for every image (an int, as in
                captum) or one index per image (a sequence of B ints).
            options: how λ is searched and swept (:class:`ShiftOptions`; default its defaults).
            initial_preds: the target prediction of each input (B floats in [0, 1]) when the
                caller already has them (saves one classifier call); computed otherwise.

        Returns:
            B results in the order of ``inputs`` (``[result] = explainer.attribute(x, target)``).

        Stages done for all images at once count seconds / B in each result's ``timings``. The
        models must treat a batch's images independently (eval mode); results equal those of
        one call per image up to float rounding of batched passes.
        """
        options = ShiftOptions() if options is None else options
        targets = self._check_inputs(inputs, target, initial_preds)
        self.classifier.eval()
        self.autoencoder.eval()
        started = time.perf_counter()
        inputs = inputs.to(self.device, torch.float32)
        caches = self._caches(inputs, targets, options.frames_from)
        if initial_preds is None:
            with torch.inference_mode():
                scores = self._predictions(inputs).float().cpu()
            initial_preds = [float(scores[i, t]) for i, t in enumerate(targets)]
        encode_share = (time.perf_counter() - started) / len(targets)
        started = time.perf_counter()
        found = self._find_ranges(caches, options)
        search_share = (time.perf_counter() - started) / len(targets)
        started = time.perf_counter()
        _evaluate_many([(cache, float(lam)) for cache, ((low, high), _) in zip(caches, found)
                        for lam in sweep_lambdas(low, high, options.frames)])
        sweep_share = (time.perf_counter() - started) / len(targets)
        results = []
        for cache, ends, initial in zip(caches, found, initial_preds):
            timings = {"encode_gradient": encode_share, "search": search_share}
            results.append(self._result(cache, ends, options, float(initial), timings))
            results[-1].timings["sweep"] += sweep_share
        return results

    def _caches(self, xs: torch.Tensor, targets: list[int], frames_from: str) -> list["_FrameCache"]:
        """One :class:`_FrameCache` per image of ``xs`` (B, 1, H, W), encoded and differentiated
        together; each holds every output's prediction on its λ = 0 frame."""
        z, gradient, reconstruction, outputs = self._latent_gradients(xs, targets, frames_from)
        outputs = outputs.float().cpu()
        caches = []
        for index, target in enumerate(targets):
            image = xs[index:index + 1] if frames_from == "input" else None
            cache = _FrameCache(self, z[index:index + 1], gradient[index:index + 1],
                                reconstruction[index:index + 1].clone(), float(outputs[index, target]), target,
                                image)
            cache.outputs[0.0] = outputs[index].clone()
            caches.append(cache)
        return caches

    def _result(self, cache, found, options: ShiftOptions, initial_pred: float, timings: dict) -> ShiftResult:
        """The :class:`ShiftResult` of one image: its sweep over ``found`` = ((λ_min, λ_max), stops)."""
        (lambda_min, lambda_max), stop_reasons = found
        result = self._sweep(cache, lambda_min, lambda_max, options.frames, options.heatmap, timings)
        logger.debug("latent shift: range [%.1f, %.1f], %d evaluations, stops %s",
                     lambda_min, lambda_max, cache.evaluations, stop_reasons)
        return ShiftResult(**result, reconstruction=cache.reconstruction.cpu(), initial_pred=initial_pred,
                           reconstruction_pred=None if cache.image is not None else cache.pred(0.0),
                           lambda_range=(lambda_min, lambda_max), stop_reasons=stop_reasons, target=cache.target,
                           heatmap_mode=options.heatmap, evaluations=cache.evaluations, timings=timings,
                           frames_from="reconstruction" if cache.image is None else "input",
                           limits=options.limits)

    @staticmethod
    def _check_inputs(inputs, target, initial_preds) -> list[int]:
        """One target index per image; :class:`OptionsError` unless ``inputs`` is a finite
        (B, 1, H, W) tensor and ``target`` and ``initial_preds`` fit it."""
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or inputs.shape[0] < 1 or inputs.shape[1] != 1:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise OptionsError(f"inputs must be a tensor of shape (B, 1, H, W) with B ≥ 1, got {shape}")
        if not torch.isfinite(inputs).all():
            raise OptionsError("the inputs contain NaN or infinite values")
        count = int(inputs.shape[0])
        targets = [target] * count if isinstance(target, (int, np.integer)) else list(target)
        if len(targets) != count:
            raise OptionsError(f"give one target, or one per image: {count} images, {len(targets)} targets")
        for index, value in enumerate(targets):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
                where = f"image {index}: " if count > 1 else ""
                raise OptionsError(f"{where}target must be a non-negative output index, got {value!r}")
        if initial_preds is not None and len(initial_preds) != count:
            raise OptionsError(f"give one initial prediction per image: {count} images, "
                               f"{len(initial_preds)} initial_preds")
        return [int(value) for value in targets]

    def _find_ranges(self, caches, options: ShiftOptions) -> list[tuple[tuple[float, float], dict[str, str]]]:
        """Per image, ((λ_min, λ_max), stop reason per side): the given range, or the ends of
        the searches, run in lockstep (:func:`_drive`)."""
        if options.lambda_range is not None:
            return [self._range_of({}, options) for _ in caches]
        sides = [s for s in ("curtail", "exaggerate") if options.direction in (s, "both")]
        rules = [_StopRules(cache.pred(0.0), options.pred_diff, cache.budget_threshold(options.pixel_budget),
                            options.max_lambda, options.floor, options.ceiling) for cache in caches]
        if options.search == "bisect" and sides:
            sign = -1.0 if sides[0] == "curtail" else 1.0
            _probe_pixel_change(caches, sign * min(options.step_size, options.max_lambda))
        jobs = [(cache, self._walkers(cache, sides, rule, options)) for cache, rule in zip(caches, rules)]
        return [self._range_of(ends, options) for ends in _drive(jobs)]

    @staticmethod
    def _range_of(ends: dict, options: ShiftOptions) -> tuple[tuple[float, float], dict[str, str]]:
        """((λ_min, λ_max), stop reasons) from a search's ends {side: (λ, reason)} or the given range."""
        if options.lambda_range is not None:
            lambda_min, lambda_max = float(options.lambda_range[0]), float(options.lambda_range[1])
            if options.direction == "curtail":
                lambda_max = 0.0
            elif options.direction == "exaggerate":
                lambda_min = 0.0
            stop_reasons = {side: "given_range" for side in ("curtail", "exaggerate")}
        else:
            stop_reasons = {side: reason for side, (_, reason) in ends.items()}
            lambda_min, lambda_max = ends.get("curtail", (0.0,))[0], ends.get("exaggerate", (0.0,))[0]
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
        heatmap_array = compute_heatmap(frame_batch, cache.origin, heatmap)
        pixel_change = cache.pixel_change(frame_batch)
        timings["heatmap"] = time.perf_counter() - started
        return dict(lambdas=lambdas, preds=preds.numpy().astype(np.float64), frames=frame_batch,
                    heatmap=heatmap_array, all_preds=all_preds, pixel_change=pixel_change)

    def latent_gradient(self, x: torch.Tensor, target: int,
                        frames_from: str = DEFAULTS.frames_from) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, g): the latent code of ``x`` and ``∂pred(0)/∂z`` at it (see ``frames_from`` of
        :meth:`attribute`), both detached."""
        z, gradient, _, _ = self._latent_gradients(x.to(self.device, torch.float32), [target], frames_from)
        return z, gradient

    def _latent_gradients(self, xs: torch.Tensor, targets: list[int], frames_from: str):
        """(z, g, D(z), outputs) of images ``xs`` (B, 1, H, W), detached: latent codes,
        ``∂p_i/∂z_i``, reconstructions (B, 1, H, W) and every output's prediction (B, C) on
        the λ = 0 frames; one encode and one backward pass for all."""
        with torch.inference_mode():
            z = self.autoencoder.encode(xs)
        z = z.clone().requires_grad_(True)  # a normal tensor, outside inference mode
        with torch.enable_grad():
            reconstruction = self.autoencoder.decode(z)
            shown = xs + (reconstruction - reconstruction.detach()) if frames_from == "input" else reconstruction
            outputs = self._predictions(shown)
            prediction = outputs[torch.arange(len(targets), device=outputs.device),
                                 torch.as_tensor(targets, device=outputs.device)]
            (gradient,) = torch.autograd.grad(prediction.sum(), z)
        return z.detach(), gradient.detach(), reconstruction.detach(), outputs.detach()

    def _walkers(self, cache, sides, rules, options: ShiftOptions) -> dict:
        """{side: walker} of one image's search (see :func:`_drive`): :func:`_ladder_walker`
        (one rung per round on the CPU, where rungs past the stop are wasted) or
        :func:`_bisect_walker`."""
        on_cpu = self.device.type == "cpu"
        if options.search == "ladder":
            batch = options.search_batch or (1 if on_cpu else 4)
            largest = 1 if on_cpu and options.search_batch is None else max(batch, MAX_SEARCH_BATCH)
            return {side: _ladder_walker(cache, side, rules, options.step_size, batch, largest) for side in sides}
        if sides and cache.gradient_norm2 == 0.0:  # p does not depend on z here: nothing moves
            return {side: _ended(0.0, "not_moving") for side in sides}
        return {side: _bisect_walker(cache, side, rules, options.step_size, options.precision) for side in sides}


def _drive(jobs: list) -> list[dict[str, tuple[float, str]]]:
    """Run the searches of ``jobs`` = [(cache, {side: walker}), ...] in lockstep; per job
    {side: (λ_end, reason)}. A walker yields the λs it needs next and returns (λ_end, reason);
    each round every unfinished walker's λs are evaluated in one batched call."""
    ends = [{} for _ in jobs]
    wanted = [{} for _ in jobs]
    for (_, walkers), end, want in zip(jobs, ends, wanted):
        for side, walker in walkers.items():
            _advance(side, walker, want, end, first=True)
    while any(wanted):
        _evaluate_many([(cache, float(lam)) for (cache, _), want in zip(jobs, wanted)
                        for lams in want.values() for lam in lams])
        for (cache, walkers), end, want in zip(jobs, ends, wanted):
            for side in list(want):
                _advance(side, walkers[side], want, end)
    return ends


def _ended(lam: float, reason: str):
    """A walker that needs nothing evaluated: it returns (λ, reason) at once."""
    return lam, reason
    yield  # never reached: makes this function a generator


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

    Bracket: from :func:`_first_probe`, each next |λ| is where the last two probes, extended
    linearly (:func:`_crossing`), would fire a rule (times 1 + 0.4·precision, between
    (1 + precision)× and :data:`MAX_GROWTH`× the last |λ|; 2× when they do not say). Bisect:
    at :func:`_split_point`, or the midpoint whenever a split did not halve the bracket.
    """
    sign = -1.0 if side == "curtail" else 1.0
    reason = rules.check(side, 0.0, rules.start_pred, rules.start_pred, 0.0)
    if reason is not None:
        return 0.0, reason
    previous, low, low_pred = 0.0, 0.0, rules.start_pred
    high = _first_probe(cache, rules, side, step_size, precision)
    while True:  # bracket
        yield [high]
        reason = rules.check(side, high, cache.pred(high), low_pred, cache.diff(high), check_max=False)
        if reason is None and abs(high) >= rules.max_lambda:
            return high, "max_lambda"
        if reason is not None:
            break
        previous, low, low_pred = low, high, cache.pred(high)
        guess = _crossing(rules, side, cache.point(previous), cache.point(low))
        factor = 2.0 if guess is None else min(max(guess / low * (1 + 0.4 * precision), 1 + precision), MAX_GROWTH)
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


def _first_probe(cache, rules, side, step_size, precision) -> float:
    """λ of a side's first bracketing probe: where straight lines from λ = 0 would fire a rule.

    The prediction's line (in logits) has slope dp/dλ = |∂p/∂z|² at λ = 0; the pixel change's
    goes through one decode at ±``step_size`` (:func:`_probe_pixel_change`). The probe is
    that crossing times 1 + 0.4·precision, between step_size/100 and :data:`MAX_GROWTH`·step_size
    (and max_lambda); ±step_size when the lines say nothing.
    """
    sign = -1.0 if side == "curtail" else 1.0
    step = min(float(step_size), rules.max_lambda)
    p0 = rules.start_pred
    probe_lambda, probe_diff = cache.probe
    logit_slope = cache.gradient_norm2 / (p0 * (1.0 - p0)) if 0.0 < p0 < 1.0 else 0.0
    logit_there = min(max(_logit(p0) + sign * abs(probe_lambda) * logit_slope, -40.0), 40.0)
    linear_pred = 1.0 / (1.0 + math.exp(-logit_there))
    guess = _crossing(rules, side, (0.0, p0, 0.0), (sign * abs(probe_lambda), linear_pred, probe_diff))
    if guess is None:
        return sign * step
    magnitude = min(max(abs(guess) * (1 + 0.4 * precision), step / 100), MAX_GROWTH * step, rules.max_lambda)
    return sign * magnitude


def _crossing(rules, side, a: tuple, b: tuple) -> float | None:
    """The λ where the rules that are continuous in λ (pixel budget, pred_diff, floor/ceiling)
    would first fire, on straight lines through points ``a`` and ``b`` = (λ, prediction,
    sum|frame − x0|) on the same side (|λ_a| < |λ_b|): λ_a + t·(λ_b − λ_a) for the smallest
    t > 0; None when no line reaches its limit going outwards."""
    (lam_a, pred_a, d_a), (lam_b, pred_b, d_b) = a, b
    steps = []
    if d_b > d_a:
        steps.append((rules.pixel_threshold - d_a) / (d_b - d_a))
    p_a, p_b = _logit(pred_a), _logit(pred_b)
    limits = ((rules.start_pred - rules.pred_diff, rules.floor) if side == "curtail"
              else (rules.start_pred + rules.pred_diff, rules.ceiling))
    if p_b != p_a:  # the prediction's line is drawn in logits, where a sigmoid's tail is straight
        steps += [(_logit(limit) - p_a) / (p_b - p_a) for limit in limits if 0.0 < limit < 1.0]
    steps = [t for t in steps if t > 0 and math.isfinite(t)]
    return lam_a + min(steps) * (lam_b - lam_a) if steps else None


def _logit(p: float) -> float:
    """log(p / (1 − p)) of a prediction, p clipped to [1e-7, 1 − 1e-7]."""
    p = min(max(float(p), 1e-7), 1.0 - 1e-7)
    return math.log(p / (1.0 - p))


def _split_point(cache, rules, side, low: float, high: float, precision: float) -> float:
    """The next bisect probe in (low, high): the interpolated crossing moved by 0.4·precision·|λ|
    towards the longer part of the bracket, kept 5 % of the bracket (or half that move, if
    less) away from its ends; the midpoint when the interpolation says nothing."""
    crossing = _crossing(rules, side, cache.point(low), cache.point(high))
    width = high - low
    if crossing is None or not min(low, high) < crossing < max(low, high):
        return (low + high) / 2
    shift = 0.4 * precision * abs(crossing) * math.copysign(1.0, width)  # two probes close it
    probe = crossing + shift if abs(high - crossing) > abs(crossing - low) else crossing - shift
    margin = math.copysign(min(0.05 * abs(width), 0.5 * abs(shift)), width)
    inner_low, inner_high = low + margin, high - margin
    return min(max(probe, min(inner_low, inner_high)), max(inner_low, inner_high))


@dataclass
class _StopRules:
    """The reference's stop rules in its order; ``pixel_threshold`` is ``pixel_budget · sum|x0|``
    in float32, as the reference computes it."""

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
    """Evaluated λ -> (frame, prediction), filled in batches, shared by search and sweep.

    ``image`` is the input (1, 1, H, W) in the input mode (frames ``clip(x + D(z) − D(z0))``),
    None in the paper's mode (frames ``D(z)``); ``origin`` is the λ = 0 frame on the CPU.
    """

    def __init__(self, explainer: LatentShift, z, gradient, reconstruction, zero_pred, target, image=None):
        self.explainer = explainer
        self.z, self.gradient, self.target = z, gradient, target
        self.reconstruction, self.image = reconstruction, image
        self.origin = (reconstruction if image is None else image).cpu()
        self.reference_mass = float(self.origin.abs().sum()) or 1.0
        self.frames: dict[float, torch.Tensor] = {0.0: self.origin[0]}
        self.preds: dict[float, float] = {0.0: zero_pred}
        self.outputs: dict[float, torch.Tensor] = {}
        self.diffs: dict[float, float] = {0.0: 0.0}
        self.evaluations = 1
        self.gradient_norm2 = float(gradient.double().pow(2).sum())  # dp/dλ at λ = 0
        self.probe: tuple[float, float] | None = None  # (λ, sum|D(z + λ·g) − x0|), decoded only

    def pixel_diff(self, image: torch.Tensor) -> float:
        """sum|image − x0| (float32 sum, pixel units) of a frame (1, H, W); x0 = the λ = 0 frame."""
        return float((image - self.origin[0]).abs().sum())

    def point(self, lam: float) -> tuple[float, float, float]:
        """(λ, prediction, sum|frame − x0|) at an evaluated λ."""
        return float(lam), self.preds[float(lam)], self.diffs[float(lam)]

    def pred(self, lam: float) -> float:
        return self.preds[float(lam)]

    def diff(self, lam: float) -> float:
        """sum|frame − x0| (float32 sum, pixel units) at an evaluated λ."""
        return self.diffs[float(lam)]

    def budget_threshold(self, pixel_budget: float) -> float:
        """``sum|x0| · pixel_budget`` computed in float32, as the reference does."""
        return float(self.origin.abs().sum() * pixel_budget)

    def evaluate(self, lambdas: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (F, 1, H, W) and predictions (F,) for ``lambdas``, computing only new λs."""
        keys = [float(lam) for lam in lambdas]
        _evaluate_many([(self, k) for k in keys])
        frames = torch.stack([self.frames[k] for k in keys]) if keys else torch.empty(0)
        return frames, torch.tensor([self.preds[k] for k in keys], dtype=torch.float64)

    def store(self, lam: float, image: torch.Tensor, output: torch.Tensor) -> None:
        """Keep the decoded frame (1, H, W) and every output's prediction (C,) at λ."""
        self.frames[lam] = image.clone()
        self.preds[lam] = float(output[self.target])
        self.outputs[lam] = output.clone()
        self.diffs[lam] = self.pixel_diff(image)
        self.evaluations += 1

    def all_outputs(self, lambdas: np.ndarray) -> np.ndarray:
        """(F, C) predictions of every output at already evaluated ``lambdas`` (λ = 0: the
        λ = 0 frame's, kept from the gradient pass by :meth:`LatentShift._caches`)."""
        return torch.stack([self.outputs[float(lam)] for lam in lambdas]).numpy().astype(np.float64)

    def pixel_change(self, frames: torch.Tensor) -> np.ndarray:
        diff = (frames - self.origin).abs().flatten(1).sum(1) / self.reference_mass
        return diff.numpy().astype(np.float64)


def _probe_pixel_change(caches: list[_FrameCache], lam: float) -> None:
    """The frame at λ of every cache whose gradient is not zero (decoded, not classified); keeps
    ``cache.probe`` = (λ, sum|frame − x0|): the pixel change's slope for :func:`_first_probe`."""
    moving = [cache for cache in caches if cache.gradient_norm2 > 0.0]
    if not moving:
        return
    size = moving[0].explainer.batch_size
    with torch.inference_mode():
        for start in range(0, len(moving), size):
            chunk = moving[start:start + size]
            pairs = [(cache, lam) for cache in chunk]
            for cache, image in zip(chunk, _shown_frames(pairs, _decode_shifted(pairs)).float().cpu()):
                cache.probe = (lam, cache.pixel_diff(image))


def _decode_shifted(pairs: list[tuple[_FrameCache, float]]) -> torch.Tensor:
    """``D(z_i + λ_i·g_i)`` for (cache, λ) pairs of one explainer: (N, 1, H, W) on its device."""
    z = torch.cat([cache.z for cache, _ in pairs])
    gradient = torch.cat([cache.gradient for cache, _ in pairs])
    steps = torch.tensor([lam for _, lam in pairs], dtype=z.dtype, device=z.device)
    return pairs[0][0].explainer.autoencoder.decode(z + steps.view(-1, *([1] * (z.dim() - 1))) * gradient)


def _shown_frames(pairs: list[tuple[_FrameCache, float]], decoded: torch.Tensor) -> torch.Tensor:
    """The frames shown for ``decoded`` = ``D(z_i + λ_i·g_i)`` (N, 1, H, W) of the pairs'
    caches (one mode): ``decoded`` itself in the paper's mode, else ``clip(x_i + decoded −
    D(z0_i))`` to the classifier's pixel range."""
    first = pairs[0][0]
    if first.image is None:
        return decoded
    inputs = torch.cat([cache.image for cache, _ in pairs])
    zero = torch.cat([cache.reconstruction for cache, _ in pairs])
    low, high = first.explainer.pixel_range
    return (inputs + (decoded - zero)).clamp_(low, high)


def _evaluate_many(pairs: list[tuple[_FrameCache, float]]) -> None:
    """Decode and classify every (cache, λ) not yet in its cache, ``batch_size`` at a time.

    The latents ``z_i + λ·g_i`` of any mix of images (caches of one explainer) share the
    batches; each frame and prediction goes back to its own cache.
    """
    seen, missing = set(), []
    for cache, lam in pairs:
        if lam not in cache.preds and (id(cache), lam) not in seen:
            seen.add((id(cache), lam))
            missing.append((cache, lam))
    if not missing:
        return
    explainer = missing[0][0].explainer
    size = explainer.batch_size
    with torch.inference_mode():
        for start in range(0, len(missing), size):
            chunk = missing[start:start + size]
            images = _shown_frames(chunk, _decode_shifted(chunk))
            outputs = explainer._predictions(images).float().cpu()
            for (cache, lam), image, output in zip(chunk, images.float().cpu(), outputs):
                cache.store(lam, image, output)


def compute_heatmap(frames: torch.Tensor, origin: torch.Tensor, mode: str = "int") -> np.ndarray:
    """(F, 1, H, W) frames and (1, 1, H, W) λ = 0 frame ``x0`` -> (H, W) float32 map ≥ 0.

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
        result = (frames - origin[0]).abs().amax(0)
    elif mode == "mean":
        result = (frames - origin[0]).abs().mean(0)
    else:
        result = (frames[0] - frames[-1]).abs()
    return result.numpy().astype(np.float32)
