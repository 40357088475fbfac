"""Training recipe of the embedded domain guard (``demo-domain-guard``).

Command::

    python -m latentshift_research train guard --data ../shared/data/cxr --out latentshift/embedded

The model (:class:`latentshift.models.demo.DomainGuardNet`) has three outputs:
"pediatric" (Kermany, ages 1-5), "adult" (NIH ChestX-ray14) frontal chest X-ray and
"not_cxr". The two chest X-ray classes come from the *train* split of the shared data
(``source`` column); "not_cxr" comes from synthetic images made here (noise, rendered
documents, photo-like scenes and textures, CT-like axial slices, lateral-like chest
views). Every synthetic image goes through :func:`latentshift.io.imaging.load_xray` (PNG
bytes in, so RGB is converted to luma and non-square images centre-cropped exactly as an
upload is). The epoch with the best validation loss is kept. Then
:func:`calibrate` fits the model's feature statistics (class means and shared precision
of the pooled features of the un-augmented *train* X-rays, for the Mahalanobis
feature distance) and sets both warning thresholds on the *validation* chest X-rays:
p(not_cxr) ≥ max(0.5, the value that at most 0.5 % of val X-rays reach)
(:func:`choose_threshold`), and feature distance ≥ 1.5 × the largest val distance
(:func:`choose_distance_threshold`). The held-out cases of :mod:`.synthetic_cases`
and the test split decide nothing; they are only reported (``evaluate``), next to the
old reconstruction-error check of the demo autoencoder.

Augmentation (chest X-rays and synthetic images alike, so it carries no class
information): random affine (rotation ±10°, zoom 0.9-1.45, shift ±8 %), contrast ±30 %,
brightness ±12 %, gamma 0.6-1.6, and a Gaussian blur for a third of the images. The zoom
reaches 1.45 because Kermany images are wider than NIH's and their centre crop cuts the
lateral chest wall: zooming NIH images in hides that cue.
"""

from __future__ import annotations

import io
import logging
import math
import string
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch.nn import functional as F

from latentshift.io.imaging import load_xray
from latentshift.models.demo import GUARD_CLASSES, DomainGuardNet
from latentshift.weights import Manifest, load_model, sha256_of
from latentshift.weights.manifest import PACKAGE_ROOT
from .data import CXRData, blur, from_model_range, intensity_jitter, load_data, random_affine, to_model_range
from .metrics import roc_auc
from .train import save_model

#: The checkout this recipe runs in (held-out test generators live in its tests/ folder).

logger = logging.getLogger(__name__)

GUARD_ID = "demo-domain-guard"
GUARD_KWARGS = {"widths": [8, 16, 32, 48, 64]}
POPULATION_OF_SOURCE = {"kermany": "pediatric", "nih": "adult"}
#: Fonts used to render training documents (the held-out test documents use others).
TRAIN_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf")
NEGATIVE_KINDS = ("noise", "document", "photo_like", "texture", "ct_like", "lateral_like")
#: Largest share of validation chest X-rays the not-a-chest-X-ray warning may flag.
TARGET_VAL_FALSE_ALARMS = 0.005


# ------------------------------------------------------------ synthetic negatives

