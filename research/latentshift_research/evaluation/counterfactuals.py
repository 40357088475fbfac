"""``python -m latentshift_research evaluate-counterfactuals``: the Latent Shift frames judged as counterfactuals, per frame mode.

For each embedded classifier and finding of :data:`TASKS`, every image of a split (default: test) of the
shared chest X-ray data is explained with the default options in each frame mode (``frames_from``:
``input``, frames x + D(z0 + λ·g) − D(z0); ``reconstruction``, the paper's D(z0 + λ·g)). A true positive
(label 1, prediction ≥ threshold) is judged on its curtail side, a true negative on its exaggerate side;
the side's counterfactual frame is the one that went furthest (``ShiftResult.counterfactual_index``).

* validity: a frame of that side within the pixel budget crosses the threshold (below it curtailing, at or
  above it exaggerating), the rule the model cards use;
* proximity: mean |counterfactual − input| in pixel units ([-1024, 1024]), and sum|·| / sum|input|;
* sharpness: variance of the Laplacian of the counterfactual over the input's (1.0 = as sharp);
* realism: Fréchet distance between the counterfactual frames and all real images of the split (same
  source), in the feature space of the embedded domain guard (:class:`~latentshift.models.demo.DomainGuardNet`
  ``features``: the spatial mean and standard deviation of its last block, 128 values). It is the one network
  here trained on both populations that is neither the classifier nor the autoencoder being judged, and its
  standard deviations see texture; it was trained with some blur augmentation, so it understates blur, which
  the sharpness ratio measures directly. The inputs' own distance is printed as the floor;
* where it changes: the share of |counterfactual − λ = 0 frame| inside the NIH boxes of the finding, where
  the image has them (beside the boxes' share of the image, what a change spread evenly would score).

Every figure has a bootstrap 95 % interval over the images (2,000 resamples, seed 0).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import linalg, ndimage

from latentshift.core.shift import ShiftOptions
from latentshift.options import FRAME_SOURCES, ExplainOptions
from latentshift.pipeline import Pipeline
from ..training.data import CXRData, load_data, resolve_data_dir, to_model_range

logger = logging.getLogger(__name__)

N_BOOTSTRAP = 2000
FIGURE_CASES = 4


@dataclass(frozen=True)
class Task:
    """One classifier and one of its findings, judged on the images of one source."""

    classifier_id: str
    finding: str
    source: str  # "kermany" (pediatric) or "nih" (adult)

    @property
    def name(self) -> str:
        return f"{self.classifier_id}-{self.finding.lower()}"


TASKS = (Task("demo-pneumonia-classifier", "Pneumonia", "kermany"),
         Task("demo-adult-cardiomegaly", "Cardiomegaly", "nih"),
         Task("demo-adult-cardiomegaly", "Effusion", "nih"))


@dataclass
class Case:
    """One judged image in one frame mode."""

    row: int  # in labels.csv
    role: str  # "tp" (curtail judged) or "tn" (exaggerate judged)
    valid: bool
    proximity: float
    relative_proximity: float
    sharpness: float
    counterfactual: np.ndarray
    box_share: float | None = None
    box_area: float | None = None
    zero_difference: tuple[float, float] = (0.0, 0.0)  # max |λ = 0 frame − input|, |p(λ = 0) − p(input)|
    frames: dict = field(default_factory=dict)  # for the figure: input, zero, curtailed, exaggerated


def labels_of(data: CXRData, rows: list[int], task: Task) -> np.ndarray:
    """0/1 label of ``task.finding`` per row (Kermany: the label column; NIH: the finding list)."""
    if task.source == "kermany":
        return np.array([int(data.rows[i]["label"] == task.finding.lower()) for i in rows])
    return np.array([int(task.finding in data.rows[i]["finding"].split("|")) for i in rows])


def box_mask(data_dir: Path, row: dict, finding: str) -> np.ndarray | None:
    """The NIH box mask (224, 224) bool of ``finding`` for a labels.csv row, or None."""
    if not row.get("mask") or row.get("mask_label") != finding:
        return None
    from PIL import Image

    return np.asarray(Image.open(data_dir / row["mask"]).convert("L")) > 0


def laplacian_variance(image: np.ndarray) -> float:
    return float(ndimage.laplace(image.astype(np.float64)).var())


def judge_case(result, x: np.ndarray, role: str, threshold: float, pixel_budget: float,
               mask: np.ndarray | None, row: int) -> Case:
    """Validity, proximity, sharpness and box share of one explanation's judged side."""
    side = "curtail" if role == "tp" else "exaggerate"
    on_side = (result.lambdas < 0 if side == "curtail" else result.lambdas > 0)
    within = on_side & (result.pixel_change <= pixel_budget + 1e-9)
    preds = result.preds[within]
    valid = bool(preds.size) and bool(preds.min() < threshold if side == "curtail" else preds.max() >= threshold)
    index = result.counterfactual_index(side)
    counterfactual = result.frames[result.zero_index if index is None else index, 0].numpy()
    change = np.abs(counterfactual - result.frames[result.zero_index, 0].numpy())
    case = Case(row, role, valid, float(np.abs(counterfactual - x).mean()),
                float(np.abs(counterfactual - x).sum() / max(np.abs(x).sum(), 1e-9)),
                laplacian_variance(counterfactual) / max(laplacian_variance(x), 1e-12), counterfactual)
    if mask is not None and change.sum() > 0:
        case.box_share, case.box_area = float(change[mask].sum() / change.sum()), float(mask.mean())
    return case


