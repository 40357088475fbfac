"""Training and evaluation of the embedded demo models.

Commands (registered in :mod:`latentshift.cli`)::

    python -m latentshift train autoencoder --data ../shared/data/cxr --out weights
    python -m latentshift train classifier  --data ../shared/data/cxr --out weights
    python -m latentshift evaluate-models [--data ../shared/data/cxr]

Data: the chest X-ray folder described in ``shared/data/README-cxr.md`` (224×224 8-bit
PNGs and ``labels.csv`` with a patient-level ``split`` column). Images are preloaded
once as uint8 tensors; pixel p in 0..255 becomes p/255·2048 − 1024.

* autoencoder: every image of the *train* split (Kermany and NIH, labels unused);
  random 128×128 crops (the model is fully convolutional) with mild
  brightness/contrast jitter; loss L1 + 0.5·(1 − SSIM); small Gaussian noise on z
  (5 % of z's standard deviation) so the decoder stays smooth around the codes of
  real images. Reported on the test split: MAE in model units and SSIM
  (``skimage.metrics.structural_similarity`` on [0, 1] images).
* classifier: Kermany only, normal (0) vs pneumonia (1), class-weighted BCE,
  augmentation with random affine (rotation, scale, shift), brightness, contrast,
  gamma and blur, so that global intensity and borders carry no label information;
  half of the training images are replaced by their demo-autoencoder reconstructions
  (train the autoencoder first) so the classifier reads the decoded frames of Latent
  Shift like real images; mixup (Beta(0.4, 0.4) blends of image pairs and their labels)
  so the prediction moves gradually, not in a jump, as an image changes between normal
  and pneumonia appearance — the gradual path Latent Shift walks.
  The epoch with the best validation AUC is kept; the decision threshold maximises
  Youden's J (sensitivity + specificity − 1) on the *validation* split. The command
  trains three seeds and keeps the one whose Latent Shift works best on the validation
  split (seeds of the same recipe differ widely there); the test split decides nothing.
  NIH images (never used for training) give an out-of-domain report: NIH pneumonia vs
  all other NIH findings.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import LatentShiftError
from .imaging import to_display_uint8
from .render import write_gif

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "cxr"
DATA_ENV = "LATENTSHIFT_DATA"
AE_ID = "demo-autoencoder"
CLF_ID = "demo-pneumonia-classifier"
AE_KWARGS = {"latent_channels": 4, "widths": [16, 32, 64]}
CLF_KWARGS = {"widths": [16, 32, 64, 96, 128], "dropout": 0.2}
DEFAULT_EPOCHS = {"autoencoder": 16, "classifier": 12}
DEFAULT_MIXUP = 0.4
DEFAULT_CANDIDATES = 3  # classifier seeds tried by the command line recipe (with an autoencoder)


# --------------------------------------------------------------------------- data

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
    data = Path(path or os.environ.get(DATA_ENV) or DEFAULT_DATA)
    if not (data / "labels.csv").is_file():
        raise LatentShiftError(f"no labels.csv in {data}; pass --data to the chest X-ray folder "
                               "(see shared/data/README-cxr.md)")
    return data


def load_data(data_dir: str | os.PathLike | None, per_group: int | None = None) -> CXRData:
    """Read labels.csv and its PNGs; with ``per_group``, only the first N rows of each
    (split, source, label) group (quick test runs)."""
    from PIL import Image

    data_dir = resolve_data_dir(data_dir)
    with open(data_dir / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
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

def _intensity_jitter(y: torch.Tensor, gen: torch.Generator, contrast: float, brightness: float,
                      gamma: float) -> torch.Tensor:
    """y in [0, 1], (N, 1, H, W): random contrast, brightness and gamma per image."""
    n = y.shape[0]
    shape = (n, 1, 1, 1)
    c = 1.0 + (torch.rand(shape, generator=gen) * 2 - 1) * contrast
    b = (torch.rand(shape, generator=gen) * 2 - 1) * brightness
    g = torch.exp((torch.rand(shape, generator=gen) * 2 - 1) * math.log(1.0 + gamma))
    y = ((y - 0.5) * c + 0.5 + b).clamp(0.0, 1.0)
    return y.clamp_min(1e-6) ** g


def _gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(y: torch.Tensor, sigma: float) -> torch.Tensor:
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
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(n, generator=gen) * 0.25
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.12  # grid units: 2 = full width
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(y.shape), align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = _intensity_jitter(y, gen, contrast=0.25, brightness=0.10, gamma=0.4)
    blur = torch.rand(n, generator=gen) < 1 / 3
    if blur.any():
        sigma = 0.5 + float(torch.rand(1, generator=gen)) * 1.0
        y[blur] = _blur(y[blur], sigma)
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
    y = _intensity_jitter(out / 255.0, gen, contrast=0.1, brightness=0.05, gamma=0.15)
    return y * 2048.0 - 1024.0


# ----------------------------------------------------------------------- metrics

def ssim_torch(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of images in [0, 1], (N, 1, H, W) (Gaussian window; a training loss)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = _blur(a, sigma), _blur(b, sigma)
    var_a = _blur(a * a, sigma) - mu_a ** 2
    var_b = _blur(b * b, sigma) - mu_b ** 2
    cov = _blur(a * b, sigma) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean()


def roc_auc(y_true, scores) -> float:
    """ROC AUC (Mann–Whitney, ties counted half); NaN if one class is missing."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def youden_threshold(y_true, probs) -> float:
    """Threshold on the probability maximising sensitivity + specificity − 1.

    Candidates are midpoints between consecutive distinct scores; ties in J go to the
    threshold closest to 0.5.
    """
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    u = np.unique(p)
    if len(u) < 2 or y.all() or (~y).all():
        return 0.5
    candidates = (u[1:] + u[:-1]) / 2.0
    best, best_t = -2.0, 0.5
    for t in candidates:
        pred = p >= t
        j = pred[y].mean() + (~pred[~y]).mean() - 1.0
        if j > best + 1e-12 or (abs(j - best) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best, best_t = j, float(t)
    return best_t


def binary_report(y_true, probs, threshold: float) -> dict:
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    pred = p >= threshold
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
    return {
        "n": int(len(y)), "n_positive": int(y.sum()), "n_negative": int((~y).sum()),
        "auc": roc_auc(y, p),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "accuracy": (tp + tn) / len(y) if len(y) else float("nan"),
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


def _model_range_batches(u8: torch.Tensor, device, batch_size: int, autoencoder: nn.Module | None = None):
    """Yield (x, reconstruction or None) per batch of uint8 images (N, H, W): x (B, 1, H, W) in
    model range on ``device``; the autoencoder's reconstruction clamped to [-1024, 1024]."""
    if autoencoder is not None:
        autoencoder.eval()
    for start in range(0, len(u8), batch_size):
        x = to_model_range(u8[start:start + batch_size]).to(device)
        rec = None if autoencoder is None else autoencoder.decode(autoencoder.encode(x)).clamp(-1024.0, 1024.0)
        yield x, rec


@torch.no_grad()
def predict_probs(model: nn.Module, u8: torch.Tensor, device="cpu", batch_size: int = 32,
                  autoencoder: nn.Module | None = None) -> np.ndarray:
    """Sigmoid of the first logit for uint8 images; optionally of their reconstructions."""
    model.eval()
    out = [torch.sigmoid(model(x if rec is None else rec)[:, 0]).cpu()
           for x, rec in _model_range_batches(u8, device, batch_size, autoencoder)]
    return torch.cat(out).numpy() if out else np.zeros(0)


@torch.no_grad()
def reconstruction_report(ae: nn.Module, u8: torch.Tensor, device="cpu", batch_size: int = 16) -> dict:
    """MAE in model units and SSIM (skimage, [0, 1] images) of the reconstructions."""
    from skimage.metrics import structural_similarity

    maes, ssims = [], []
    for x, rec in _model_range_batches(u8, device, batch_size, ae):
        maes.extend((rec - x).abs().mean(dim=(1, 2, 3)).cpu().tolist())
        a, b = from_model_range(x).cpu().numpy(), from_model_range(rec).cpu().numpy()
        for i in range(len(a)):
            ssims.append(float(structural_similarity(a[i, 0], b[i, 0], data_range=1.0)))
    return {"n": len(maes), "mae": float(np.mean(maes)) if maes else float("nan"),
            "ssim": float(np.mean(ssims)) if ssims else float("nan"),
            "ssim_min": float(np.min(ssims)) if ssims else float("nan")}


# ---------------------------------------------------------------------- training

def _progress(iterable, desc: str, total: int):
    try:
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=2.0)
    except ImportError:  # pragma: no cover - tqdm comes with torchxrayvision
        return iterable


def _seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return gen


def _save(model: nn.Module, out_dir: Path, model_id: str, metrics: dict, metadata: dict) -> Path:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{model_id}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})
    metrics_path = out_dir / f"{model_id}.metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s (%d bytes) and %s", path, path.stat().st_size, metrics_path)
    return path


