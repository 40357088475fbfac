"""Training data: the chest X-ray folder preloaded as uint8 tensors, and augmentation.

Data: the folder described in ``shared/data/README-cxr.md`` (224×224 8-bit PNGs and
``labels.csv`` with a patient-level ``split`` column). Pixel p in 0..255 becomes
p/255·2048 − 1024 (:func:`to_model_range`).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from latentshift.errors import LatentShiftError

logger = logging.getLogger(__name__)


DATA_ENV = "LATENTSHIFT_DATA"
#: Where the chest X-ray folder is looked for when neither --data nor $LATENTSHIFT_DATA is given:
#: ``shared/data/cxr`` in the current folder or above it (a checkout sits beside ``shared/``).
DATA_SEARCH = ("shared/data/cxr", "../shared/data/cxr", "../../shared/data/cxr")


def default_data_dir() -> Path:
    """The first of :data:`DATA_SEARCH` (from the current folder) that holds labels.csv, else the first."""
    for candidate in DATA_SEARCH:
        if (Path(candidate) / "labels.csv").is_file():
            return Path(candidate).resolve()
    return Path(DATA_SEARCH[0])


@dataclass
class CXRData:
    """Preloaded images (uint8, (N, 224, 224)) and their labels.csv rows."""

    images: torch.Tensor
    rows: list[dict[str, str]]

    def select(self, *, split: str | None = None, source: str | None = None,
               labels: tuple[str, ...] | None = None) -> list[int]:
        return [i for i, r in enumerate(self.rows)
                if (split is None or r["split"] == split)
                and (source is None or r["source"] == source)
                and (labels is None or r["label"] in labels)]


def resolve_data_dir(path: str | os.PathLike | None) -> Path:
    data = Path(path or os.environ.get(DATA_ENV) or default_data_dir())
    if not (data / "labels.csv").is_file():
        raise LatentShiftError(f"no labels.csv in {data}; pass --data to the chest X-ray folder "
                               "(see shared/data/README-cxr.md)")
    return data


def load_data(data_dir: str | os.PathLike | None, per_group: int | None = None,
              splits: tuple[str, ...] | None = None) -> CXRData:
    """Read labels.csv and its PNGs; with ``per_group``, only the first N rows of each
    (split, source, label) group (quick test runs); with ``splits``, only those splits' rows."""
    from PIL import Image

    data_dir = resolve_data_dir(data_dir)
    with open(data_dir / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if splits is None or r["split"] in splits]
    if per_group:
        counts: dict[tuple, int] = {}
        kept = []
        for r in rows:
            key = (r["split"], r["source"], r["label"])
            counts[key] = counts.get(key, 0) + 1
            if counts[key] <= per_group:
                kept.append(r)
        rows = kept
    images = torch.empty((len(rows), 224, 224), dtype=torch.uint8)
    for i, row in enumerate(rows):
        with Image.open(data_dir / row["file"]) as img:
            arr = np.asarray(img.convert("L"), dtype=np.uint8)
        if arr.shape != (224, 224):
            raise LatentShiftError(f"{row['file']} is {arr.shape}, expected 224×224")
        images[i] = torch.from_numpy(arr.copy())
    logger.info("loaded %d images from %s", len(rows), data_dir)
    return CXRData(images, rows)