def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (y, x) in [-1, 1] of an (h, w) image."""
    return np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _finish(img: np.ndarray, rng: np.random.Generator, blur=(0.5, 2.0), noise=(2.0, 10.0)) -> np.ndarray:
    """Blur (σ px), add Gaussian noise (σ in grey levels) and clip an (H, W) float array to uint8."""
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(img.astype(np.float32), rng.uniform(*blur))
    img = img + rng.normal(0, rng.uniform(*noise), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _size(rng: np.random.Generator, low: int = 224, high: int = 640, max_aspect: float = 1.5) -> tuple[int, int]:
    h = int(rng.integers(low, high))
    return h, int(h * rng.uniform(1.0, max_aspect)) if rng.random() < 0.5 else h


def make_noise(rng: np.random.Generator) -> np.ndarray:
    """Uniform, Gaussian, RGB, smoothed or salt-and-pepper noise; uint8 (H, W) or (H, W, 3)."""
    from scipy.ndimage import gaussian_filter

    h, w = _size(rng)
    kind = rng.integers(0, 5)
    if kind == 0:
        lo = rng.uniform(0, 120)
        return rng.uniform(lo, rng.uniform(lo + 40, 255), (h, w)).astype(np.uint8)
    if kind == 1:
        return np.clip(rng.normal(rng.uniform(60, 190), rng.uniform(10, 80), (h, w)), 0, 255).astype(np.uint8)
    if kind == 2:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == 3:
        field = gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(0.7, 6.0))
        field = (field - field.mean()) / (field.std() + 1e-6)
        return np.clip(128 + field * rng.uniform(20, 70), 0, 255).astype(np.uint8)
    img = np.full((h, w), rng.uniform(60, 190))
    mask = rng.random((h, w))
    p = rng.uniform(0.02, 0.3)
    img[mask < p / 2], img[mask > 1 - p / 2] = 0, 255
    return img.astype(np.uint8)


def _word(rng: np.random.Generator) -> str:
    letters = string.ascii_lowercase
    word = "".join(rng.choice(list(letters), int(rng.integers(1, 10))))
    return word.capitalize() if rng.random() < 0.15 else word


def _font(rng: np.random.Generator, fonts, size: int):
    name = fonts[int(rng.integers(0, len(fonts)))]
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size=size)


def make_document(rng: np.random.Generator, fonts=TRAIN_FONTS) -> np.ndarray:
    """A page of rendered text (lines of pseudo-words, headings, rules) on white; uint8 (H, W)."""
    h = int(rng.integers(300, 900))
    w = int(h * rng.uniform(0.7, 1.4))
    paper = int(rng.integers(215, 256))
    page = Image.new("L", (w, h), paper)
    draw = ImageDraw.Draw(page)
    size = int(rng.integers(9, 30))
    margin = int(rng.integers(5, w // 8))
    y = int(rng.integers(5, h // 6))
    while y < h - size:
        font = _font(rng, fonts, int(size * (1.6 if rng.random() < 0.1 else 1.0)))
        text = " ".join(_word(rng) for _ in range(int(rng.integers(3, 25))))
        draw.text((margin, y), text, fill=int(rng.integers(0, 90)), font=font)
        if rng.random() < 0.05:
            draw.line((margin, y + size * 1.4, w - margin, y + size * 1.4), fill=0, width=1)
        y += int(size * rng.uniform(1.2, 2.2))
    arr = np.asarray(page, dtype=np.float32)
    return _finish(arr, rng, blur=(0.0, 0.8), noise=(0.0, 6.0))


def _shape_layer(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
    x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
    kind = rng.integers(0, 3)
    if kind == 0:
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif kind == 1:
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    else:
        points = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(int(rng.integers(3, 7)))]
        draw.polygon(points, fill=colour)


def make_photo_like(rng: np.random.Generator) -> np.ndarray:
    """A colour 'scene': gradient sky/ground and random shapes, blurred; uint8 (H, W, 3)."""
    h, w = _size(rng)
    yy, xx = _grid(h, w)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    base = top[None, None] * ramp[..., None] + bottom[None, None] * (1 - ramp[..., None])
    image = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 16))):
        _shape_layer(draw, rng, w, h)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 3))))
    arr = np.asarray(image, dtype=np.float32) + rng.normal(0, rng.uniform(0, 8), (h, w, 1))
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_texture(rng: np.random.Generator) -> np.ndarray:
    """Gratings, checkerboards or thresholded blobs; uint8 (H, W)."""
    from scipy.ndimage import gaussian_filter

    h, w = _size(rng)
    yy, xx = _grid(h, w)
    kind = rng.integers(0, 3)
    if kind == 0:
        angle, freq = rng.uniform(0, math.pi), rng.uniform(3, 60)
        img = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6))
    elif kind == 1:
        cells = rng.uniform(2, 30)
        img = np.sign(np.sin(cells * xx * math.pi) * np.sin(cells * yy * math.pi))
    else:
        field = gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(2, 15))
        img = np.where(field > np.quantile(field, rng.uniform(0.3, 0.7)), 1.0, -1.0)
    img = 128 + img * rng.uniform(30, 127)
    return _finish(img, rng, blur=(0.0, 2.0), noise=(0.0, 15.0))


def make_ct_like(rng: np.random.Generator) -> np.ndarray:
    """An axial chest CT-like slice: body ellipse, dark lungs, spine, table; uint8 (H, W)."""
    s = int(rng.integers(256, 560))
    yy, xx = _grid(s, s)
    img = np.full((s, s), rng.uniform(0, 25))
    ry, rx = rng.uniform(0.45, 0.65), rng.uniform(0.75, 0.92)
    cy = rng.uniform(-0.1, 0.1)
    img[_ellipse(yy, xx, cy, 0, ry, rx)] = rng.uniform(80, 110)  # fat
    img[_ellipse(yy, xx, cy, 0, ry - 0.05, rx - 0.06)] = rng.uniform(115, 150)  # muscle
    for side in (-1, 1):
        lung = _ellipse(yy, xx, cy - 0.02, side * rx * rng.uniform(0.38, 0.5), ry * rng.uniform(0.65, 0.85),
                        rx * rng.uniform(0.3, 0.42))
        img[lung] = rng.uniform(5, 45)
        dots = lung & (rng.random((s, s)) < 0.002)
        img[dots] = rng.uniform(80, 160)
    img[_ellipse(yy, xx, cy - ry * 0.2, rng.uniform(-0.1, 0.15), ry * 0.35, rx * 0.22)] = rng.uniform(120, 160)
    spine_y = cy + ry * rng.uniform(0.5, 0.7)
    img[_ellipse(yy, xx, spine_y, 0, 0.09, 0.08)] = rng.uniform(200, 255)
    img[_ellipse(yy, xx, spine_y + 0.12, 0, 0.04, 0.035)] = rng.uniform(20, 60)
    img[_ellipse(yy, xx, spine_y - 0.05, rng.uniform(0.08, 0.14), 0.05, 0.05)] = rng.uniform(140, 190)  # aorta
    if rng.random() < 0.7:
        img[(np.abs(yy - (cy + ry + 0.08)) < 0.015) & (np.abs(xx) < 0.9)] = rng.uniform(120, 220)
    if rng.random() < 0.5:
        img[xx ** 2 + yy ** 2 > 1.0] = 0
    return _finish(img, rng, blur=(0.6, 2.5), noise=(2.0, 14.0))


def make_lateral_like(rng: np.random.Generator) -> np.ndarray:
    """A lateral chest view: body profile, one large lung field, spine behind, heart in front.

    uint8 (H, W); anterior on the left, or mirrored.
    """
    from scipy.ndimage import gaussian_filter

    h = int(rng.integers(256, 600))
    w = int(h * rng.uniform(0.8, 1.25))
    yy, xx = _grid(h, w)
    img = np.full((h, w), rng.uniform(0, 40))
    body = _ellipse(yy, xx, rng.uniform(0.1, 0.4), 0, rng.uniform(1.0, 1.4), rng.uniform(0.6, 0.85))
    img[body] = rng.uniform(110, 160)
    lung = _ellipse(yy, xx, rng.uniform(-0.15, 0.05), rng.uniform(-0.05, 0.1), rng.uniform(0.55, 0.75),
                    rng.uniform(0.4, 0.55))
    texture = gaussian_filter(rng.normal(0, 1, (h, w)), 3) * 25
    img[lung] = rng.uniform(40, 80) + texture[lung]
    spine_x = rng.uniform(0.45, 0.62) + 0.05 * np.sin(yy * rng.uniform(1, 3))
    spine = (np.abs(xx - spine_x) < rng.uniform(0.07, 0.11)) & body
    discs = np.sin(yy * rng.uniform(25, 40)) > -0.7
    img[spine & discs] = rng.uniform(190, 240)
    img[_ellipse(yy, xx, rng.uniform(0.2, 0.4), rng.uniform(-0.35, -0.15), rng.uniform(0.25, 0.35),
                 rng.uniform(0.25, 0.35))] = rng.uniform(120, 170)  # heart
    img[(yy > rng.uniform(0.45, 0.65) + 0.15 * xx ** 2) & body] = rng.uniform(150, 200)  # diaphragm / abdomen
    sternum_x = -rng.uniform(0.55, 0.7)
    img[(np.abs(xx - sternum_x) < 0.02) & (yy < 0.3) & body] = rng.uniform(170, 230)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return _finish(img, rng, blur=(1.0, 4.0), noise=(2.0, 12.0))


GENERATORS = {"noise": make_noise, "document": make_document, "photo_like": make_photo_like,
              "texture": make_texture, "ct_like": make_ct_like, "lateral_like": make_lateral_like}


def as_upload(arr: np.ndarray) -> np.ndarray:
    """What the app sees of a uint8 (H, W) or (H, W, 3) image: load_xray of its PNG, float32 (224, 224)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format="PNG", compress_level=1)
    return load_xray(buffer.getvalue()).pixels


