"""Benchmark of the explanation stages against a paper-style baseline doing the same work.

Run ``python -m latentshift_research bench [--device cpu|cuda] [--models demo|xrv|both]
[--repeats N] [--frames 20] [--json out.json]``. For each model pair (the embedded demo
models when the manifest lists them, and the torchxrayvision-size DenseNet121 +
ResNetAE-101 with seeded untrained weights) and each λ mode (a fixed range, and the
automatic search with the same step size and limits) it runs, each side in a fresh
process so that peak memory is its own:

* **ours**: the project's code (:class:`~latentshift.core.shift.LatentShift`: the
  bisect search, both sides' probes in one batch, and a batched sweep that reuses every
  evaluated λ; :func:`render.write_gif`; :class:`GradCAM`; :class:`IntegratedGradientsMap`
  with its convergence-checked step count; :func:`render.write_overlay`), models
  channels_last on the CPU, frames built on the input (the default ``frames_from="input"``);
* **paper**: ours with the paper's frames (``frames_from="reconstruction"``);
* **baseline**: :class:`PaperStyleLatentShift`, the reference implementation's behaviour:
  one λ decoded and classified at a time during the search (its ladder, check order,
  returned rung and max-λ behaviour) and during the sweep (no cache), a matplotlib figure
  saved per frame and assembled into a GIF with imageio, captum called directly for
  Grad-CAM and for Integrated Gradients (Gauss-Legendre, :data:`BASELINE_IG_STEPS`
  steps) with matplotlib overlays, models in their contiguous layout;
* **ladder**: ours with ``search="ladder"`` and the paper's frames, whose λs and
  predictions are compared with the baseline's (with the paper side's in the fixed mode).

It prints the median seconds per stage, the ratio baseline/ours, PASS/FAIL of the check
that both sides give the same λs and predictions (to 1e-4), the floor of the latent
shift (one gradient pass + one batched evaluation of the frames) and peak memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from latentshift.core.shift import ShiftOptions, sweep_lambdas
from latentshift.models.placement import memory_format_of
from latentshift.options import DEFAULTS, FRAME_SOURCES
from latentshift.runtime import set_allocator_tunables
from ..training.data import default_data_dir

logger = logging.getLogger("latentshift.bench")

#: Stage names in table order; "end_to_end" is the wall time of one request (all stages
#: but load, which happens once per process).
STAGES = ("load", "predict", "encode_gradient", "search", "sweep", "heatmap", "gif", "gradcam",
          "integrated_gradients", "end_to_end")
STAGE_LABELS = {
    "load": "load (once per process)",
    "predict": "predict",
    "encode_gradient": "encode+gradient",
    "search": "search",
    "sweep": "sweep",
    "heatmap": "heatmap",
    "gif": "GIF",
    "gradcam": "Grad-CAM (+ overlay)",
    "integrated_gradients": "IG (+ overlay)",
    "end_to_end": "end to end",
}
MODES = ("fixed", "search")
#: "ours" is the default (bisect search, frames on the input), "paper" ours with the paper's frames,
#: "ladder" the paper side with search="ladder" (compared with the baseline).
SIDES = ("baseline", "ours", "paper", "ladder")
TOLERANCE = 1e-4
#: The baseline's Integrated Gradients: captum's Gauss-Legendre rule with the fixed step
#: count of the project's first release (ours starts at DEFAULTS.ig_steps and refines
#: while the convergence delta exceeds DEFAULTS.ig_tolerance).
BASELINE_IG_STEPS = 32

#: The fixed seed image (a pneumonia case of the shared CXR data set, found like the training data).
SEED_IMAGE_IN_DATA = Path("images") / "kermany" / "person1004_bacteria_2935.png"


# ------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ShiftSettings:
    """The Latent Shift options shared by both sides (``lambda_range`` None = search)."""

    frames: int = DEFAULTS.frames
    step_size: float = DEFAULTS.step_size
    lambda_range: tuple[float, float] | None = None
    pred_diff: float = DEFAULTS.pred_diff
    pixel_budget: float = DEFAULTS.pixel_budget
    max_lambda: float = DEFAULTS.max_lambda
    floor: float = 0.05
    ceiling: float = 0.95
    ig_steps: int = DEFAULTS.ig_steps
    ig_tolerance: float = DEFAULTS.ig_tolerance
    baseline_ig_steps: int = BASELINE_IG_STEPS
    search: str = DEFAULTS.search
    frames_from: str = DEFAULTS.frames_from

    def shift_options(self, **changes) -> ShiftOptions:
        """The core's options of these settings (``changes`` applied), with the heatmap the sides compare."""
        values = dict(lambda_range=self.lambda_range, step_size=self.step_size, frames=self.frames,
                      pred_diff=self.pred_diff, pixel_budget=self.pixel_budget, max_lambda=self.max_lambda,
                      floor=self.floor, ceiling=self.ceiling, heatmap="int", search=self.search,
                      frames_from=self.frames_from)
        return ShiftOptions(**{**values, **changes})


@dataclass(frozen=True)
class ModelSource:
    """Where a side's process loads its models from (a manifest and two ids)."""

    name: str
    manifest_path: str
    classifier_id: str
    autoencoder_id: str


@dataclass(frozen=True)
class SideJob:
    """One side's work, sent to a fresh process."""

    side: str
    models: ModelSource
    settings: ShiftSettings
    device: str = "cpu"
    repeats: int = 3
    threads: int | None = None
    target: str | None = None
    image_path: str | None = None
    profile: bool = False
    opt_in: tuple[str, ...] = ()


@dataclass
class RequestOutcome:
    """What one request produced: the answers compared between the sides."""

    target_index: int
    target_name: str
    lambdas: np.ndarray
    preds: np.ndarray
    initial_pred: float
    zero_pred: float  # the λ = 0 frame's (the reconstruction's in the paper's mode and the baseline)
    stop_reasons: dict[str, str]
    evaluations: int
    heatmap: np.ndarray
    gradcam: np.ndarray
    integrated_gradients: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    ig_steps: int = 0


@dataclass
class SideReport:
    """A side's medians, answers and peak memory (returned by :func:`run_side`)."""

    side: str
    threads: int
    repeats: list[dict[str, float]]
    outcome: RequestOutcome
    peak_rss_mb: float
    peak_cuda_mb: float | None
    floor: dict[str, float] | None = None
    profile_table: str | None = None
    opt_in: list[dict] = field(default_factory=list)

    def median(self, stage: str) -> float | None:
        values = [r[stage] for r in self.repeats if stage in r]
        return statistics.median(values) if values else None


# ------------------------------------------------------------------------- inputs