def frechet_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F)."""
    mu1, mu2 = first.mean(0), second.mean(0)
    cov1, cov2 = np.cov(first, rowvar=False), np.cov(second, rowvar=False)
    eps = 1e-6 * np.eye(cov1.shape[0])
    root = linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1 + cov2 - 2 * np.real(root)))


def guard_features(guard_model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, F) domain-guard features of images (N, H, W) in [-1024, 1024]."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32))
            out.append(guard_model.features(batch[:, None]).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def bootstrap(values, statistic=np.mean, n: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """(statistic, 2.5th, 97.5th percentile of the statistic over ``n`` resamples of ``values``)."""
    values = np.asarray(values)
    if len(values) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    draws = [statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(n)]
    return float(statistic(values)), float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def summarize(cases: list[Case], features: np.ndarray, real_features: np.ndarray) -> dict:
    """Every figure of one task and mode, each (value, low, high)."""
    by_role = {role: [c for c in cases if c.role == role] for role in ("tp", "tn")}
    boxed = [c for c in cases if c.box_share is not None]
    rng_fd = np.random.default_rng(0)
    fd_draws = [frechet_distance(features[rng_fd.integers(0, len(features), len(features))], real_features)
                for _ in range(200)] if len(features) > 2 else []
    fd = frechet_distance(features, real_features) if len(features) > 2 else float("nan")
    return {
        "curtail_valid": [sum(c.valid for c in by_role["tp"]), len(by_role["tp"]),
                          *bootstrap([c.valid for c in by_role["tp"]])],
        "exaggerate_valid": [sum(c.valid for c in by_role["tn"]), len(by_role["tn"]),
                             *bootstrap([c.valid for c in by_role["tn"]])],
        "proximity": bootstrap([c.proximity for c in cases]),
        "relative_proximity": bootstrap([c.relative_proximity for c in cases]),
        "sharpness": bootstrap([c.sharpness for c in cases]),
        "frechet": (fd, *(np.percentile(fd_draws, [2.5, 97.5]) if fd_draws else (float("nan"),) * 2)),
        "box_share": bootstrap([c.box_share for c in boxed]),
        "box_area": bootstrap([c.box_area for c in boxed]),
        "boxed_cases": len(boxed),
        "zero_frame_max_difference": max((c.zero_difference[0] for c in cases), default=0.0),
        "zero_pred_max_difference": max((c.zero_difference[1] for c in cases), default=0.0),
    }


@dataclass
class TaskRun:
    """Everything computed for one task: per mode its cases and seconds, and the real features."""

    task: Task
    threshold: float
    cases: dict[str, list[Case]]
    seconds: dict[str, float]
    real_features: np.ndarray
    input_features: np.ndarray
    summaries: dict[str, dict] = field(default_factory=dict)


def run_task(task: Task, data: CXRData, data_dir: Path, split: str, limit: int | None,
             modes=FRAME_SOURCES, device: str = "cpu") -> TaskRun:
    """Explain every true positive and true negative of ``task`` on ``split`` in each mode and judge it."""
    pipeline = Pipeline.get(task.classifier_id, None, device=device)
    rows = data.select(split=split, source=task.source)
    target, threshold = pipeline.target_index(task.finding, {})[1], pipeline.thresholds[task.finding]
    x_all = to_model_range(data.images[rows]).numpy().reshape(len(rows), *data.images.shape[1:])
    probs = _predictions(pipeline, x_all, target)
    labels = labels_of(data, rows, task)
    roles = np.where((labels == 1) & (probs >= threshold), "tp", np.where((labels == 0) & (probs < threshold), "tn", ""))
    judged = [n for n in range(len(rows)) if roles[n]][:limit]
    figure = set(_figure_cases(data, rows, roles, task, data_dir))
    guard = pipeline.guard.model
    run = TaskRun(task, float(threshold), {}, {}, guard_features(guard, x_all),
                  guard_features(guard, x_all[judged]))
    for mode in modes:
        run.cases[mode], run.seconds[mode] = _judge_all(pipeline, data, data_dir, rows, judged, roles, probs,
                                                        x_all, target, threshold, mode, figure, task)
        features = guard_features(guard, np.stack([c.counterfactual for c in run.cases[mode]])) \
            if run.cases[mode] else np.zeros((0, 1))
        run.summaries[mode] = summarize(run.cases[mode], features, run.real_features)
        logger.info("%s %s: %s", task.name, mode, json.dumps(run.summaries[mode], default=float)[:300])
    return run


def _predictions(pipeline: Pipeline, x_all: np.ndarray, target: int) -> np.ndarray:
    with torch.inference_mode():
        logits = torch.cat([pipeline.classifier(torch.from_numpy(x_all[s:s + 64])[:, None])
                            for s in range(0, len(x_all), 64)])
    return torch.sigmoid(logits[:, target]).numpy()


def _figure_cases(data: CXRData, rows: list[int], roles: np.ndarray, task: Task, data_dir: Path) -> list[int]:
    """Positions (into ``rows``) of the figure's cases: true positives, those with a box of the finding first."""
    tps = [n for n in range(len(rows)) if roles[n] == "tp"]
    boxed = [n for n in tps if box_mask(data_dir, data.rows[rows[n]], task.finding) is not None]
    return (boxed + [n for n in tps if n not in boxed])[:FIGURE_CASES]