def make_negatives(per_kind: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``per_kind`` synthetic images of every kind of :data:`NEGATIVE_KINDS`.

    Returns (float32 (N, 1, 224, 224) in [-1024, 1024], kind of each image).
    """
    rng = np.random.default_rng(seed)
    images, kinds = [], []
    for kind in NEGATIVE_KINDS:
        for _ in range(per_kind):
            images.append(as_upload(GENERATORS[kind](rng)))
            kinds.append(kind)
    return torch.from_numpy(np.stack(images)).unsqueeze(1), kinds


# ------------------------------------------------------------------ augmentation

def augment_guard(x: torch.Tensor, gen: torch.Generator, p: float = 0.8) -> torch.Tensor:
    """Random affine, contrast/brightness/gamma and blur for a share ``p`` of the images.

    x: float32 (N, 1, H, W) in [-1024, 1024]; returns the same shape and range.
    """
    y = from_model_range(x)
    n = y.shape[0]
    grid = F.affine_grid(random_affine(n, gen, zoom_range=0.55, max_shift=0.16), list(y.shape), align_corners=False)
    warped = F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)
    warped = intensity_jitter(warped, gen, contrast=0.3, brightness=0.12, gamma=0.6)
    blurred = torch.rand(n, generator=gen) < 1 / 3
    if blurred.any():
        warped[blurred] = blur(warped[blurred], 0.5 + float(torch.rand(1, generator=gen)) * 1.5)
    shape = (n, 1, 1, 1)
    keep = (torch.rand(n, generator=gen) >= p).view(shape)
    return torch.where(keep, y, warped) * 2048.0 - 1024.0


# ---------------------------------------------------------------------- training

def cxr_targets(data: CXRData, indices: list[int]) -> torch.Tensor:
    """Class index (GUARD_CLASSES order) of chest X-rays from their ``source`` column."""
    return torch.tensor([GUARD_CLASSES.index(POPULATION_OF_SOURCE[data.rows[i]["source"]]) for i in indices])


@torch.no_grad()
def predict(model: DomainGuardNet, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities (N, 3) of float32 images (N, 1, 224, 224) in [-1024, 1024]."""
    model.eval()
    out = [torch.softmax(model(x[s:s + batch_size]), 1) for s in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(GUARD_CLASSES)))