def seed_image(resolution: int, path: str | None = None) -> np.ndarray:
    """The benchmark image (R, R) in [-1024, 1024]: ``path``, the shared seed image, or a
    seeded synthetic chest-like image when neither exists."""
    from latentshift.io.imaging import load_xray

    candidate = Path(path) if path else default_data_dir() / SEED_IMAGE_IN_DATA
    if candidate.is_file():
        return load_xray(candidate, resolution=resolution).pixels
    logger.warning("seed image %s not found; using a synthetic image", candidate)
    generator = np.random.default_rng(0)
    axis = np.linspace(-1, 1, resolution)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    lungs = np.exp(-(((np.abs(xx) - 0.45) / 0.25) ** 2 + (yy / 0.6) ** 2))
    image = 600 - 1400 * lungs + 60 * generator.standard_normal((resolution, resolution))
    return np.clip(image, -1024, 1024).astype(np.float32)


def calibrate_untrained(classifier, autoencoder, x: torch.Tensor, logit_spread: float = 2.0,
                        sensitivity: float = 10.0) -> None:
    """Rescale two weight tensors of untrained xrv models so that they behave like trained
    ones in magnitude (same architectures, same work per call).

    Untrained, the ResNetAE decodes to almost zero (std ~0.02 for images of std ~500) and
    the DenseNet's logits on that are ~0.01, so p(z) hardly moves along ∂p/∂z and every
    search stops at its first rung. The decoder's last transposed convolution is scaled so
    that the reconstruction has the image's spread; the classifier's linear head is scaled
    and shifted so that the logits of the reconstruction span ±``logit_spread`` (a clear
    top prediction) and move ``sensitivity`` times faster with the image than the plain
    rescaling would make them (so the search stops after tens of rungs, as with trained
    models, rather than at max_lambda).
    """
    with torch.no_grad():
        reconstruction = autoencoder.decode(autoencoder.encode(x))
        autoencoder.net.conv1_1.weight.mul_(float(x.std()) / max(float(reconstruction.std()), 1e-12))
        logits = classifier(autoencoder.decode(autoencoder.encode(x)))[0]
        centred = logits - logits.mean()
        spread = max(float(centred.abs().max()), 1e-12)
        scale = sensitivity * logit_spread / spread
        head = classifier.net.classifier
        head.weight.mul_(scale)
        head.bias.copy_(scale * (head.bias - logits) + logit_spread * centred / spread)


def write_xrv_manifest(folder: Path, seed: int = 0, image_path: str | None = None) -> ModelSource:
    """Seeded untrained torchxrayvision-size models (calibrated with
    :func:`calibrate_untrained` on the benchmark image) saved as safetensors + a manifest."""
    import torchxrayvision as xrv
    from safetensors.torch import save_file

    from latentshift.models import XRVDenseNetClassifier, XRVResNetAE
    from latentshift.weights import sha256_of

    torch.manual_seed(seed)
    pathologies = list(xrv.datasets.default_pathologies)
    classifier, autoencoder = XRVDenseNetClassifier(pathologies).eval(), XRVResNetAE().eval()
    pixels = seed_image(224, image_path)
    calibrate_untrained(classifier, autoencoder, torch.from_numpy(pixels).reshape(1, 1, 224, 224))
    entries = []
    for model_id, kind, architecture, model in (
            ("bench-xrv-densenet121", "classifier", "xrv-densenet121", classifier),
            ("bench-xrv-resnetae101", "autoencoder", "xrv-resnetae101", autoencoder)):
        path = folder / f"{model_id}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        entry = {"id": model_id, "kind": kind, "architecture": architecture, "resolution": 224,
                 "format": "safetensors", "embedded_default": True,
                 "source": {"type": "file", "path": path.name, "sha256": sha256_of(path),
                            "size": path.stat().st_size}}
        if kind == "classifier":
            entry["labels"] = pathologies
        entries.append(entry)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"format_version": 1, "models": entries}, indent=2))
    return ModelSource("xrv (DenseNet121, 18 outputs + ResNetAE-101, untrained, seed %d)" % seed,
                       str(manifest), entries[0]["id"], entries[1]["id"])


def demo_model_source() -> ModelSource | None:
    """The demo models of the repository's manifest, or None when it lists none yet."""
    from latentshift.weights import Manifest, model_status

    manifest = Manifest.load()
    picked = {}
    for kind in ("classifier", "autoencoder"):
        candidates = [e for e in manifest.of_kind(kind) if e.id.startswith("demo-")]
        candidates.sort(key=lambda e: not e.embedded_default)
        available = [e for e in candidates if model_status(e, check_network=False).available]
        if not available:
            return None
        picked[kind] = available[0].id
    return ModelSource(f"demo ({picked['classifier']} + {picked['autoencoder']})", str(manifest.path),
                       picked["classifier"], picked["autoencoder"])


# ------------------------------------------------------------------------- timing helpers


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Collects seconds per stage; ``with clock("name"):`` times a block (synchronised)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        _synchronize(self.device)
        started = time.perf_counter()
        with torch.profiler.record_function(f"stage:{stage}"):
            yield
        _synchronize(self.device)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# ------------------------------------------------------------------------- the paper-style baseline


class PaperStyleLatentShift:
    """Latent Shift as the reference implementation (ieee8023/latentshift) does it: one λ
    decoded and classified at a time, a dict of evaluated λs reused by the sweep.

    The search of one side starts at λ = 0 and walks ``λ ← λ − step + λ // 10`` (mirrored
    for exaggerating); at each rung it checks, in this order, that the prediction still
    moves the wanted way, the floor (ceiling), pred_diff, |λ| ≥ max_lambda and the pixel
    budget, and returns the rung at which one fired (never clipped at max_lambda).
    """

    def __init__(self, classifier: torch.nn.Module, autoencoder: torch.nn.Module):
        self.classifier = classifier.eval()
        self.autoencoder = autoencoder.eval()
        self.evaluations = 0
        self.cache: dict[float, tuple[torch.Tensor, float]] = {}

    def prediction(self, image: torch.Tensor, target: int) -> float:
        with torch.no_grad():
            return float(torch.sigmoid(self.classifier(image))[0, target])

    def latent_gradient(self, x: torch.Tensor, target: int):
        """(z, ∂p/∂z, reconstruction, p(reconstruction)) with one backward pass."""
        self.cache = {}
        with torch.no_grad():
            z = self.autoencoder.encode(x)
        z = z.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            reconstruction = self.autoencoder.decode(z)
            prediction = torch.sigmoid(self.classifier(reconstruction))[:, target]
            gradient = torch.autograd.grad(prediction.sum(), z)[0]
        return z.detach(), gradient.detach(), reconstruction.detach().cpu(), float(prediction.detach()[0])

    def decode_and_classify(self, z, gradient, lam: float, target: int) -> tuple[torch.Tensor, float]:
        """(frame (1, 1, H, W) on the CPU, target prediction) at λ, from the cache when evaluated."""
        if lam not in self.cache:
            with torch.no_grad():
                image = self.autoencoder.decode(z + lam * gradient)
                pred = float(torch.sigmoid(self.classifier(image))[0, target])
            self.evaluations += 1
            self.cache[lam] = image.cpu(), pred
        return self.cache[lam]

    def search_side(self, z, gradient, reconstruction, start_pred: float, target: int, sign: int,
                    settings: ShiftSettings) -> tuple[float, str]:
        """Walk one side of the reference ladder; returns (the rung where a rule fired, the rule)."""
        pixel_threshold = reconstruction.abs().sum() * settings.pixel_budget
        _, start = self.decode_and_classify(z, gradient, 0.0, target)
        walked, last_pred = 0.0, start  # ``walked``: the curtail-side value (≤ 0) of the rung
        while True:
            lam = walked if sign < 0 else -walked
            image, pred = self.decode_and_classify(z, gradient, lam, target)
            pixel_diff = (reconstruction - image).abs().sum()
            wrong_way, past_end = (last_pred < pred, pred < settings.floor) if sign < 0 else (
                last_pred > pred, pred > settings.ceiling)
            if wrong_way:
                return lam, "not_moving"
            if past_end:
                return lam, "floor" if sign < 0 else "ceiling"
            if (start - settings.pred_diff > pred) if sign < 0 else (start + settings.pred_diff < pred):
                return lam, "pred_diff"
            if walked <= -settings.max_lambda:
                return lam, "max_lambda"
            if pixel_diff > pixel_threshold:
                return lam, "pixel_budget"
            last_pred = pred
            walked = walked - settings.step_size + walked // 10