def _judge_all(pipeline, data, data_dir, rows, judged, roles, probs, x_all, target, threshold, mode,
               figure, task) -> tuple[list[Case], float]:
    options = ExplainOptions(target=task.finding, frames_from=mode)
    cases, started = [], time.perf_counter()
    for n in judged:
        x = torch.from_numpy(x_all[n:n + 1])[:, None]
        with pipeline._computing():
            [result] = pipeline.explainer.attribute(x, target, ShiftOptions.from_explain(options),
                                                    initial_preds=[float(probs[n])])
        case = judge_case(result, x_all[n], str(roles[n]), threshold, options.pixel_budget,
                          box_mask(data_dir, data.rows[rows[n]], task.finding), rows[n])
        case.zero_difference = (float(np.abs(result.frames[result.zero_index, 0].numpy() - x_all[n]).max()),
                                abs(result.zero_pred - float(probs[n])))
        if n in figure:
            ends = [result.counterfactual_index(s) for s in ("curtail", "exaggerate")]
            shown = [result.zero_index if i is None else i for i in ends]
            case.frames = {"name": Path(data.rows[rows[n]]["file"]).stem, "input": x_all[n],
                           "zero": result.frames[result.zero_index, 0].numpy(),
                           "curtailed": result.frames[shown[0], 0].numpy(),
                           "exaggerated": result.frames[shown[1], 0].numpy(),
                           "preds": (float(probs[n]), result.zero_pred, *(float(result.preds[i]) for i in shown))}
        cases.append(case)
    return cases, (time.perf_counter() - started) / max(len(judged), 1)


def evaluate_counterfactuals(data_dir=None, split: str = "test", limit: int | None = None,
                             tasks=TASKS, modes=FRAME_SOURCES, device: str = "cpu") -> list[TaskRun]:
    """Run every task of ``tasks`` (see :func:`run_task`)."""
    data_dir = resolve_data_dir(data_dir)
    data = load_data(data_dir, splits=(split,))
    return [run_task(task, data, data_dir, split, limit, modes, device) for task in tasks]