def _epoch(model, opt, sched, x_all, y_all, weights, gen, batch_size) -> float:
    model.train()
    perm = torch.randperm(len(x_all), generator=gen)
    total = 0.0
    for start in range(0, len(perm) - batch_size + 1, batch_size):
        idx = perm[start:start + batch_size]
        x = augment_guard(x_all[idx], gen)
        loss = F.cross_entropy(model(x), y_all[idx], weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
    return total / len(perm)


def train_guard_model(data: CXRData, *, epochs: int = 8, per_kind: int = 350, seed: int = 0,
                      batch_size: int = 64, lr: float = 3e-3) -> tuple[DomainGuardNet, dict]:
    """Train :class:`DomainGuardNet` on train-split X-rays plus synthetic negatives.

    Returns the model of the epoch with the lowest validation loss (val-split X-rays plus
    ``per_kind // 5`` fresh synthetic images per kind) and the training history.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = data.select(split="train"), data.select(split="val")
    neg_x, _ = make_negatives(per_kind, seed=seed + 1000)
    val_neg_x, _ = make_negatives(max(per_kind // 5, 1), seed=seed + 2000)
    not_cxr = GUARD_CLASSES.index("not_cxr")
    x_all = torch.cat([to_model_range(data.images[train_idx]), neg_x])
    y_all = torch.cat([cxr_targets(data, train_idx), torch.full((len(neg_x),), not_cxr)])
    x_val = torch.cat([to_model_range(data.images[val_idx]), val_neg_x])
    y_val = torch.cat([cxr_targets(data, val_idx), torch.full((len(val_neg_x),), not_cxr)])
    counts = torch.bincount(y_all, minlength=len(GUARD_CLASSES)).float()
    weights = counts.sum() / (len(counts) * counts)
    model = DomainGuardNet(widths=GUARD_KWARGS["widths"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x_all) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    logger.info("guard: %d train images (%s per class), %d val, %d epochs, %d parameters", len(x_all),
                counts.tolist(), len(x_val), epochs, sum(p.numel() for p in model.parameters()))
    best, best_state, history, t0 = math.inf, None, [], time.time()
    for epoch in range(1, epochs + 1):
        train_loss = _epoch(model, opt, sched, x_all, y_all, weights, gen, batch_size)
        probs = torch.from_numpy(predict(model, x_val))
        val_loss = float(F.nll_loss(probs.clamp_min(1e-8).log(), y_val, weight=weights))
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "elapsed_s": round(time.time() - t0, 1)})
        logger.info("guard epoch %d/%d: train loss %.4f, val loss %.4f (%.0f s)", epoch, epochs,
                    train_loss, val_loss, time.time() - t0)
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), {"history": history, "best_val_loss": best, "train_seconds": round(time.time() - t0, 1),
                          "n_train": {c: int(n) for c, n in zip(GUARD_CLASSES, counts.tolist())}}


def choose_threshold(p_not_cxr_val: np.ndarray, target: float = TARGET_VAL_FALSE_ALARMS) -> float:
    """Warning threshold on p(not_cxr): at least 0.5, and high enough that at most a share
    ``target`` of the validation chest X-rays (probabilities (N,)) reach it."""
    p = np.sort(np.asarray(p_not_cxr_val, dtype=np.float64))[::-1]
    allowed = int(math.floor(target * len(p)))
    above = p[allowed] if allowed < len(p) else 0.0
    return float(max(0.5, min(0.999, above + 1e-4)))


# -------------------------------------------------------------------- evaluation

def bootstrap_ci(y: np.ndarray, score: np.ndarray, metric, n: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of ``metric(y, score)`` over resampled images."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) == 2:
            values.append(metric(y[idx], score[idx]))
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def population_report(probs: np.ndarray, is_adult: np.ndarray) -> dict:
    """Pediatric vs adult on chest X-rays: probs (N, 3), is_adult (N,) bool.

    Score = p(adult) / (p(pediatric) + p(adult)); decision at 0.5 (what the guard uses).
    """
    score = probs[:, 1] / np.clip(probs[:, 0] + probs[:, 1], 1e-12, None)
    y = np.asarray(is_adult).astype(int)

    def accuracy(yy, ss):
        return float(((ss > 0.5).astype(int) == yy).mean())

    return {"n": int(len(y)), "n_adult": int(y.sum()), "accuracy": accuracy(y, score),
            "accuracy_ci95": bootstrap_ci(y, score, accuracy), "auc": roc_auc(y, score),
            "auc_ci95": bootstrap_ci(y, score, roc_auc),
            "pediatric_called_adult": int(((score > 0.5) & (y == 0)).sum()),
            "adult_called_pediatric": int(((score <= 0.5) & (y == 1)).sum())}


def _cue_transforms() -> dict:
    """Test-time changes of (N, 1, H, W) model-range images, to see what the model keys on."""
    from skimage.exposure import equalize_hist

    def equalise(x):
        u = ((x.numpy() + 1024) / 2048).clip(0, 1)
        return torch.from_numpy(np.stack([equalize_hist(im) for im in u]).astype(np.float32)) * 2048 - 1024

    def zoom(x):  # centre 78 % (what a 1.3× wider original loses to the centre crop)
        c = int(round(x.shape[-1] * 0.11))
        return F.interpolate(x[..., c:-c, c:-c], size=x.shape[-2:], mode="bilinear", align_corners=False)

    def blur(x):
        return augment_guard_blur(x, 3.0)

    return {"histogram_equalised": equalise, "centre_zoom_1.28x": zoom, "blur_sigma3": blur,
            "flipped_left_right": lambda x: x.flip(-1), "downsampled_to_32px": lambda x: F.interpolate(
                F.interpolate(x, size=32, mode="area"), size=x.shape[-2:], mode="bilinear", align_corners=False)}


def augment_guard_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (σ px) of (N, 1, H, W) images."""
    radius = int(math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def cue_report(model: DomainGuardNet, x: torch.Tensor, is_adult: np.ndarray) -> dict:
    """Population accuracy/AUC of test X-rays after each change of :func:`_cue_transforms`."""
    out = {}
    for name, transform in _cue_transforms().items():
        rep = population_report(predict(model, transform(x)), is_adult)
        out[name] = {"accuracy": rep["accuracy"], "auc": rep["auc"]}
    return out


def load_heldout_cases(seeds: int = 30) -> dict[str, list[np.ndarray]]:
    """The held-out non-X-ray cases of :mod:`latentshift_research.training.synthetic_cases`: kind -> uint8 images.

    Noise kinds ("noise/<name>") get ``seeds`` seeds each, generated kinds ``seeds`` seeds;
    every scikit-image picture ("skimage/<kind>") counts three times: as is, mirrored, and
    its central 70 %.
    """
    from . import synthetic_cases as cases

    out: dict[str, list[np.ndarray]] = {}
    for name, make in cases.NOISE_CASES.items():
        out[f"noise/{name}"] = [make(seed) for seed in range(seeds)]
    for name, make in cases.GENERATED_CASES.items():
        out[name] = [make(seed) for seed in range(seeds)]
    for kind, img in cases.skimage_photos().values():
        h, w = img.shape[:2]
        crop = img[int(h * 0.15):int(h * 0.85), int(w * 0.15):int(w * 0.85)]
        out.setdefault(f"skimage/{kind}", []).extend([img, img[:, ::-1], crop])
    return out


@torch.no_grad()
def reconstruction_errors(autoencoder, x: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """The pipeline's old check: mean |x − x̂| / 2048 per image of x (N, 1, 224, 224)."""
    out = []
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        rec = autoencoder.decode(autoencoder.encode(xb)).clamp(-1024.0, 1024.0)
        out.append(((rec - xb).abs().mean(dim=(1, 2, 3)) / 2048.0).numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def fit_feature_stats(model: DomainGuardNet, x: torch.Tensor, y: torch.Tensor, shrink: float = 1e-3) -> None:
    """Set the model's feature means (2, F) and shared precision (F, F) from chest X-rays.

    x: (N, 1, 224, 224) un-augmented training X-rays; y: class index (0 pediatric, 1 adult).
    The pooled covariance is shrunk towards ``shrink`` × its mean variance on the diagonal.
    """
    model.eval()
    f = torch.cat([model.features(x[s:s + 64]) for s in range(0, len(x), 64)]).double()
    means = torch.stack([f[y == c].mean(0) for c in (0, 1)])
    centred = f - means[y]
    cov = centred.T @ centred / len(f)
    cov += shrink * torch.eye(len(cov), dtype=cov.dtype) * cov.diagonal().mean()
    model.feature_means.copy_(means.float())
    model.feature_precision.copy_(torch.linalg.inv(cov).float())


def choose_distance_threshold(distance_val: np.ndarray, margin: float = 1.5) -> float:
    """Warning threshold on the feature distance: ``margin`` × the largest distance of a
    validation chest X-ray (val has ~250 images, too few to set a quantile far in the tail)."""
    return float(margin * np.max(distance_val))


@torch.no_grad()
def scores(model: DomainGuardNet, x: torch.Tensor, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities (N, 3), feature distances (N,)) of images (N, 1, 224, 224)."""
    model.eval()
    probs, dist = [], []
    for s in range(0, len(x), batch_size):
        logits, distance = model.forward_with_distance(x[s:s + batch_size])
        probs.append(torch.softmax(logits, 1))
        dist.append(distance)
    return torch.cat(probs).numpy(), torch.cat(dist).numpy()


def _rates(flags: dict[str, np.ndarray]) -> dict:
    return {name: {"flagged": int(f.sum()), "rate": float(f.mean()) if len(f) else float("nan")}
            for name, f in flags.items()}


def _not_cxr_flags(model, thresholds: dict, x: torch.Tensor, autoencoder, ood_threshold: float) -> dict:
    """Boolean (N,) flags of each not-a-chest-X-ray rule, and the probabilities (N, 3)."""
    probs, dist = scores(model, x)
    flags = {"guard_probability": probs[:, 2] >= thresholds["not_cxr_threshold"],
             "guard_feature_distance": dist >= thresholds["distance_threshold"]}
    flags["guard"] = flags["guard_probability"] | flags["guard_feature_distance"]
    if autoencoder is not None:
        flags["reconstruction"] = reconstruction_errors(autoencoder, x) > ood_threshold
        flags["guard_or_reconstruction"] = flags["guard"] | flags["reconstruction"]
    return {"flags": flags, "probs": probs, "dist": dist}


def detection_report(model, thresholds: dict, cases: dict[str, list[np.ndarray]],
                     autoencoder=None, ood_threshold: float = 0.042) -> dict:
    """Per kind of held-out case, the share each rule flags: the guard's probability and
    feature-distance rules (and both: "guard"), the old reconstruction-error check, and
    guard OR reconstruction."""
    report = {}
    for kind, images in cases.items():
        x = torch.from_numpy(np.stack([as_upload(im) for im in images])).unsqueeze(1)
        out = _not_cxr_flags(model, thresholds, x, autoencoder, ood_threshold)
        report[kind] = {"n": len(images), "min_p_not_cxr": float(out["probs"][:, 2].min()),
                        "min_distance": float(out["dist"].min()), **_rates(out["flags"])}
    return report


def false_alarm_report(model, thresholds: dict, x: torch.Tensor, is_adult: np.ndarray,
                       autoencoder=None, ood_threshold: float = 0.042) -> dict:
    """Warnings on real chest X-rays x (N, 1, 224, 224): not-a-chest-X-ray by each rule,
    and out-of-domain when the true population is passed."""
    out = _not_cxr_flags(model, thresholds, x, autoencoder, ood_threshold)
    flags, probs = out["flags"], out["probs"]
    score = probs[:, 1] / np.clip(probs[:, 0] + probs[:, 1], 1e-12, None)
    flags["out_of_domain_given_true_population"] = ~flags["guard"] & ((score > 0.5) != is_adult)
    flags["any_guard_warning_given_true_population"] = flags["guard"] | flags["out_of_domain_given_true_population"]
    return {"n": int(len(x)), "max_p_not_cxr": float(probs[:, 2].max()), "max_distance": float(out["dist"].max()),
            **_rates(flags)}


def inference_ms(model, repeats: int = 50) -> float:
    """Median milliseconds of one single-image check (class probabilities and feature distance)."""
    x = torch.zeros(1, 1, 224, 224)
    times = []
    with torch.inference_mode():
        scores(model, x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            scores(model, x)
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


# ------------------------------------------------------------------ the recipe

def evaluate(model, data: CXRData, thresholds: dict, autoencoder=None, heldout=None) -> dict:
    """Every reported number: population on val/test, false alarms on val/test/examples,
    detection of held-out non-X-rays, what the model keys on, and inference time."""
    report: dict = {"thresholds": dict(thresholds)}
    for split in ("val", "test"):
        idx = data.select(split=split)
        x = to_model_range(data.images[idx])
        is_adult = np.array([data.rows[i]["source"] == "nih" for i in idx])
        report[f"population_{split}"] = population_report(predict(model, x), is_adult)
        report[f"false_alarms_{split}"] = false_alarm_report(model, thresholds, x, is_adult, autoencoder)
        for source in ("kermany", "nih"):
            sel = [k for k, i in enumerate(idx) if data.rows[i]["source"] == source]
            report[f"false_alarms_{split}"][source] = false_alarm_report(
                model, thresholds, x[sel], is_adult[sel], autoencoder)
        if split == "test":
            report["cues_test"] = cue_report(model, x, is_adult)
    examples = sorted((PACKAGE_ROOT / "app" / "examples").glob("*.png"))
    if examples:
        x = torch.from_numpy(np.stack([load_xray(p).pixels for p in examples])).unsqueeze(1)
        report["false_alarms_examples"] = false_alarm_report(model, thresholds, x, np.zeros(len(x), bool),
                                                             autoencoder)
    if heldout:
        report["detection_heldout"] = detection_report(model, thresholds, heldout, autoencoder)
    report["inference_ms_per_image"] = inference_ms(model)
    return report


def calibrate(model: DomainGuardNet, data: CXRData) -> dict:
    """Fit the feature statistics on train X-rays and set both thresholds on val X-rays."""
    train_idx, val_idx = data.select(split="train"), data.select(split="val")
    fit_feature_stats(model, to_model_range(data.images[train_idx]), cxr_targets(data, train_idx))
    probs, dist = scores(model, to_model_range(data.images[val_idx]))
    thresholds = {"not_cxr_threshold": choose_threshold(probs[:, 2]),
                  "distance_threshold": choose_distance_threshold(dist)}
    logger.info("thresholds %s (set on %d val X-rays)", thresholds, len(val_idx))
    return thresholds


def run_recipe(data_dir, out_dir: Path, *, epochs: int = 8, per_kind: int = 350, seed: int = 0) -> dict:
    """Train, calibrate on val, evaluate and write ``<out>/demo-domain-guard.*``."""
    data = load_data(data_dir)
    model, info = train_guard_model(data, epochs=epochs, per_kind=per_kind, seed=seed)
    thresholds = calibrate(model, data)
    autoencoder = load_model(Manifest.load().get("demo-autoencoder", "autoencoder"))
    metrics = {"training": info, "recipe": {"epochs": epochs, "per_kind": per_kind, "seed": seed,
                                            "architecture_kwargs": GUARD_KWARGS}}
    metrics.update(evaluate(model, data, thresholds, autoencoder, load_heldout_cases()))
    path = save_model(model, Path(out_dir), GUARD_ID, metrics, {"classes": list(GUARD_CLASSES), **thresholds})
    logger.info("%s: sha256 %s, %d bytes", path, sha256_of(path), path.stat().st_size)
    return metrics