def _optimizer_step(opt: torch.optim.Optimizer, sched, steps: int, loss: torch.Tensor) -> float:
    """One optimiser step (and learning-rate schedule step, while it lasts); returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched.last_epoch + 1 < steps:
        sched.step()
    return float(loss.detach())


def _batches(indices: list[int], batch_size: int, gen: torch.Generator, drop_last: bool):
    perm = torch.randperm(len(indices), generator=gen).tolist()
    idx = [indices[i] for i in perm]
    stop = len(idx) - (len(idx) % batch_size if drop_last and len(idx) > batch_size else 0)
    return [idx[s:s + batch_size] for s in range(0, stop, batch_size)]


def train_autoencoder(data: CXRData, out_dir: Path, *, epochs: int, device: str = "cpu", seed: int = 0,
                      limit: int | None = None, batch_size: int = 32, lr: float = 1e-3,
                      crop: int = 128, z_noise: float = 0.05, ssim_weight: float = 0.5,
                      architecture: dict | None = None) -> dict:
    from .demo_models import DemoAutoencoder

    arch = dict(architecture or AE_KWARGS)

    gen = _seed_everything(seed)
    train_idx = limit_indices(data.select(split="train"), limit)
    val_idx = limit_indices(data.select(split="val"), limit)
    test_idx = limit_indices(data.select(split="test"), limit)
    model = DemoAutoencoder(**arch).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, epochs * len(_batches(train_idx, batch_size, torch.Generator(), True)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    logger.info("autoencoder: %d train / %d val / %d test images, %d epochs, %d parameters",
                len(train_idx), len(val_idx), len(test_idx), epochs,
                sum(p.numel() for p in model.parameters()))
    history = []
    t0 = time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        batches = _batches(train_idx, batch_size, gen, drop_last=True)
        for batch in _progress(batches, f"ae epoch {epoch}/{epochs}", len(batches)):
            x = augment_autoencoder(data.images[batch], gen, crop).to(device)
            z = model.encode(x)
            if z_noise > 0:
                z = z + torch.randn(z.shape, generator=gen).to(device) * (z_noise * z.detach().std())
            rec = model.decode(z)
            a, b = from_model_range(rec.clamp(-1100, 1100)), from_model_range(x)
            loss = (rec - x).abs().mean() / 1024.0 + ssim_weight * (1.0 - ssim_torch(a, b))
            total += _optimizer_step(opt, sched, steps, loss) * len(batch)
            count += len(batch)
        val = reconstruction_report(model, data.images[val_idx], device)
        history.append({"epoch": epoch, "train_loss": total / max(count, 1), "val_mae": val["mae"],
                        "val_ssim": val["ssim"], "elapsed_s": round(time.time() - t0, 1)})
        logger.info("ae epoch %d/%d: train loss %.4f, val MAE %.1f, val SSIM %.4f (%.0f s)", epoch, epochs,
                    history[-1]["train_loss"], val["mae"], val["ssim"], time.time() - t0)
    train_time = time.time() - t0
    model.eval()
    test = reconstruction_report(model, data.images[test_idx], device)
    by_source = {src: reconstruction_report(model, data.images[[i for i in test_idx
                                                               if data.rows[i]["source"] == src]], device)
                 for src in ("kermany", "nih")}
    with torch.no_grad():
        z_shape = list(model.encode(torch.zeros(1, 1, 224, 224, device=device)).shape[1:])
    metrics = {
        "id": AE_ID, "kind": "autoencoder", "architecture": "demo-autoencoder",
        "architecture_kwargs": arch, "latent_shape": z_shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "recipe": {"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
                   "optimizer": "Adam + OneCycle", "crop": crop, "z_noise": z_noise,
                   "loss": f"L1/1024 + {ssim_weight}*(1-SSIM)", "limit": limit, "device": device},
        "data": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx),
                 "sources": "kermany + nih, train split, labels unused"},
        "val": history[-1] if history else {},
        "test": test, "test_by_source": by_source, "history": history,
        "train_time_s": round(train_time, 1),
        "torch": torch.__version__,
    }
    logger.info("ae test: MAE %.1f (model units), SSIM %.4f", test["mae"], test["ssim"])
    _save(model.cpu(), out_dir, AE_ID, metrics, {"architecture_kwargs": arch})
    return metrics


def _kermany_xy(data: CXRData, split: str, limit: int | None) -> tuple[list[int], list[int]]:
    idx = data.select(split=split, source="kermany", labels=("normal", "pneumonia"))
    y = [int(data.rows[i]["label"] == "pneumonia") for i in idx]
    idx = limit_indices(idx, limit, y)
    return idx, [int(data.rows[i]["label"] == "pneumonia") for i in idx]


def nih_report(model: nn.Module, data: CXRData, threshold: float, device="cpu",
               limit: int | None = None) -> dict:
    """Out-of-domain: all NIH images, pneumonia vs every other NIH finding."""
    idx = data.select(source="nih")
    y = [int(data.rows[i]["label"] == "pneumonia") for i in idx]
    idx = limit_indices(idx, limit, y)
    if not idx:
        return {}
    y = [int(data.rows[i]["label"] == "pneumonia") for i in idx]
    probs = predict_probs(model, data.images[idx], device)
    report = binary_report(y, probs, threshold)
    report["flagged_share_by_label"] = {}
    for label in sorted({data.rows[i]["label"] for i in idx}):
        sel = [k for k, i in enumerate(idx) if data.rows[i]["label"] == label]
        report["flagged_share_by_label"][label] = {
            "n": len(sel), "flagged": float(np.mean(probs[sel] >= threshold)),
            "mean_prob": float(np.mean(probs[sel]))}
    report["note"] = ("all NIH splits (no NIH image was used for training); positives = NIH "
                      "'pneumonia' primary label, negatives = every other NIH finding (adults)")
    return report


@torch.no_grad()
def reconstruct_uint8(ae: nn.Module, u8: torch.Tensor, device="cpu", batch_size: int = 16) -> torch.Tensor:
    """AE reconstructions of uint8 images, rounded back to uint8 (N, H, W)."""
    out = [(from_model_range(rec).cpu()[:, 0] * 255.0).round().to(torch.uint8)
           for _, rec in _model_range_batches(u8, device, batch_size, ae)]
    return torch.cat(out) if out else u8.clone()


def load_demo_autoencoder(path: str | os.PathLike) -> nn.Module:
    """The demo autoencoder from a safetensors file written by ``train autoencoder``
    (its architecture arguments are in the file's metadata)."""
    from safetensors import safe_open

    from .models import build_architecture
    from .weights import read_state_dict

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    kwargs = json.loads(metadata["architecture_kwargs"]) if "architecture_kwargs" in metadata else AE_KWARGS
    ae = build_architecture("demo-autoencoder", **kwargs)
    ae.load_state_dict(read_state_dict(Path(path), "safetensors"), strict=True)
    return ae.eval()


def _fit_classifier(data: CXRData, train_idx: list[int], train_y: list[int], val_idx: list[int],
                    val_y: list[int], recon: dict | None, *, epochs: int, device: str, seed: int,
                    batch_size: int, lr: float, weight_decay: float, recon_prob: float,
                    mixup: float) -> tuple[nn.Module, list[dict], int, float]:
    """One seeded training run; returns (model at its best-val-AUC epoch, history, best epoch, seconds)."""
    from .demo_models import DemoClassifier

    gen = _seed_everything(seed)
    n_pos, n_neg = sum(train_y), len(train_y) - sum(train_y)
    pos_weight = torch.tensor([n_neg / max(n_pos, 1)], device=device)
    label_of = {i: y for i, y in zip(train_idx, train_y)}
    model = DemoClassifier(["Pneumonia"], **CLF_KWARGS).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * len(_batches(train_idx, batch_size, torch.Generator(), True)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    logger.info("classifier seed %d: %d train (%d pneumonia, %d normal) / %d val, %d epochs, "
                "%d parameters, pos_weight %.3f", seed, len(train_idx), n_pos, n_neg, len(val_idx),
                epochs, sum(p.numel() for p in model.parameters()), float(pos_weight))
    history = []
    best = (-1.0, float("inf"))
    best_state, best_epoch = copy.deepcopy(model.state_dict()), 0
    t0 = time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        batches = _batches(train_idx, batch_size, gen, drop_last=True)
        for batch in _progress(batches, f"clf epoch {epoch}/{epochs}", len(batches)):
            u8 = data.images[batch]
            if recon is not None:
                use = (torch.rand(len(batch), generator=gen) < recon_prob).tolist()
                u8 = torch.stack([recon[i] if r else u8[k] for k, (i, r) in enumerate(zip(batch, use))])
            x = augment_classifier(u8, gen).to(device)
            y = torch.tensor([[float(label_of[i])] for i in batch], device=device)
            if mixup > 0:
                x, y = mixup_batch(x, y, mixup, gen)
            loss = loss_fn(model(x), y)
            total += _optimizer_step(opt, sched, steps, loss) * len(batch)
            count += len(batch)
        probs = predict_probs(model, data.images[val_idx], device)
        val_auc = roc_auc(val_y, probs)
        val_loss = float(F.binary_cross_entropy(torch.tensor(probs, dtype=torch.float64).clamp(1e-6, 1 - 1e-6),
                                                torch.tensor(val_y, dtype=torch.float64))) if val_idx else float("nan")
        history.append({"epoch": epoch, "train_loss": total / max(count, 1), "val_auc": val_auc,
                        "val_bce": val_loss, "elapsed_s": round(time.time() - t0, 1)})
        logger.info("clf epoch %d/%d: train loss %.4f, val AUC %.4f, val BCE %.4f (%.0f s)", epoch, epochs,
                    history[-1]["train_loss"], val_auc, val_loss, time.time() - t0)
        key = (val_auc if not math.isnan(val_auc) else -1.0, val_loss)
        if key[0] > best[0] + 1e-9 or (abs(key[0] - best[0]) <= 1e-9 and key[1] < best[1]):
            best, best_state, best_epoch = key, copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    model.eval()
    return model, history, best_epoch, time.time() - t0


def train_classifier(data: CXRData, out_dir: Path, *, epochs: int, device: str = "cpu", seed: int = 0,
                     candidates: int = 1, limit: int | None = None, batch_size: int = 32, lr: float = 2e-3,
                     weight_decay: float = 1e-4, autoencoder: nn.Module | None = None,
                     recon_prob: float = 0.5, mixup: float = DEFAULT_MIXUP) -> dict:
    """Train the pneumonia classifier (see the module docstring).

    With ``autoencoder``, each training image is replaced by its (precomputed)
    reconstruction with probability ``recon_prob``, before augmentation: Latent Shift
    classifies decoded frames, and a classifier that never saw the autoencoder's
    smoothing reads it as haziness (opacity), shifting every frame towards pneumonia.
    ``mixup`` is the Beta(α, α) parameter of :func:`mixup_batch` (0 turns it off).

    ``candidates`` > 1 (needs ``autoencoder``) trains seeds ``seed … seed + candidates − 1``
    and keeps the run whose Latent Shift works best on the *validation* split: the larger of
    min(share of TPs curtailed below, share of TNs exaggerated above the threshold), ties
    broken by validation AUC. Equal recipes differ widely here between seeds; the test
    split plays no part in the choice.
    """
    if not mixup >= 0:
        raise LatentShiftError(f"mixup must be 0 (off) or a positive Beta parameter, got {mixup}")
    if candidates < 1:
        raise LatentShiftError(f"candidates must be at least 1, got {candidates}")
    if candidates > 1 and autoencoder is None:
        raise LatentShiftError("choosing among several candidate classifiers needs the autoencoder "
                               "(their Latent Shift on the validation split decides)")
    if autoencoder is not None:
        autoencoder = autoencoder.to(device)
    train_idx, train_y = _kermany_xy(data, "train", limit)
    recon = None
    if autoencoder is not None and recon_prob > 0:
        t_rec = time.time()
        recon = dict(zip(train_idx, reconstruct_uint8(autoencoder, data.images[train_idx], device)))
        logger.info("precomputed %d reconstructions in %.0f s", len(recon), time.time() - t_rec)
    val_idx, val_y = _kermany_xy(data, "val", limit)
    test_idx, test_y = _kermany_xy(data, "test", limit)
    n_pos, n_neg = sum(train_y), len(train_y) - sum(train_y)
    runs = []
    for run_seed in range(seed, seed + candidates):
        model, history, best_epoch, fit_time = _fit_classifier(
            data, train_idx, train_y, val_idx, val_y, recon, epochs=epochs, device=device, seed=run_seed,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, recon_prob=recon_prob, mixup=mixup)
        val_probs = predict_probs(model, data.images[val_idx], device)
        threshold = youden_threshold(val_y, val_probs)
        model.thresholds = [threshold]
        run = {"seed": run_seed, "best_epoch": best_epoch, "threshold": threshold,
               "val_auc": roc_auc(val_y, val_probs), "train_time_s": round(fit_time, 1)}
        if candidates > 1:
            shift = _latent_shift_report(model, autoencoder, data, val_idx, val_y, val_probs,
                                         threshold, None, None, 0)
            run["val_curtail_share"] = shift["curtail_true_positives"]["share"]
            run["val_exaggerate_share"] = shift["exaggerate_true_negatives"]["share"]
            logger.info("candidate seed %d: val AUC %.4f, threshold %.3f, val Latent Shift curtail %.2f, "
                        "exaggerate %.2f", run_seed, run["val_auc"], threshold, run["val_curtail_share"],
                        run["val_exaggerate_share"])
        runs.append((run, model, history, val_probs))
    run, model, history, val_probs = max(runs, key=_candidate_score)
    seed, best_epoch, threshold = run["seed"], run["best_epoch"], run["threshold"]
    train_time = sum(r["train_time_s"] for r, *_ in runs)
    test_probs = predict_probs(model, data.images[test_idx], device)
    metrics = {
        "id": CLF_ID, "kind": "classifier", "architecture": "demo-classifier",
        "architecture_kwargs": CLF_KWARGS, "labels": ["Pneumonia"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "threshold": threshold,
        "threshold_rule": "Youden's J (sensitivity + specificity - 1) maximised on the Kermany validation split",
        "recipe": {"epochs": epochs, "best_epoch": best_epoch, "seed": seed,
                   "candidates": [r for r, *_ in runs],
                   "batch_size": batch_size,
                   "lr": lr, "weight_decay": weight_decay, "optimizer": "AdamW + OneCycle",
                   "loss": "BCE with pos_weight = n_normal / n_pneumonia",
                   "augmentation": "affine (rot 10 deg, scale 0.9-1.15, shift 6%), contrast 25%, "
                                   "brightness 10%, gamma 0.7-1.4, blur p=1/3",
                   "autoencoder_reconstructions": (f"each training image replaced by its demo-autoencoder "
                                                   f"reconstruction with p={recon_prob}" if recon is not None
                                                   else "none"),
                   "mixup": (f"Beta({mixup}, {mixup}) blends of image pairs and their labels within each "
                             f"batch, after augmentation" if mixup > 0 else "none"),
                   "limit": limit, "device": device},
        "data": {"train": len(train_idx), "train_pneumonia": n_pos, "train_normal": n_neg,
                 "val": len(val_idx), "test": len(test_idx), "source": "kermany only"},
        "val": binary_report(val_y, val_probs, threshold),
        "test": binary_report(test_y, test_probs, threshold),
        **({"val_on_reconstructions": binary_report(
                val_y, predict_probs(model, data.images[val_idx], device, autoencoder=autoencoder), threshold),
            "test_on_reconstructions": binary_report(
                test_y, predict_probs(model, data.images[test_idx], device, autoencoder=autoencoder), threshold)}
           if autoencoder is not None else {}),
        "nih_out_of_domain": nih_report(model, data, threshold, device, limit),
        "history": history, "train_time_s": round(train_time, 1), "torch": torch.__version__,
    }
    logger.info("classifier test: AUC %.4f, sensitivity %.3f, specificity %.3f at threshold %.3f",
                metrics["test"]["auc"], metrics["test"]["sensitivity"], metrics["test"]["specificity"],
                threshold)
    _save(model.cpu(), out_dir, CLF_ID, metrics,
          {"architecture_kwargs": CLF_KWARGS, "thresholds": [threshold], "labels": ["Pneumonia"]})
    return metrics


def _candidate_score(run: tuple) -> tuple[float, float]:
    """Sort key of a candidate (run, model, history, val_probs): val Latent Shift, then val AUC."""
    info = run[0]
    shares = [info.get("val_curtail_share", 0.0), info.get("val_exaggerate_share", 0.0)]
    shares = [0.0 if math.isnan(v) else v for v in shares]
    auc = info["val_auc"]
    return min(shares), (-1.0 if math.isnan(auc) else auc)


# ------------------------------------------------------------------- evaluation

def _latent_shift_report(classifier, autoencoder, data: CXRData, ids, labels, probs, threshold,
                         subset: int | None, gif_dir: Path | None, n_gifs: int) -> dict:
    """Share of the true positives among ``ids`` (images of one split, with their ``labels``
    and predicted ``probs``) that the curtail search brings below the threshold, and of the
    true negatives the exaggerate search lifts above it, within a 5 % pixel budget."""
    from .shift import LatentShift

    explainer = LatentShift(classifier, autoencoder, apply_sigmoid=True)
    tps = [i for i, y, p in zip(ids, labels, probs) if y == 1 and p >= threshold]
    tns = [i for i, y, p in zip(ids, labels, probs) if y == 0 and p < threshold]
    if subset:
        rng = np.random.default_rng(0)
        tps = sorted(rng.choice(tps, min(subset, len(tps)), replace=False).tolist()) if tps else []
        tns = sorted(rng.choice(tns, min(subset, len(tns)), replace=False).tolist()) if tns else []
    report = {"pixel_budget": 0.05, "threshold": threshold, "subset": subset}
    for name, ids, direction in (("curtail_true_positives", tps, "curtail"),
                                 ("exaggerate_true_negatives", tns, "exaggerate")):
        hits, extremes, stops, saved, rec_crossed, changes = 0, [], {}, 0, 0, []
        t_dir = time.time()
        for n_done, i in enumerate(ids):
            if n_done and n_done % 10 == 0:
                logger.info("latent shift %s: %d/%d images (%.1f s per image)", direction, n_done, len(ids),
                            (time.time() - t_dir) / n_done)
            x = to_model_range(data.images[i:i + 1])
            res = explainer.attribute(x, 0, direction=direction, pixel_budget=0.05)
            lambdas, preds, change = res.lambdas, res.preds, res.pixel_change
            side = (lambdas < 0 if direction == "curtail" else lambdas > 0) & (change <= 0.05 + 1e-9)
            # success needs a shifted frame (λ ≠ 0) within the pixel budget past the threshold
            if side.any():
                ext = float(preds[side].min() if direction == "curtail" else preds[side].max())
                ok = ext < threshold if direction == "curtail" else ext >= threshold
            else:
                ext, ok = float("nan"), False
            extremes.append(ext)
            hits += int(ok)
            rec_pred = float(res.reconstruction_pred)
            rec_crossed += int(rec_pred < threshold if direction == "curtail" else rec_pred >= threshold)
            changes.append(float(change[side].max()) if side.any() else 0.0)
            reason = res.stop_reasons[direction]
            stops[reason] = stops.get(reason, 0) + 1
            if gif_dir is not None and saved < n_gifs // 2:
                _save_explanation(res, x, threshold, gif_dir, f"{direction}-{Path(data.rows[i]['file']).stem}")
                saved += 1
        report[name] = {"seconds_per_image": (time.time() - t_dir) / len(ids) if ids else float("nan"),
                        "n": len(ids), "success": hits, "share": hits / len(ids) if ids else float("nan"),
                        "median_extreme_pred": _median_of_finite(extremes),
                        "reconstruction_already_crossed": rec_crossed,
                        "median_pixel_change_at_end": float(np.median(changes)) if changes else float("nan"),
                        "stop_reasons": stops}
    return report


def _median_of_finite(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def _save_explanation(res, x: torch.Tensor, threshold: float, out_dir: Path, name: str) -> None:
    """A GIF through latentshift.render and a PNG strip of the frames (for looking at)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    tiles = [to_display_uint8(frame) for frame in res.frames[:, 0].numpy()]
    Image.fromarray(np.concatenate(tiles, axis=1)).save(out_dir / f"{name}.png")
    write_gif(out_dir / f"{name}.gif", res.frames, res.preds, res.lambdas,
              input_image=x[0, 0].cpu().numpy(), target_name="Pneumonia", threshold=threshold)


def evaluate_models(data_dir=None, device: str = "cpu", limit: int | None = None,
                    shift_subset: int | None = None, gif_dir: Path | None = None, n_gifs: int = 12,
                    skip_shift: bool = False) -> dict:
    """Recompute the figures of both shipped demo models from the repository's weights."""
    from .weights import Manifest, load_model

    manifest = Manifest.load()
    ae = load_model(manifest.get(AE_ID, "autoencoder"), device)
    clf = load_model(manifest.get(CLF_ID, "classifier"), device)
    threshold = float(clf.thresholds[0])
    data = load_data(data_dir)
    results: dict = {}
    test_all = limit_indices(data.select(split="test"), limit)
    results["autoencoder_test"] = reconstruction_report(ae, data.images[test_all], device)
    test_idx, test_y = _kermany_xy(data, "test", limit)
    probs = predict_probs(clf, data.images[test_idx], device)
    results["classifier_test"] = binary_report(test_y, probs, threshold)
    rec_probs = predict_probs(clf, data.images[test_idx], device, autoencoder=ae)
    results["classifier_test_on_reconstructions"] = binary_report(test_y, rec_probs, threshold)
    results["nih_out_of_domain"] = nih_report(clf, data, threshold, device, limit)
    results["threshold"] = threshold
    if not skip_shift:
        try:
            import latentshift.shift  # noqa: F401
        except ImportError:
            logger.warning("latentshift.shift is not available; Latent Shift figures skipped")
        else:
            results["latent_shift"] = _latent_shift_report(clf, ae, data, test_idx, test_y, probs, threshold,
                                                            shift_subset, gif_dir, n_gifs)
    return results


def _format_results(results: dict) -> str:
    lines = ["figure                                          value"]

    def row(name, value):
        lines.append(f"{name:<47} {value}")

    ae = results["autoencoder_test"]
    row("autoencoder test MAE (model units)", f"{ae['mae']:.1f}  (n={ae['n']})")
    row("autoencoder test SSIM", f"{ae['ssim']:.4f}")
    row("classifier threshold (sigmoid)", f"{results['threshold']:.4f}")
    for key, label in (("classifier_test", "Kermany test"),
                       ("classifier_test_on_reconstructions", "Kermany test, AE reconstructions"),
                       ("nih_out_of_domain", "NIH pneumonia vs other findings")):
        r = results.get(key) or {}
        if r:
            row(f"{label}: ROC AUC", f"{r['auc']:.4f}  (n={r['n']}, {r['n_positive']} positive)")
            row(f"{label}: sensitivity / specificity", f"{r['sensitivity']:.3f} / {r['specificity']:.3f}")
    ls = results.get("latent_shift")
    if ls:
        for key, label in (("curtail_true_positives", "Latent Shift: TPs curtailed below threshold"),
                           ("exaggerate_true_negatives", "Latent Shift: TNs exaggerated above threshold")):
            r = ls[key]
            row(label, f"{r['share']:.3f}  ({r['success']}/{r['n']}; reconstruction alone: "
                       f"{r['reconstruction_already_crossed']})")
        row("Latent Shift images", "all test TPs/TNs" if not ls.get("subset")
            else f"seeded subset of up to {ls['subset']} TPs and TNs")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI

def _cmd_train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = args.epochs or DEFAULT_EPOCHS[args.model]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise LatentShiftError("--device cuda, but no CUDA device is available")
    if args.model == "autoencoder":
        data = load_data(args.data, per_group=args.limit)
        train_autoencoder(data, Path(args.out), epochs=epochs, device=args.device, seed=args.seed,
                          limit=args.limit, batch_size=args.batch_size or 32)
    else:
        data = load_data(args.data, per_group=args.limit)  # NIH only for the out-of-domain report
        ae = None
        if args.autoencoder.lower() != "none":
            if not Path(args.autoencoder).is_file():
                raise LatentShiftError(f"autoencoder weights not found: {args.autoencoder} (train the "
                                       "autoencoder first, or pass --autoencoder none)")
            ae = load_demo_autoencoder(args.autoencoder)
        candidates = args.candidates
        if candidates is None:
            candidates = DEFAULT_CANDIDATES if ae is not None else 1
        train_classifier(data, Path(args.out), epochs=epochs, device=args.device, seed=args.seed,
                         candidates=candidates, limit=args.limit, batch_size=args.batch_size or 32,
                         autoencoder=ae, mixup=args.mixup)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    results = evaluate_models(args.data, device=args.device, limit=args.limit, shift_subset=args.shift_subset,
                              gif_dir=Path(args.gifs) if args.gifs else None, n_gifs=args.n_gifs,
                              skip_shift=args.no_shift)
    print(_format_results(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a demo model on the chest X-ray folder",
                              description="Train the demo autoencoder or pneumonia classifier "
                                          "(research demo, not for clinical use).")
    p.add_argument("model", choices=["autoencoder", "classifier"])
    p.add_argument("--data", default=None, help=f"chest X-ray folder with labels.csv (default: ${DATA_ENV} "
                                                f"or {DEFAULT_DATA})")
    p.add_argument("--out", default="weights", help="output folder for <id>.safetensors and <id>.metrics.json")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs (default: {DEFAULT_EPOCHS['autoencoder']} autoencoder, "
                        f"{DEFAULT_EPOCHS['classifier']} classifier)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use at most N images per split (quick test runs)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--autoencoder", default=str(REPO_ROOT / "weights" / f"{AE_ID}.safetensors"),
                   help="classifier only: demo autoencoder weights whose reconstructions replace half of "
                        "the training images ('none' to disable; default: the shipped demo autoencoder)")
    p.add_argument("--mixup", type=float, default=DEFAULT_MIXUP,
                   help=f"classifier only: mixup Beta(a, a) parameter (default {DEFAULT_MIXUP}; 0 disables)")
    p.add_argument("--candidates", type=int, default=None,
                   help=f"classifier only: train seeds SEED … SEED+N-1 and keep the one whose Latent Shift works "
                        f"best on the validation split (default {DEFAULT_CANDIDATES}; 1 with --autoencoder none)")
    p.set_defaults(func=_cmd_train, default_log_level=logging.INFO)

    e = subparsers.add_parser("evaluate-models", help="recompute the demo models' figures from the shipped weights")
    e.add_argument("--data", default=None, help="chest X-ray folder with labels.csv")
    e.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    e.add_argument("--limit", type=int, default=None, help="at most N images per split (quick check)")
    e.add_argument("--shift-subset", type=int, default=None,
                   help="Latent Shift figures on a seeded random subset of N TPs and N TNs (default: all)")
    e.add_argument("--no-shift", action="store_true", help="skip the Latent Shift figures")
    e.add_argument("--gifs", default=None, help="folder for example explanations (GIFs / PNG strips)")
    e.add_argument("--n-gifs", type=int, default=12)
    e.add_argument("--json", default=None, help="also write the figures as JSON to this path")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.set_defaults(func=_cmd_evaluate, default_log_level=logging.INFO)