def _paper_style_gif(path: Path, input_pixels: np.ndarray, frames: np.ndarray, preds: np.ndarray,
                     lambdas: np.ndarray, target_name: str, frame_duration_ms: int = 100) -> Path:
    """One matplotlib figure saved per frame, then imageio assembles the palindromic GIF."""
    import imageio.v2 as imageio
    from matplotlib.figure import Figure

    frame_folder = path.parent / "baseline_frames"
    frame_folder.mkdir(parents=True, exist_ok=True)
    frame_paths = []
    for index, (frame, pred, lam) in enumerate(zip(frames, preds, lambdas)):
        figure = Figure(figsize=(6, 3.4), dpi=100)
        left, right = figure.subplots(1, 2)
        left.imshow(input_pixels, cmap="gray", vmin=-1024, vmax=1024)
        left.set_title("input")
        right.imshow(frame, cmap="gray", vmin=-1024, vmax=1024)
        right.set_title(f"λ = {lam:.1f}")
        for axis in (left, right):
            axis.axis("off")
        figure.suptitle(f"{target_name}: {pred:.2f}")
        frame_path = frame_folder / f"frame-{index:03d}.png"
        figure.savefig(frame_path)
        frame_paths.append(frame_path)
    order = list(range(len(frame_paths))) + list(range(len(frame_paths) - 2, 0, -1))
    images = [imageio.imread(frame_paths[i]) for i in order]
    imageio.mimsave(path, images, duration=frame_duration_ms, loop=0)
    return path


def _paper_style_overlay(path: Path, input_pixels: np.ndarray, saliency: np.ndarray, title: str) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 4), dpi=100)
    axis = figure.subplots()
    axis.imshow(input_pixels, cmap="gray", vmin=-1024, vmax=1024)
    axis.imshow(saliency, cmap="jet", alpha=0.5)
    axis.set_title(title)
    axis.axis("off")
    figure.savefig(path)
    return path


def run_baseline_request(classifier, autoencoder, x: torch.Tensor, input_pixels: np.ndarray,
                         target: str | None, settings: ShiftSettings, out_dir: Path,
                         device: torch.device) -> RequestOutcome:
    """One request the paper-style way (see :class:`PaperStyleLatentShift`)."""
    from captum.attr import LayerAttribution, LayerGradCam

    from latentshift.core.attribution import find_gradcam_layer

    clock = StageClock(device)
    explainer = PaperStyleLatentShift(classifier, autoencoder)
    started = time.perf_counter()
    with clock("predict"):
        with torch.no_grad():
            probabilities = torch.sigmoid(classifier(x))[0].cpu()
        target_index, target_name = _target(classifier, probabilities, target)

    with clock("gradcam"):
        inputs = x.detach().clone()
        with torch.enable_grad():
            layer_map = LayerGradCam(classifier, find_gradcam_layer(classifier)).attribute(
                inputs, target=target_index, relu_attributions=True)
        gradcam = LayerAttribution.interpolate(layer_map.detach(), tuple(x.shape[-2:]),
                                               interpolate_mode="bilinear")[0, 0].cpu().numpy()
        _paper_style_overlay(out_dir / "gradcam.png", input_pixels, gradcam, "Grad-CAM")

    with clock("encode_gradient"):
        z, gradient, reconstruction, reconstruction_pred = explainer.latent_gradient(x, target_index)
        initial_pred = explainer.prediction(x, target_index)
    with clock("search"):
        (lambda_min, lambda_max), stop_reasons = _baseline_range(
            explainer, z, gradient, reconstruction, reconstruction_pred, target_index, settings)
    with clock("sweep"):
        lambdas = sweep_lambdas(float(lambda_min), float(lambda_max), settings.frames)
        decoded = [explainer.decode_and_classify(z, gradient, float(lam), target_index) for lam in lambdas]
        frames = np.stack([image[0, 0].numpy() for image, _ in decoded])
        preds = np.array([pred for _, pred in decoded])
    with clock("heatmap"):
        heatmap = np.abs(np.diff(frames, axis=0)).mean(0) if len(frames) > 1 else np.zeros_like(frames[0])
    with clock("gif"):
        _paper_style_gif(out_dir / "baseline.gif", input_pixels, frames, preds, lambdas, target_name)

    with clock("integrated_gradients"):
        integrated_gradients = _baseline_integrated_gradients(classifier, x, target_index, settings.baseline_ig_steps)
        _paper_style_overlay(out_dir / "integrated_gradients.png", input_pixels,
                             np.abs(integrated_gradients), "Integrated Gradients")
    _synchronize(device)
    clock.seconds["end_to_end"] = time.perf_counter() - started
    return RequestOutcome(target_index, target_name, lambdas, preds, initial_pred, reconstruction_pred,
                          stop_reasons, explainer.evaluations, heatmap, gradcam, integrated_gradients,
                          clock.seconds, settings.baseline_ig_steps)


