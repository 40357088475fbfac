"""Figures of the demo models: ROC AUC, Youden threshold, SSIM, reconstruction error and
the Latent Shift success shares (curtail true positives, exaggerate true negatives).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentshift.io.imaging import to_display_uint8
from latentshift.io.render import write_gif

from .data import CXRData, blur, from_model_range, to_model_range

logger = logging.getLogger(__name__)

def ssim_torch(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of images in [0, 1], (N, 1, H, W) (Gaussian window; a training loss)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = blur(a, sigma), blur(b, sigma)
    var_a = blur(a * a, sigma) - mu_a ** 2
    var_b = blur(b * b, sigma) - mu_b ** 2
    cov = blur(a * b, sigma) - mu_a * mu_b
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


def model_range_batches(u8: torch.Tensor, device, batch_size: int, autoencoder: nn.Module | None = None):
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
           for x, rec in model_range_batches(u8, device, batch_size, autoencoder)]
    return torch.cat(out).numpy() if out else np.zeros(0)


@torch.no_grad()
def reconstruction_report(ae: nn.Module, u8: torch.Tensor, device="cpu", batch_size: int = 16) -> dict:
    """MAE in model units and SSIM (skimage, [0, 1] images) of the reconstructions."""
    from skimage.metrics import structural_similarity

    maes, ssims = [], []
    for x, rec in model_range_batches(u8, device, batch_size, ae):
        maes.extend((rec - x).abs().mean(dim=(1, 2, 3)).cpu().tolist())
        a, b = from_model_range(x).cpu().numpy(), from_model_range(rec).cpu().numpy()
        for i in range(len(a)):
            ssims.append(float(structural_similarity(a[i, 0], b[i, 0], data_range=1.0)))
    return {"n": len(maes), "mae": float(np.mean(maes)) if maes else float("nan"),
            "ssim": float(np.mean(ssims)) if ssims else float("nan"),
            "ssim_min": float(np.min(ssims)) if ssims else float("nan")}


# ---------------------------------------------------------------------- training



def latent_shift_report(classifier, autoencoder, data: CXRData, ids, labels, probs, threshold,
                         subset: int | None, gif_dir: Path | None, n_gifs: int) -> dict:
    """Share of the true positives among ``ids`` (images of one split, with their ``labels``
    and predicted ``probs``) that the curtail search brings below the threshold, and of the
    true negatives the exaggerate search lifts above it, within a 5 % pixel budget."""
    from latentshift.core.shift import LatentShift, ShiftOptions

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
            [res] = explainer.attribute(x, 0, ShiftOptions(direction=direction, pixel_budget=0.05,
                                                           frames_from="reconstruction"))  # the paper's frames
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
    """A GIF through latentshift.io.render and a PNG strip of the frames (for looking at)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    tiles = [to_display_uint8(frame) for frame in res.frames[:, 0].numpy()]
    Image.fromarray(np.concatenate(tiles, axis=1)).save(out_dir / f"{name}.png")
    write_gif(out_dir / f"{name}.gif", res.frames, res.preds, res.lambdas,
              input_image=x[0, 0].cpu().numpy(), target_name="Pneumonia", threshold=threshold)


