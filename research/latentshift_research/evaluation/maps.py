"""``python -m latentshift_research evaluate-maps``: how well each attribution map finds NIH boxes.

The measurement of the paper (Cohen et al., "Gifsplanation via Latent Shift",
MIDL 2021): for images with a radiologist's bounding box of a finding that the
classifier predicts, each method's map is thresholded so that it keeps as many pixels
as the box has, and the overlap with the box is the IoU. The pointing game (Zhang et
al., ECCV 2016) adds whether the map's maximum lies in the box. Run time per image is
recorded too.

Methods: the latent-shift heatmap (``heatmap="int"``), Grad-CAM (positive part) and
Integrated Gradients (absolute value, as in the paper's comparison).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from latentshift.errors import LatentShiftError, OptionsError

logger = logging.getLogger(__name__)

#: Method names, in table order.
METHODS = ("latent-shift", "grad-cam", "integrated-gradients")

CSV_FIELDS = ("image", "mask", "mask_label", "target", "target_index", "probability", "method",
              "iou", "pointing_hit", "seconds", "mask_pixels", "selected_pixels", "ig_convergence_delta")


# -- metrics -------------------------------------------------------------------------

def top_k_selection(saliency: np.ndarray, k: int) -> np.ndarray:
    """Boolean (H, W) mask of the ``k`` highest pixels of ``saliency``.

    Pixels tied with the first pixel left out are left out too rather than picked
    arbitrarily, so fewer than ``k`` pixels may be selected (none for a flat map).
    """
    values = np.asarray(saliency, dtype=np.float64)
    if k <= 0:
        return np.zeros(values.shape, dtype=bool)
    if k >= values.size:
        return np.ones(values.shape, dtype=bool)
    flat = values.ravel()
    first_left_out = np.partition(flat, flat.size - k - 1)[flat.size - k - 1]
    return values > first_left_out


def iou_at_mask_area(saliency: np.ndarray, mask: np.ndarray) -> float:
    """IoU between the mask and the map's top-k pixels, k = number of mask pixels.

    The paper's rule: threshold the map at the mask's area fraction, then compare.

    Args:
        saliency: (H, W) map, higher = more important.
        mask: (H, W) boolean (or 0/non-zero) ground-truth region, not empty.
    Returns:
        IoU in [0, 1].
    """
    region = _check_pair(saliency, mask)
    selected = top_k_selection(saliency, int(region.sum()))
    union = np.logical_or(selected, region).sum()
    return float(np.logical_and(selected, region).sum() / union)


def pointing_game_hit(saliency: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's maximum lies inside the mask (a flat map points nowhere: False).

    Args:
        saliency: (H, W) map, higher = more important.
        mask: (H, W) boolean (or 0/non-zero) region, not empty.
    """
    region = _check_pair(saliency, mask)
    values = np.asarray(saliency, dtype=np.float64)
    peak = values.max()
    if peak == values.min():
        return False
    return bool(np.any(region[values == peak]))


def _check_pair(saliency: np.ndarray, mask: np.ndarray) -> np.ndarray:
    saliency = np.asarray(saliency)
    region = np.asarray(mask) != 0
    if saliency.ndim != 2 or saliency.shape != region.shape:
        raise ValueError(f"map {saliency.shape} and mask {region.shape} must be (H, W) of the same shape")
    if not np.all(np.isfinite(saliency)):
        raise ValueError("the map has NaN or infinite values")
    if not region.any():
        raise ValueError("the mask is empty")
    return region


# -- data ----------------------------------------------------------------------------

@dataclass(frozen=True)
class BoxedImage:
    """An image with a box mask of a finding the classifier predicts."""

    image: Path
    mask: Path
    mask_label: str
    target_index: int
    target_name: str


def match_target(label: str, pathologies: Sequence[str]) -> int | None:
    """Index of ``label`` among the classifier's outputs (case-insensitive), or None."""
    wanted = label.strip().lower()
    for index, name in enumerate(pathologies):
        if name and name.strip().lower() == wanted:
            return index
    return None