def _baseline_range(explainer, z, gradient, reconstruction, reconstruction_pred, target_index: int,
                    settings: ShiftSettings) -> tuple[tuple[float, float], dict[str, str]]:
    """The baseline's λ range: given, or the reference's search on each side in turn."""
    if settings.lambda_range is not None:
        return tuple(settings.lambda_range), {"curtail": "given_range", "exaggerate": "given_range"}
    lambda_min, curtail_reason = explainer.search_side(
        z, gradient, reconstruction, reconstruction_pred, target_index, -1, settings)
    lambda_max, exaggerate_reason = explainer.search_side(
        z, gradient, reconstruction, reconstruction_pred, target_index, +1, settings)
    return (lambda_min, lambda_max), {"curtail": curtail_reason, "exaggerate": exaggerate_reason}


def _baseline_integrated_gradients(classifier, x: torch.Tensor, target_index: int, steps: int) -> np.ndarray:
    """captum's Integrated Gradients from a black image, the paper's way: (H, W) signed map."""
    from captum.attr import IntegratedGradients

    inputs = x.detach().clone()
    with torch.enable_grad():
        attributions = IntegratedGradients(classifier).attribute(
            inputs, baselines=torch.zeros_like(inputs), target=target_index, n_steps=steps, method="gausslegendre")
    return attributions.detach().sum(1)[0].cpu().numpy()


# ------------------------------------------------------------------------- ours


def run_our_request(classifier, autoencoder, x: torch.Tensor, input_pixels: np.ndarray,
                    target: str | None, settings: ShiftSettings, out_dir: Path,
                    device: torch.device) -> RequestOutcome:
    """One request through the project's modules, in the pipeline's order."""
    from latentshift.io import render
    from latentshift.core.attribution import GradCAM, IntegratedGradientsMap
    from latentshift.core.shift import LatentShift

    clock = StageClock(device)
    started = time.perf_counter()
    with clock("predict"):
        with torch.inference_mode():
            probabilities = torch.sigmoid(classifier(x))[0].cpu()
        target_index, target_name = _target(classifier, probabilities, target)

    with clock("gradcam"):
        gradcam = GradCAM(classifier).attribute(x, target_index).map
        render.write_overlay(out_dir / "gradcam.png", input_pixels, gradcam, title="Grad-CAM")

    shift_started = time.perf_counter()
    [result] = LatentShift(classifier, autoencoder, apply_sigmoid=True).attribute(
        x, target_index, settings.shift_options(), initial_preds=[float(probabilities[target_index])])
    shift_seconds = time.perf_counter() - shift_started
    for stage in ("encode_gradient", "search", "sweep", "heatmap"):
        clock.seconds[stage] = result.timings.get(stage, 0.0)
    # what attribute spends outside its own stage timers (checks, result assembly)
    clock.seconds["encode_gradient"] += max(0.0, shift_seconds - sum(result.timings.values()))

    with clock("gif"):
        render.write_gif(out_dir / "latentshift.gif", result.frames, result.preds, result.lambdas,
                         input_image=input_pixels, target_name=target_name)

    with clock("integrated_gradients"):
        ig = IntegratedGradientsMap(classifier, n_steps=settings.ig_steps,
                                    tolerance=settings.ig_tolerance).attribute(x, target_index)
        render.write_overlay(out_dir / "integrated_gradients.png", input_pixels, ig.map,
                             title="Integrated Gradients", absolute=True)
    _synchronize(device)
    clock.seconds["end_to_end"] = time.perf_counter() - started
    return RequestOutcome(target_index, target_name, np.asarray(result.lambdas, dtype=np.float64),
                          np.asarray(result.preds, dtype=np.float64), float(result.initial_pred),
                          result.zero_pred, dict(result.stop_reasons), result.evaluations,
                          result.heatmap, gradcam, ig.map, clock.seconds, int(ig.n_steps))


def measure_floor(classifier, autoencoder, x: torch.Tensor, target_index: int, lambdas: np.ndarray,
                  device: torch.device, batch_size: int = 8) -> dict[str, float]:
    """The least any implementation needs: one gradient pass (encode, decode, classify,
    backward) and one batched decode+classify of the sweep's frames."""
    from latentshift.core.shift import LatentShift

    explainer = LatentShift(classifier, autoencoder, apply_sigmoid=True, batch_size=batch_size)
    _synchronize(device)
    started = time.perf_counter()
    z, gradient = explainer.latent_gradient(x, target_index)
    _synchronize(device)
    gradient_seconds = time.perf_counter() - started
    steps = torch.tensor(np.asarray(lambdas, dtype=np.float32), device=device)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(steps), batch_size):
            chunk = steps[start:start + batch_size]
            latents = z + chunk.view(-1, *([1] * (z.dim() - 1))) * gradient
            torch.sigmoid(classifier(autoencoder.decode(latents))[:, target_index]).cpu()
    _synchronize(device)
    frames_seconds = time.perf_counter() - started
    return {"gradient": gradient_seconds, "frames": frames_seconds, "total": gradient_seconds + frames_seconds}


#: Other paths measured on request (``--opt-in``): faster ones that may change answers (never
#: defaults) and "contiguous", the layout ours used before channels_last became its CPU default.
OPT_IN_PATHS = ("contiguous", "channels_last", "bf16", "compile")