def limit_indices(indices: list[int], limit: int | None, labels: list[int] | None = None) -> list[int]:
    """First ``limit`` indices; with labels, about half from each class."""
    if not limit or len(indices) <= limit:
        return indices
    if labels is None:
        return indices[:limit]
    pos = [i for i, y in zip(indices, labels) if y == 1]
    neg = [i for i, y in zip(indices, labels) if y == 0]
    n_pos = min(len(pos), max(1, limit // 2))
    return sorted(pos[:n_pos] + neg[:limit - n_pos])


def to_model_range(u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [-1024, 1024]."""
    return (u8.float() / 255.0 * 2048.0 - 1024.0).unsqueeze(1)


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """[-1024, 1024] -> [0, 1], clamped."""
    return ((x + 1024.0) / 2048.0).clamp(0.0, 1.0)


# ------------------------------------------------------------------ augmentation

def intensity_jitter(y: torch.Tensor, gen: torch.Generator, contrast: float, brightness: float,
                      gamma: float) -> torch.Tensor:
    """y in [0, 1], (N, 1, H, W): random contrast, brightness and gamma per image."""
    n = y.shape[0]
    shape = (n, 1, 1, 1)
    c = 1.0 + (torch.rand(shape, generator=gen) * 2 - 1) * contrast
    b = (torch.rand(shape, generator=gen) * 2 - 1) * brightness
    g = torch.exp((torch.rand(shape, generator=gen) * 2 - 1) * math.log(1.0 + gamma))
    y = ((y - 0.5) * c + 0.5 + b).clamp(0.0, 1.0)
    return y.clamp_min(1e-6) ** g


def random_affine(n: int, gen: torch.Generator, zoom_range: float = 0.25, max_shift: float = 0.12) -> torch.Tensor:
    """(n, 2, 3) affine matrices for ``F.affine_grid``: rotation ±10°, scale 0.9 … 0.9 + zoom_range,
    shift ±max_shift in grid units (2 = the full width); drawn from ``gen`` in that order."""
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(n, generator=gen) * zoom_range
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def _gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur(y: torch.Tensor, sigma: float) -> torch.Tensor:
    k = _gaussian_kernel(sigma, max(1, int(math.ceil(2 * sigma))))
    r = k.numel() // 2
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def augment_classifier(u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Training augmentation of the classifier; uint8 (N, H, W) -> model range.

    Random affine (rotation ±10°, scale 0.9–1.15, shift ±6 %, border padding so no
    black frame appears), contrast ±25 %, brightness ±10 %, gamma 0.7–1.4 and, for
    a third of the images, a Gaussian blur (σ 0.5–1.5 px) so the classifier does not
    depend on the fine texture an autoencoder cannot reproduce.
    """
    y = u8.float().unsqueeze(1) / 255.0
    n = y.shape[0]
    theta = random_affine(n, gen)
    grid = F.affine_grid(theta, list(y.shape), align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = intensity_jitter(y, gen, contrast=0.25, brightness=0.10, gamma=0.4)
    blurred = torch.rand(n, generator=gen) < 1 / 3
    if blurred.any():
        sigma = 0.5 + float(torch.rand(1, generator=gen)) * 1.0
        y[blurred] = blur(y[blurred], sigma)
    return y * 2048.0 - 1024.0


def mixup_batch(x: torch.Tensor, y: torch.Tensor, alpha: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., ICLR 2018): blend each image with a random partner of the batch.

    x (N, 1, H, W), y (N, 1) labels in [0, 1]; λ ~ Beta(alpha, alpha) per image (drawn from
    torch's global generator, seeded by the training seed), partner order from ``gen``.
    Returns (λ·x + (1 − λ)·x[partner], λ·y + (1 − λ)·y[partner]).
    """
    lam = torch.distributions.Beta(alpha, alpha).sample((x.shape[0], 1)).to(x.device)
    partner = torch.randperm(x.shape[0], generator=gen).to(x.device)
    weight = lam.view(-1, 1, 1, 1)
    return weight * x + (1 - weight) * x[partner], lam * y + (1 - lam) * y[partner]


def augment_autoencoder(u8: torch.Tensor, gen: torch.Generator, crop: int) -> torch.Tensor:
    """Random ``crop``×``crop`` crops with mild intensity jitter; uint8 -> model range."""
    n, h, w = u8.shape
    out = torch.empty((n, 1, crop, crop))
    ys = torch.randint(0, h - crop + 1, (n,), generator=gen)
    xs = torch.randint(0, w - crop + 1, (n,), generator=gen)
    for i in range(n):
        out[i, 0] = u8[i, ys[i]:ys[i] + crop, xs[i]:xs[i] + crop].float()
    y = intensity_jitter(out / 255.0, gen, contrast=0.1, brightness=0.05, gamma=0.15)
    return y * 2048.0 - 1024.0


# ----------------------------------------------------------------------- metrics