def select_boxed_images(data_dir: Path, split: str, pathologies: Sequence[str]
                        ) -> tuple[list[BoxedImage], Counter]:
    """Images of ``split`` in ``data_dir/labels.csv`` with a mask the classifier can be asked about.

    Returns:
        (selected images in CSV order, Counter of the mask labels skipped because the
        classifier has no such output).
    """
    labels_csv = data_dir / "labels.csv"
    try:
        with open(labels_csv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise LatentShiftError(f"no labels.csv in {data_dir}") from None
    if rows and not {"file", "mask", "mask_label", "split"} <= set(rows[0]):
        raise LatentShiftError(f"{labels_csv} lacks the columns file, mask, mask_label, split")
    selected, skipped = [], Counter()
    for row in rows:
        if row["split"] != split or not row["mask"] or not row["mask_label"]:
            continue
        index = match_target(row["mask_label"], pathologies)
        if index is None:
            skipped[row["mask_label"]] += 1
            continue
        selected.append(BoxedImage(image=data_dir / row["file"], mask=data_dir / row["mask"],
                                   mask_label=row["mask_label"], target_index=index,
                                   target_name=pathologies[index]))
    return selected, skipped


def load_mask(path: Path) -> np.ndarray:
    """(H, W) boolean mask from a PNG where non-zero pixels are inside the box."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L")) > 0
    except FileNotFoundError:
        raise LatentShiftError(f"mask file not found: {path}") from None


# -- methods -------------------------------------------------------------------------

@dataclass
class MapOutcome:
    """One method's map for one image."""

    saliency: np.ndarray
    seconds: float
    ig_convergence_delta: float | None = None


MapMethod = Callable[[torch.Tensor, int], MapOutcome]


def build_methods(classifier: nn.Module, autoencoder: nn.Module | None, names: Iterable[str],
                  ig_steps: int) -> dict[str, MapMethod]:
    """The requested methods as callables ``(x, target_index) -> MapOutcome``."""
    from latentshift.core.attribution import GradCAM, IntegratedGradientsMap

    methods: dict[str, MapMethod] = {}
    for name in names:
        if name == "latent-shift":
            if autoencoder is None:
                raise OptionsError("the latent-shift method needs an autoencoder")
            from latentshift.core.shift import LatentShift, ShiftOptions

            explainer = LatentShift(classifier, autoencoder, apply_sigmoid=True)
            # the paper's frames, as the documented map figures were measured
            paper = ShiftOptions(heatmap="int", frames_from="reconstruction")
            methods[name] = _timed(lambda x, t, e=explainer: (e.attribute(x, t, paper)[0].heatmap, None))
        elif name == "grad-cam":
            gradcam = GradCAM(classifier)
            methods[name] = _timed(lambda x, t, g=gradcam: (g.attribute(x, t).map, None))
        elif name == "integrated-gradients":
            integrated = IntegratedGradientsMap(classifier, n_steps=ig_steps)

            def run_ig(x, t, ig=integrated):
                result = ig.attribute(x, t)
                return np.abs(result.map), result.convergence_delta

            methods[name] = _timed(run_ig)
        else:
            raise OptionsError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return methods


def _timed(compute: Callable[[torch.Tensor, int], tuple[np.ndarray, float | None]]) -> MapMethod:
    def run(x: torch.Tensor, target: int) -> MapOutcome:
        started = time.perf_counter()
        saliency, delta = compute(x, target)
        return MapOutcome(np.asarray(saliency, dtype=np.float32), time.perf_counter() - started, delta)

    return run


# -- evaluation ----------------------------------------------------------------------

@dataclass
class MethodSummary:
    """Aggregates of one method over the evaluated images."""

    method: str
    ious: list[float] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.ious)


def evaluate(images: Sequence[BoxedImage], classifier: nn.Module, methods: dict[str, MapMethod],
             load_image: Callable[[Path], torch.Tensor]) -> list[dict]:
    """One CSV row per image x method (see :data:`CSV_FIELDS`)."""
    rows = []
    for number, item in enumerate(images, 1):
        x = load_image(item.image)
        mask = load_mask(item.mask)
        with torch.inference_mode():
            probability = float(torch.sigmoid(classifier(x)[0, item.target_index]))
        for name, method in methods.items():
            outcome = method(x, item.target_index)
            if outcome.saliency.shape != mask.shape:
                raise LatentShiftError(f"{name} map of {item.image.name} is {outcome.saliency.shape}, "
                                       f"its mask {item.mask} is {mask.shape}")
            rows.append({
                "image": str(item.image), "mask": str(item.mask), "mask_label": item.mask_label,
                "target": item.target_name, "target_index": item.target_index,
                "probability": round(probability, 6), "method": name,
                "iou": round(iou_at_mask_area(outcome.saliency, mask), 6),
                "pointing_hit": int(pointing_game_hit(outcome.saliency, mask)),
                "seconds": round(outcome.seconds, 3), "mask_pixels": int(mask.sum()),
                "selected_pixels": int(top_k_selection(outcome.saliency, int(mask.sum())).sum()),
                "ig_convergence_delta": "" if outcome.ig_convergence_delta is None
                else f"{outcome.ig_convergence_delta:.6g}",
            })
        logger.info("[%d/%d] %s (%s, p=%.3f): %s", number, len(images), item.image.name,
                    item.target_name, probability,
                    ", ".join(f"{r['method']} IoU {r['iou']:.3f} {r['seconds']:.1f}s"
                              for r in rows[-len(methods):]))
    return rows


