"""How much a classifier's prediction moves under changes that carry no finding.

``python -m latentshift_research.tools.prediction_jitter [--data DIR] [--split test]`` re-encodes every image of
the split as JPEG (quality 90), shifts it by 2 pixels and changes its contrast by ±3 %, and prints the
median and 95th percentile of |Δp| for each embedded classifier and finding, over all images and over
those whose prediction lies within 0.15 of the threshold. The outcome sentence's crossing margin
(:data:`latentshift.io.describe.CROSSING_MARGIN`) is chosen from these figures.
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np
import torch

from latentshift.pipeline import Pipeline
from ..training.data import load_data, to_model_range

TASKS = (("demo-pneumonia-classifier", "kermany", "Pneumonia"),
         ("demo-adult-cardiomegaly", "nih", "Cardiomegaly"),
         ("demo-adult-cardiomegaly", "nih", "Effusion"))
NEAR = 0.15


def variants(image: np.ndarray) -> list[np.ndarray]:
    """Changes of a uint8 image (H, W) that carry no finding: JPEG q90, a 2-px shift, ±3 % contrast."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    jpeg = np.asarray(Image.open(buffer).convert("L"))
    scaled = [np.clip(image.astype(np.float32) * f, 0, 255).round().astype(np.uint8) for f in (1.03, 0.97)]
    return [jpeg, np.roll(image, 2, axis=1), *scaled]


def jitter(classifier, images: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(p (N,), |Δp| (N, 4)) of ``target`` for uint8 images (N, H, W) and their :func:`variants`."""
    preds, deltas = [], []
    with torch.inference_mode():
        for image in images:
            batch = torch.from_numpy(np.stack([image, *variants(image)]))
            p = torch.sigmoid(classifier(to_model_range(batch)))[:, target].double().numpy()
            preds.append(p[0])
            deltas.append(np.abs(p[1:] - p[0]))
    return np.array(preds), np.array(deltas)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentshift_research.tools.prediction_jitter", description=__doc__)
    parser.add_argument("--data", default=None, help="the chest X-ray folder (default: shared/data/cxr)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    data = load_data(args.data, splits=(args.split,))
    for classifier_id, source, finding in TASKS:
        pipeline = Pipeline.get(classifier_id, None)
        target, threshold = pipeline.target_index(finding, {})[1], pipeline.thresholds[finding]
        images = data.images[data.select(source=source)].numpy()
        preds, deltas = jitter(pipeline.classifier, images, target)
        near = deltas[np.abs(preds - threshold) < NEAR].ravel()
        print(f"{classifier_id} {finding} (threshold {threshold:.2f}, {len(images)} images): |Δp| median "
              f"{np.median(deltas):.4f}, p95 {np.percentile(deltas, 95):.4f}; within {NEAR} of the threshold "
              f"({near.size // 4} images): median {np.median(near):.4f}, p95 {np.percentile(near, 95):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