@contextmanager
def _opt_in_models(path: str, classifier, autoencoder, device: torch.device):
    """(classifier, autoencoder) running the ``path`` variant; the originals are restored."""
    if path in ("contiguous", "channels_last"):
        layout = torch.channels_last if path == "channels_last" else torch.contiguous_format
        before = memory_format_of(classifier)
        classifier.to(memory_format=layout)
        autoencoder.to(memory_format=layout)
        try:
            yield classifier, autoencoder
        finally:
            classifier.to(memory_format=before)
            autoencoder.to(memory_format=before)
    elif path == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield classifier, autoencoder
    else:  # compile: the forward passes (decode, classify) compiled, dynamic batch size
        class Compiled(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner, self.pathologies = inner, getattr(inner, "pathologies", [])
                self.decode_fn = torch.compile(inner.decode, dynamic=True) if hasattr(inner, "decode") else None
                self.forward_fn = torch.compile(inner.forward, dynamic=True)

            def forward(self, x):
                return self.forward_fn(x)

            def encode(self, x):
                return self.inner.encode(x)

            def decode(self, z):
                return self.decode_fn(z)

        yield Compiled(classifier), Compiled(autoencoder)


#: Relative change of a λ end above which an opt-in path "stops elsewhere".
STOPS_TOLERANCE = 1e-4


def measure_opt_in(path: str, classifier, autoencoder, x: torch.Tensor, reference: RequestOutcome,
                   settings: ShiftSettings, device: torch.device) -> dict:
    """One opt-in path against our fp32 answer ``reference``: seconds of a search request
    (encode+gradient+search+sweep; the first, cold call timed apart), max |Δp| at the same
    λs (fixed range = the reference's) and whether the search stops elsewhere."""
    from latentshift.core.shift import LatentShift

    searching = settings.shift_options(lambda_range=None)
    fixed = (float(reference.lambdas[0]), float(reference.lambdas[-1]))
    try:
        with _opt_in_models(path, classifier, autoencoder, device) as (cls, ae):
            explainer = LatentShift(cls, ae, apply_sigmoid=True)
            started = time.perf_counter()
            [searched] = explainer.attribute(x, reference.target_index, searching)
            cold = time.perf_counter() - started
            started = time.perf_counter()
            [searched] = explainer.attribute(x, reference.target_index, searching)
            warm = time.perf_counter() - started
            same_lambdas = (explainer.attribute(x, reference.target_index, searching.replace(lambda_range=fixed))[0]
                            if fixed[0] < fixed[1] else searched)
    except Exception as error:  # an opt-in path that does not run here is reported, not fatal
        logger.warning("opt-in path %s failed: %s", path, error)
        return {"path": path, "error": f"{type(error).__name__}: {error}"[:200]}
    delta = float(np.max(np.abs(np.asarray(same_lambdas.preds, dtype=np.float64) - reference.preds), initial=0.0))
    ends = (float(searched.lambdas[0]), float(searched.lambdas[-1]))
    ours_ends = (float(reference.lambdas[0]), float(reference.lambdas[-1]))
    # bisect puts its probes where the rules' lines cross, so float rounding moves its ends by
    # ~1e-6 relative; "elsewhere" means more than STOPS_TOLERANCE (far below its 2 % precision)
    moved = max(abs(a - b) / max(abs(b), 1.0) for a, b in zip(ends, ours_ends))
    return {"path": path, "cold_seconds": cold, "seconds": warm, "max_delta_pred": delta, "ends": ends,
            "end_change": moved,
            "stops_elsewhere": moved > STOPS_TOLERANCE or dict(searched.stop_reasons) != reference.stop_reasons}


def _target(classifier, probabilities: torch.Tensor, target: str | None) -> tuple[int, str]:
    names = list(classifier.pathologies)
    if target is None:
        named = [i for i, name in enumerate(names) if name]
        index = max(named, key=lambda i: float(probabilities[i]))
    else:
        matches = [i for i, name in enumerate(names) if name.lower() == target.lower()]
        if not matches:
            raise ValueError(f"the classifier has no output {target!r}")
        index = matches[0]
    return index, names[index]


# ------------------------------------------------------------------------- one side, one process

REQUEST_RUNNERS: dict[str, Callable[..., RequestOutcome]] = {
    "baseline": run_baseline_request,
    "ours": run_our_request,
    "paper": run_our_request,
    "ladder": run_our_request,
}


def warm_up(classifier, autoencoder, x: torch.Tensor, batch_sizes=(1, 8)) -> None:
    """First calls build the kernels' primitives; make them once for both sides alike."""
    for size in batch_sizes:
        batch = x.expand(size, -1, -1, -1).clone()
        with torch.enable_grad():
            z = autoencoder.encode(batch).detach().requires_grad_(True)
            classifier(autoencoder.decode(z)).sum().backward()


def run_side(job: SideJob) -> SideReport:
    """Load the models, warm up, run ``job.repeats`` requests of one side; report."""
    from latentshift.weights import Manifest, load_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if job.threads:
        torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    started = time.perf_counter()
    manifest = Manifest.load(job.models.manifest_path)
    classifier = load_model(manifest.get(job.models.classifier_id, "classifier"), device=device)
    autoencoder = load_model(manifest.get(job.models.autoencoder_id, "autoencoder"), device=device)
    if job.side == "baseline":  # the reference loads its models as they are (contiguous)
        classifier.to(memory_format=torch.contiguous_format)
        autoencoder.to(memory_format=torch.contiguous_format)
    load_seconds = time.perf_counter() - started

    pixels = seed_image(int(getattr(classifier, "resolution", 224)), job.image_path)
    x = torch.from_numpy(pixels).reshape(1, 1, *pixels.shape).to(device)
    warm_up(classifier, autoencoder, x)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    runner = REQUEST_RUNNERS[job.side]
    repeats, floors, outcome = [], [], None
    with tempfile.TemporaryDirectory(prefix=f"bench-{job.side}-") as folder:
        for index in range(job.repeats):
            outcome = runner(classifier, autoencoder, x, pixels, job.target, job.settings, Path(folder), device)
            repeats.append({"load": load_seconds, **outcome.timings})
            logger.info("%s %s %s repeat %d/%d: end to end %.2f s", job.models.name, job.side,
                        "search" if job.settings.lambda_range is None else "fixed", index + 1,
                        job.repeats, outcome.timings["end_to_end"])
            if job.side == "ours":  # right after the request, under the same machine load
                floors.append(measure_floor(classifier, autoencoder, x, outcome.target_index,
                                            outcome.lambdas, device))
        floor = {key: statistics.median(f[key] for f in floors) for key in floors[0]} if floors else None
        profile_table = None
        opt_in = [measure_opt_in(path, classifier, autoencoder, x, outcome, job.settings, device)
                  for path in (job.opt_in if job.side == "ours" else ())]
        if job.side == "ours":
            if job.profile:
                profile_table = profile_request(runner, classifier, autoencoder, x, pixels, job, Path(folder),
                                                device)
    peak_cuda = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return SideReport(job.side, torch.get_num_threads(), repeats, outcome, peak_rss_mb(), peak_cuda, floor,
                      profile_table, opt_in)


def profile_request(runner, classifier, autoencoder, x, pixels, job: SideJob, out_dir: Path,
                    device: torch.device, rows: int = 20) -> str:
    """torch.profiler table (top ops by self CPU time) of one request, stage markers included."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        runner(classifier, autoencoder, x, pixels, job.target, job.settings, out_dir, device)
    averages = profiler.key_averages()
    by_self = averages.table(sort_by="self_cpu_time_total", row_limit=rows)
    stages = [event for event in averages if event.key.startswith("stage:")]
    stage_lines = "\n".join(f"{event.key:<32} {event.cpu_time_total / 1e6:8.2f} s"
                            for event in sorted(stages, key=lambda e: -e.cpu_time_total))
    return f"{by_self}\nstage markers (wall, incl. children):\n{stage_lines}"


def run_isolated(job: SideJob, isolate: bool = True) -> SideReport:
    """:func:`run_side` in a fresh process (own peak memory, own thread setting)."""
    if not isolate:
        return run_side(job)
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=set_allocator_tunables) as pool:  # the allocator of the app and the CLI
        return pool.apply(run_side, (job,))


# ------------------------------------------------------------------------- comparison and table


@dataclass
class Equivalence:
    passed: bool
    max_lambda_difference: float
    max_pred_difference: float
    detail: str


def compare_outcomes(baseline: RequestOutcome, ours: RequestOutcome, tolerance: float = TOLERANCE) -> Equivalence:
    """Same target, λs (relative to max(1, |λ|)) and predictions to ``tolerance``?"""
    problems = []
    if baseline.target_index != ours.target_index:
        problems.append(f"targets differ ({baseline.target_name} vs {ours.target_name})")
    if baseline.lambdas.shape != ours.lambdas.shape:
        problems.append(f"{len(baseline.lambdas)} vs {len(ours.lambdas)} frames")
        return Equivalence(False, math.inf, math.inf, "; ".join(problems))
    lambda_difference = float(np.max(np.abs(baseline.lambdas - ours.lambdas)
                                     / np.maximum(1.0, np.abs(baseline.lambdas)), initial=0.0))
    pred_difference = float(np.max(np.abs(baseline.preds - ours.preds), initial=0.0))
    pred_difference = max(pred_difference, abs(baseline.initial_pred - ours.initial_pred),
                          abs(baseline.zero_pred - ours.zero_pred))
    if lambda_difference > tolerance:
        problems.append(f"λs differ by {lambda_difference:.2e}")
    if pred_difference > tolerance:
        problems.append(f"predictions differ by {pred_difference:.2e}")
    if baseline.stop_reasons != ours.stop_reasons:
        problems.append(f"stop reasons differ ({baseline.stop_reasons} vs {ours.stop_reasons})")
    detail = "; ".join(problems) if problems else (
        f"{len(ours.lambdas)} λs in [{ours.lambdas[0]:.2f}, {ours.lambdas[-1]:.2f}], stops {ours.stop_reasons}")
    return Equivalence(not problems, lambda_difference, pred_difference, detail)


def _map_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Largest difference between two maps relative to the first map's largest |value|."""
    scale = float(np.max(np.abs(first))) or 1.0
    return float(np.max(np.abs(np.asarray(first) - np.asarray(second)))) / scale


@dataclass
class Comparison:
    """One model pair in one λ mode: both sides and the verdict."""

    models: str
    mode: str
    settings: ShiftSettings
    device: str
    baseline: SideReport
    ours: SideReport
    equivalence: Equivalence
    ladder: SideReport | None = None
    paper: SideReport | None = None

    def end_differences(self) -> dict[str, float]:
        """{side: |λ_end(bisect) − λ_end(ladder)| / |λ_end(ladder)|} (0 when both ends are 0)."""
        if self.ladder is None:
            return {}
        ours, ladder = self.ours.outcome.lambdas, self.ladder.outcome.lambdas
        return {"curtail": _relative(ours[0], ladder[0]), "exaggerate": _relative(ours[-1], ladder[-1])}

    def _side_rows(self) -> list[str]:
        sides = [("baseline", self.baseline), ("ours", self.ours)] + [
            (name, report) for name, report in (("paper", self.paper), ("ladder", self.ladder)) if report is not None]
        lines = [f"{'stage':<24}" + "".join(f"{name + ' s':>12}" for name, _ in sides) + f"{'baseline/ours':>15}"]
        for stage in STAGES:
            values = [report.median(stage) for _, report in sides]
            if any(v is None for v in values) or (stage == "search" and self.settings.lambda_range is not None):
                continue
            ratio = f"{values[0] / values[1]:.2f}x" if values[1] > 1e-4 else "-"
            lines.append(f"{STAGE_LABELS[stage]:<24}" + "".join(f"{v:>12.3f}" for v in values) + f"{ratio:>15}")
        lines.append(f"{'λ evaluations':<24}" + "".join(f"{r.outcome.evaluations:>12d}" for _, r in sides))
        lines.append(f"{'λ ends':<24}" + "".join(
            f"{f'{r.outcome.lambdas[0]:.0f},{r.outcome.lambdas[-1]:.0f}':>12}" for _, r in sides))
        return lines

    def _opt_in_lines(self) -> list[str]:
        lines = []
        ours_seconds = sum(self.ours.median(s) or 0.0 for s in ("encode_gradient", "search", "sweep", "heatmap"))
        for entry in self.ours.opt_in:
            if "error" in entry:
                lines.append(f"opt-in {entry['path']}: did not run ({entry['error']})")
                continue
            lines.append(f"opt-in {entry['path']}: latent shift {entry['seconds']:.3f} s (first call "
                         f"{entry['cold_seconds']:.2f} s) vs ours {ours_seconds:.3f} s = {ours_seconds / entry['seconds']:.2f}x; "
                         f"max |Δp| at the same λs {entry['max_delta_pred']:.1e}; search stops "
                         f"{'ELSEWHERE ' + str(tuple(round(v, 1) for v in entry['ends'])) if entry['stops_elsewhere'] else 'at the same λs'}"
                         f" (ends moved {entry.get('end_change', 0.0):.1e} relative)")
        return lines

    def table(self) -> str:
        settings = self.settings
        mode = (f"fixed λ range [{settings.lambda_range[0]:g}, {settings.lambda_range[1]:g}]"
                if settings.lambda_range else
                f"automatic search (step {settings.step_size:g}, max |λ| {settings.max_lambda:g}, "
                f"pred_diff {settings.pred_diff:g}, pixel budget {settings.pixel_budget:g})")
        lines = [f"{self.models} | {mode} | {settings.frames} frames, IG steps: baseline "
                 f"{self.baseline.outcome.ig_steps}, ours {self.ours.outcome.ig_steps} (first try "
                 f"{settings.ig_steps}, tolerance {settings.ig_tolerance:g}) | "
                 f"{self.device}, {self.ours.threads} thread(s), median of {len(self.ours.repeats)} | "
                 f"ours = search 'bisect', frames on the input; paper = ours with the paper's frames; "
                 f"ladder = paper with search 'ladder'; baseline = the reference's behaviour"] + self._side_rows()
        if self.ours.floor:
            floor = self.ours.floor
            shift = sum(self.ours.median(s) or 0.0 for s in ("encode_gradient", "search", "sweep"))
            search_sweep = sum(self.ours.median(s) or 0.0 for s in ("search", "sweep"))
            lines.append(f"floor: gradient pass {floor['gradient']:.3f} s + one batched evaluation of "
                         f"{settings.frames} frames {floor['frames']:.3f} s = {floor['total']:.3f} s; "
                         f"ours encode+gradient+search+sweep {shift:.3f} s = {shift / floor['total']:.2f}x floor; "
                         f"search+sweep {search_sweep:.3f} s = {search_sweep / floor['frames']:.2f}x "
                         f"the batched evaluation")
        verdict = "PASS" if self.equivalence.passed else "FAIL"
        compared = "ladder" if self.ladder is not None else "paper"
        lines.append(f"same answer as the baseline ({compared}; λs, predictions to {TOLERANCE:g}): {verdict}: max |Δλ| "
                     f"{self.equivalence.max_lambda_difference:.1e}, max |Δpred| "
                     f"{self.equivalence.max_pred_difference:.1e}; {self.equivalence.detail}")
        lines.append(f"maps, max difference relative to the baseline's range: Grad-CAM "
                     f"{_map_agreement(self.baseline.outcome.gradcam, self.ours.outcome.gradcam):.1e}, IG "
                     f"{_map_agreement(self.baseline.outcome.integrated_gradients, self.ours.outcome.integrated_gradients):.1e}, "
                     f"heatmap (paper's frames) {_map_agreement(self.baseline.outcome.heatmap, (self.paper or self.ours).outcome.heatmap):.1e}")
        memory = f"peak memory (maxrss): baseline {self.baseline.peak_rss_mb:.0f} MiB, ours {self.ours.peak_rss_mb:.0f} MiB"
        if self.ours.peak_cuda_mb is not None:
            memory += (f"; cuda max allocated: baseline {self.baseline.peak_cuda_mb:.0f} MiB, "
                       f"ours {self.ours.peak_cuda_mb:.0f} MiB")
        lines.append(memory)
        differences = self.end_differences()
        if differences and self.settings.lambda_range is None:
            lines.append("bisect's λ ends vs the ladder's: " + ", ".join(
                f"{side} {100 * value:.1f} %" for side, value in differences.items()))
        return "\n".join(lines + self._opt_in_lines())

    def to_json(self) -> dict:
        def side(report: SideReport) -> dict:
            outcome = report.outcome
            return {"threads": report.threads, "median_seconds": {s: report.median(s) for s in STAGES},
                    "repeats": report.repeats, "evaluations": outcome.evaluations,
                    "lambdas": outcome.lambdas.tolist(), "preds": outcome.preds.tolist(),
                    "stop_reasons": outcome.stop_reasons, "target": outcome.target_name,
                    "ig_steps": outcome.ig_steps,
                    "peak_rss_mb": report.peak_rss_mb, "peak_cuda_mb": report.peak_cuda_mb,
                    "floor_seconds": report.floor}

        return {"models": self.models, "mode": self.mode, "device": self.device,
                "settings": asdict(self.settings), "baseline": side(self.baseline), "ours": side(self.ours),
                "ladder": side(self.ladder) if self.ladder is not None else None,
                "paper": side(self.paper) if self.paper is not None else None,
                "bisect_vs_ladder_end_difference": self.end_differences(),
                "opt_in": self.ours.opt_in, "equivalence": asdict(self.equivalence)}


def _relative(value: float, reference: float) -> float:
    return 0.0 if value == reference else abs(float(value) - float(reference)) / max(abs(float(reference)), 1e-12)


def compare(models: ModelSource, settings: ShiftSettings, *, device: str = "cpu", repeats: int = 3,
            threads: int | None = None, target: str | None = None, image_path: str | None = None,
            isolate: bool = True, profile: bool = False, opt_in: tuple[str, ...] = ()) -> Comparison:
    """Run the baseline, ours (``settings.search``, default bisect; ``settings.frames_from``),
    ours with the paper's frames and, in search mode, that with search="ladder" on the same
    models, image, target and settings; the same-answer check compares the baseline with the
    ladder (with the paper side in fixed-range mode)."""
    reports = {}
    searching = settings.lambda_range is None
    paper = {"frames_from": "reconstruction"}
    side_changes = {"baseline": {}, "ours": {}, "paper": paper, "ladder": {**paper, "search": "ladder"}}
    for side in SIDES if searching else ("baseline", "ours", "paper"):
        side_settings = ShiftSettings(**{**asdict(settings), **side_changes[side]})
        job = SideJob(side, models, side_settings, device, repeats, threads, target, image_path,
                      profile=profile and side == "ours", opt_in=opt_in if searching and side == "ours" else ())
        reports[side] = run_isolated(job, isolate)
    compared = reports.get("ladder", reports["paper"])
    return Comparison(models.name, "search" if searching else "fixed", settings, device, reports["baseline"],
                      reports["ours"], compare_outcomes(reports["baseline"].outcome, compared.outcome),
                      reports.get("ladder"), reports["paper"])


def thread_table(models: ModelSource, settings: ShiftSettings, thread_counts: list[int], *, device: str,
                 repeats: int, target: str | None, image_path: str | None, isolate: bool = True) -> str:
    """Our side's median seconds per stage for each torch thread count."""
    reports = [run_isolated(SideJob("ours", models, settings, device, repeats, count, target, image_path), isolate)
               for count in thread_counts]
    lines = [f"{models.name} | ours, median of {repeats}, by torch.set_num_threads",
             f"{'stage':<24}" + "".join(f"{f'{r.threads} thread(s)':>14}" for r in reports)]
    for stage in STAGES:
        values = [r.median(stage) for r in reports]
        if any(v is None for v in values):
            continue
        lines.append(f"{STAGE_LABELS[stage]:<24}" + "".join(f"{v:>14.3f}" for v in values))
    lines.append(f"{'peak memory MiB':<24}" + "".join(f"{r.peak_rss_mb:>14.0f}" for r in reports))
    return "\n".join(lines)


#: The issue's goals per model pair for what an app user waits for (seconds):
#: predictions + Grad-CAM, the GIF (cumulative: the app shows it once the render is done), everything.
APP_GOALS = {"demo": (1.0, 3.0, 1.0), "xrv": (1.0, 3.0, 6.5)}


def app_timings(source: ModelSource, repeats: int, frames: int, image_path: str | None,
                device: str = "cpu", frames_from: str = DEFAULTS.frames_from) -> str:
    """The pipeline's own stage timings (what the app shows) for ``source``'s models and one
    frame mode, median of ``repeats``, against :data:`APP_GOALS`."""
    from latentshift.io.imaging import XrayImage, to_display_uint8
    from latentshift.pipeline import ExplainOptions, Pipeline

    started = time.perf_counter()
    pipeline = Pipeline.get(source.classifier_id, source.autoencoder_id, device=device,
                            manifest_path=source.manifest_path)
    load_seconds = time.perf_counter() - started
    pixels = seed_image(pipeline.resolution, image_path)
    image = XrayImage(pixels=pixels, display=to_display_uint8(pixels), source_format="PNG",
                      original_size=pixels.shape[::-1], bit_depth=8)
    runs, options = [], ExplainOptions(frames=frames, frames_from=frames_from)
    with tempfile.TemporaryDirectory(prefix="bench-app-") as folder:
        pipeline.explain(image, options, out_dir=folder)  # first-call warm-up
        for _ in range(repeats):
            runs.append(dict(pipeline.explain(image, options, out_dir=folder).timings))

    def median(*stages: str) -> float:
        return statistics.median(sum(run.get(s, 0.0) for s in stages) for run in runs)

    goals = APP_GOALS["xrv" if source.name.startswith("xrv") else "demo"]
    visible = {"predictions + Grad-CAM visible": (median("predict", "gradcam"), goals[0]),
               "GIF visible (cumulative)": (median("predict", "gradcam", "latent_shift", "render"), goals[1]),
               "everything (total)": (median("total"), goals[2])}
    lines = [f"app-level (Pipeline.get().explain, {pipeline.classifier_id} + {pipeline.autoencoder_id}, "
             f"{frames} frames from the {frames_from}, median of {repeats}; models loaded once in "
             f"{load_seconds:.2f} s)"]
    for stage in ("predict", "gradcam", "latent_shift", "render", "integrated_gradients"):
        lines.append(f"  {stage:<32}{median(stage):>8.3f} s")
    for label, (seconds, goal) in visible.items():
        lines.append(f"  {label:<32}{seconds:>8.3f} s  (goal ≤ {goal:g} s: {'met' if seconds <= goal else 'NOT met'})")
    return "\n".join(lines)


# ------------------------------------------------------------------------- command line


def build_parser(prog: str = "python -m latentshift_research.tools.bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default="both", choices=("demo", "xrv", "both"))
    parser.add_argument("--modes", default="fixed,search", help="λ modes, comma separated: fixed,search")
    parser.add_argument("--repeats", type=int, default=3, help="timed requests per side (median reported)")
    parser.add_argument("--frames", type=int, default=DEFAULTS.frames)
    parser.add_argument("--step-size", type=float, default=DEFAULTS.step_size)
    parser.add_argument("--max-lambda", type=float, default=DEFAULTS.max_lambda)
    parser.add_argument("--range", type=float, nargs=2, default=(-200.0, 200.0), metavar=("LO", "HI"),
                        help="the fixed λ range of the 'fixed' mode")
    parser.add_argument("--ig-steps", type=int, default=DEFAULTS.ig_steps, help="our IG's first step count")
    parser.add_argument("--ig-tolerance", type=float, default=DEFAULTS.ig_tolerance,
                        help="our IG's convergence tolerance (0: the steps stay fixed)")
    parser.add_argument("--baseline-ig-steps", type=int, default=BASELINE_IG_STEPS,
                        help="the baseline's fixed IG steps")
    parser.add_argument("--target", default=None, help="pathology name (default: top prediction)")
    parser.add_argument("--image", default=None, help="image file (default: the shared seed image)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for both sides")
    parser.add_argument("--thread-counts", default=None,
                        help="also time our side of the xrv models at these thread counts, e.g. 1,2")
    parser.add_argument("--skip-comparison", action="store_true",
                        help="only the extra measurements (--thread-counts, --profile, --app)")
    parser.add_argument("--app", action="store_true",
                        help="also time Pipeline.explain (what the app runs) with each chosen model pair")
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler table of one of our xrv requests (search mode)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained xrv weights")
    parser.add_argument("--search", default=DEFAULTS.search, choices=("bisect", "ladder"),
                        help="our side's search (the ladder side always runs in search mode too)")
    parser.add_argument("--opt-in", default="contiguous,bf16",
                        help=f"opt-in paths measured on our side, comma separated from {','.join(OPT_IN_PATHS)} "
                             "('' for none; compile is slow to start)")
    parser.add_argument("--json", default=None, help="write every number to this JSON file")
    return parser


def _run_model_sections(args: argparse.Namespace, folder: Path, modes: list[str], settings_by_mode: dict,
                        common: dict, record: dict, outputs: list[str], opt_in: tuple[str, ...] = ()) -> None:
    """The comparisons, thread table and profile of the chosen models (files under ``folder``)."""
    sources: list[ModelSource] = []
    if args.models in ("demo", "both"):
        demo = demo_model_source()
        if demo is None:
            note = "demo models: the manifest lists no available demo-* classifier and autoencoder; skipped"
            logger.warning(note)
            record["notes"].append(note)
            outputs.append(note)
        else:
            sources.append(demo)
    xrv = write_xrv_manifest(folder, args.seed, args.image) if args.models in ("xrv", "both") else None
    if xrv is not None:
        sources.append(xrv)

    for source in [] if args.skip_comparison else sources:
        for mode in modes:
            comparison = compare(source, settings_by_mode[mode], profile=False, opt_in=opt_in, **common)
            print(comparison.table() + "\n", flush=True)
            outputs.append(comparison.table())
            record["comparisons"].append(comparison.to_json())

    if xrv is not None and args.thread_counts:
        counts = [int(c) for c in args.thread_counts.split(",") if c.strip()]
        table = thread_table(xrv, settings_by_mode[modes[-1]], counts,
                             **{k: v for k, v in common.items() if k != "threads"})
        print(table + "\n", flush=True)
        outputs.append(table)
        record["thread_table"] = table

    if xrv is not None and args.profile:
        job = SideJob("ours", xrv, settings_by_mode["search"], args.device, 1, args.threads, args.target,
                      args.image, profile=True)
        report = run_isolated(job)
        print(f"profile of one of our xrv requests (search mode), top ops by self CPU time:\n"
              f"{report.profile_table}\n", flush=True)
        record["profile"] = report.profile_table

    for source in sources if args.app else []:
        for frames_from in FRAME_SOURCES:
            table = app_timings(source, args.repeats, args.frames, args.image, args.device, frames_from)
            print(table + "\n", flush=True)
            record.setdefault("app", []).append(table)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = (build_parser(prog) if prog else build_parser()).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        logger.error("--device cuda asked for, but torch sees no CUDA device")
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        logger.error("unknown mode(s) %s; choose from %s", unknown, MODES)
        return 2
    base_settings = ShiftSettings(frames=args.frames, step_size=args.step_size, max_lambda=args.max_lambda,
                                  ig_steps=args.ig_steps, ig_tolerance=args.ig_tolerance,
                                  baseline_ig_steps=args.baseline_ig_steps, search=args.search)
    settings_by_mode = {"fixed": ShiftSettings(**{**asdict(base_settings), "lambda_range": tuple(args.range)}),
                        "search": base_settings}
    common = dict(device=args.device, repeats=args.repeats, threads=args.threads, target=args.target,
                  image_path=args.image)
    opt_in = tuple(p.strip() for p in args.opt_in.split(",") if p.strip())
    if any(p not in OPT_IN_PATHS for p in opt_in):
        logger.error("unknown opt-in path(s) in %r; choose from %s", args.opt_in, OPT_IN_PATHS)
        return 2
    record: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                                "default_threads": torch.get_num_threads(), "device": args.device,
                                "load_average": list(os.getloadavg())},
                    "comparisons": [], "notes": []}
    outputs: list[str] = []

    with tempfile.TemporaryDirectory(prefix="bench-models-") as folder:
        _run_model_sections(args, Path(folder), modes, settings_by_mode, common, record, outputs, opt_in)

    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str))
        logger.info("wrote %s", args.json)
    failed = [c for c in record["comparisons"] if not c["equivalence"]["passed"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