def summarize(rows: Sequence[dict], method_order: Sequence[str] = METHODS) -> list[MethodSummary]:
    """Per-method aggregates of :func:`evaluate`'s rows, in ``method_order``."""
    summaries = {name: MethodSummary(name) for name in method_order}
    for row in rows:
        summary = summaries.setdefault(row["method"], MethodSummary(row["method"]))
        summary.ious.append(float(row["iou"]))
        summary.hits.append(bool(row["pointing_hit"]))
        summary.seconds.append(float(row["seconds"]))
    return [s for s in summaries.values() if s.n]


def format_table(summaries: Sequence[MethodSummary]) -> str:
    """Plain-text table: method, n, mean IoU ± std, pointing hit rate, median seconds per image."""
    header = f"{'method':<22}{'n':>4}  {'IoU mean ± std':<17}{'pointing hits':<16}{'median s':>8}"
    lines = [header, "-" * len(header)]
    for s in summaries:
        std = statistics.stdev(s.ious) if s.n > 1 else math.nan
        hits = sum(s.hits)
        iou = f"{statistics.fmean(s.ious):.3f} ± {std:.3f}"
        pointing = f"{hits / s.n:.2f} ({hits}/{s.n})"
        lines.append(f"{s.method:<22}{s.n:>4}  {iou:<17}{pointing:<16}{statistics.median(s.seconds):>8.2f}")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """Write :func:`evaluate`'s rows (columns :data:`CSV_FIELDS`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


# -- command -------------------------------------------------------------------------

def run_evaluate_maps(args: argparse.Namespace) -> int:
    from latentshift.core.attribution import DEFAULT_IG_STEPS
    from latentshift.io.imaging import load_xray
    from latentshift.weights import Manifest, load_model

    method_names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in method_names if m not in METHODS]
    if unknown or not method_names:
        raise OptionsError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    if args.limit is not None and args.limit < 1:
        raise OptionsError("--limit must be at least 1")
    ig_steps = DEFAULT_IG_STEPS if args.ig_steps is None else args.ig_steps
    if ig_steps < 1:
        raise OptionsError("--ig-steps must be at least 1")

    manifest = Manifest.load()
    classifier_entry = (manifest.get(args.classifier, "classifier") if args.classifier
                        else manifest.default("classifier"))
    classifier = load_model(classifier_entry)
    images, skipped = select_boxed_images(args.data, args.split, classifier.pathologies)
    if skipped:
        logger.info("skipping boxes the classifier %r has no output for: %s", classifier_entry.id,
                    ", ".join(f"{label} ({count})" for label, count in sorted(skipped.items())))
    if not images:
        outputs = ", ".join(p for p in classifier.pathologies if p)
        boxed = ", ".join(sorted(skipped)) or "none"
        raise LatentShiftError(
            f"no image of split {args.split!r} in {args.data} has a box of a finding that classifier "
            f"{classifier_entry.id!r} predicts (its outputs: {outputs}; boxed findings there: {boxed})")
    if args.limit is not None:
        images = images[:args.limit]

    autoencoder = None
    if "latent-shift" in method_names:
        autoencoder_entry = (manifest.get(args.autoencoder, "autoencoder") if args.autoencoder
                             else manifest.default("autoencoder"))
        autoencoder = load_model(autoencoder_entry)
    methods = build_methods(classifier, autoencoder, method_names, ig_steps)
    logger.info("evaluating %s on %d images of split %r (classifier %r, IG %d steps)",
                ", ".join(methods), len(images), args.split, classifier_entry.id, ig_steps)

    rows = evaluate(images, classifier, methods,
                    load_image=lambda path: load_xray(path, resolution=classifier_entry.resolution).tensor())
    print(format_table(summarize(rows, method_names)))
    if args.csv:
        write_csv(rows, args.csv)
        logger.info("wrote %d rows to %s", len(rows), args.csv)
    return 0
