"""Training and evaluation of the embedded demo models.

Commands (registered in :mod:`latentshift_research.cli`)::

    python -m latentshift_research train autoencoder --data ../shared/data/cxr --out out/models
    python -m latentshift_research train classifier  --data ../shared/data/cxr --out out/models
    python -m latentshift_research evaluate-models [--data ../shared/data/cxr]

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

import copy
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from latentshift.errors import LatentShiftError

from .data import (CXRData, augment_autoencoder, augment_classifier, from_model_range, limit_indices, mixup_batch)
from .metrics import (latent_shift_report, model_range_batches, binary_report, predict_probs, reconstruction_report, roc_auc, ssim_torch, youden_threshold)

logger = logging.getLogger(__name__)


AE_ID = "demo-autoencoder"
CLF_ID = "demo-pneumonia-classifier"
AE_KWARGS = {"latent_channels": 4, "widths": [16, 32, 64]}
CLF_KWARGS = {"widths": [16, 32, 64, 96, 128], "dropout": 0.2}
DEFAULT_EPOCHS = {"autoencoder": 16, "classifier": 12}
DEFAULT_MIXUP = 0.4
DEFAULT_CANDIDATES = 3  # classifier seeds tried by the command line recipe (with an autoencoder)


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


def save_model(model: nn.Module, out_dir: Path, model_id: str, metrics: dict, metadata: dict) -> Path:
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


def _test_reports(model, data: CXRData, test_idx, device: str) -> tuple[dict, dict]:
    """The autoencoder's reconstruction report on the test images, and per source."""
    test = reconstruction_report(model, data.images[test_idx], device)
    by_source = {src: reconstruction_report(model, data.images[[i for i in test_idx if data.rows[i]["source"] == src]],
                                            device) for src in ("kermany", "nih")}
    return test, by_source


def train_autoencoder(data: CXRData, out_dir: Path, *, epochs: int, device: str = "cpu", seed: int = 0,
                      limit: int | None = None, batch_size: int = 32, lr: float = 1e-3,
                      crop: int = 128, z_noise: float = 0.05, ssim_weight: float = 0.5,
                      architecture: dict | None = None) -> dict:
    """Train the demo autoencoder on every train-split image (see the module docstring); save it to ``out_dir``."""
    from latentshift.models.demo import DemoAutoencoder

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
        train_loss = _autoencoder_epoch(model, data, train_idx, gen, opt, sched, steps, device,
                                        batch_size=batch_size, crop=crop, z_noise=z_noise, ssim_weight=ssim_weight,
                                        desc=f"ae epoch {epoch}/{epochs}")
        val = reconstruction_report(model, data.images[val_idx], device)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_mae": val["mae"],
                        "val_ssim": val["ssim"], "elapsed_s": round(time.time() - t0, 1)})
        logger.info("ae epoch %d/%d: train loss %.4f, val MAE %.1f, val SSIM %.4f (%.0f s)", epoch, epochs,
                    history[-1]["train_loss"], val["mae"], val["ssim"], time.time() - t0)
    train_time = time.time() - t0
    model.eval()
    test, by_source = _test_reports(model, data, test_idx, device)
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
    save_model(model.cpu(), out_dir, AE_ID, metrics, {"architecture_kwargs": arch})
    return metrics


def _autoencoder_epoch(model, data: CXRData, train_idx: list[int], gen: torch.Generator, opt, sched, steps: int,
                       device: str, *, batch_size: int, crop: int, z_noise: float, ssim_weight: float,
                       desc: str) -> float:
    """One epoch of random crops, noise on z, loss L1/1024 + w·(1 − SSIM); returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    batches = _batches(train_idx, batch_size, gen, drop_last=True)
    for batch in _progress(batches, desc, len(batches)):
        x = augment_autoencoder(data.images[batch], gen, crop).to(device)
        z = model.encode(x)
        if z_noise > 0:
            z = z + torch.randn(z.shape, generator=gen).to(device) * (z_noise * z.detach().std())
        rec = model.decode(z)
        a, b = from_model_range(rec.clamp(-1100, 1100)), from_model_range(x)
        loss = (rec - x).abs().mean() / 1024.0 + ssim_weight * (1.0 - ssim_torch(a, b))
        total += _optimizer_step(opt, sched, steps, loss) * len(batch)
        count += len(batch)
    return total / max(count, 1)


def kermany_xy(data: CXRData, split: str, limit: int | None) -> tuple[list[int], list[int]]:
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
           for _, rec in model_range_batches(u8, device, batch_size, ae)]
    return torch.cat(out) if out else u8.clone()


def load_demo_autoencoder(path: str | os.PathLike) -> nn.Module:
    """The demo autoencoder from a safetensors file written by ``train autoencoder``
    (its architecture arguments are in the file's metadata)."""
    from safetensors import safe_open

    from latentshift.models import build_architecture
    from latentshift.weights import read_state_dict

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
    from latentshift.models.demo import DemoClassifier

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
    train_idx, train_y = kermany_xy(data, "train", limit)
    recon = None
    if autoencoder is not None and recon_prob > 0:
        t_rec = time.time()
        recon = dict(zip(train_idx, reconstruct_uint8(autoencoder, data.images[train_idx], device)))
        logger.info("precomputed %d reconstructions in %.0f s", len(recon), time.time() - t_rec)
    val_idx, val_y = kermany_xy(data, "val", limit)
    test_idx, test_y = kermany_xy(data, "test", limit)
    n_pos, n_neg = sum(train_y), len(train_y) - sum(train_y)
    runs = [_train_candidate(data, train_idx, train_y, val_idx, val_y, recon, run_seed, candidates, autoencoder,
                             epochs=epochs, device=device, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                             recon_prob=recon_prob, mixup=mixup)
            for run_seed in range(seed, seed + candidates)]
    run, model, history, val_probs = max(runs, key=_candidate_score)
    seed, best_epoch, threshold = run["seed"], run["best_epoch"], run["threshold"]
    metrics = _classifier_metrics(data, model, autoencoder, runs, history, val_probs, threshold,
                                  (train_idx, val_idx, val_y, test_idx, test_y, n_pos, n_neg),
                                  dict(epochs=epochs, best_epoch=best_epoch, seed=seed, batch_size=batch_size, lr=lr,
                                       weight_decay=weight_decay, recon_prob=recon_prob, mixup=mixup, limit=limit,
                                       device=device, reconstructions=recon is not None))
    logger.info("classifier test: AUC %.4f, sensitivity %.3f, specificity %.3f at threshold %.3f",
                metrics["test"]["auc"], metrics["test"]["sensitivity"], metrics["test"]["specificity"],
                threshold)
    save_model(model.cpu(), out_dir, CLF_ID, metrics,
          {"architecture_kwargs": CLF_KWARGS, "thresholds": [threshold], "labels": ["Pneumonia"]})
    return metrics


def _train_candidate(data: CXRData, train_idx, train_y, val_idx, val_y, recon, run_seed: int, candidates: int,
                     autoencoder, **fit_kwargs) -> tuple[dict, nn.Module, list, list]:
    """Train one seeded candidate; with several candidates, score its Latent Shift on validation.

    Returns (run info, model, history, validation probabilities).
    """
    device = fit_kwargs["device"]
    model, history, best_epoch, fit_time = _fit_classifier(
        data, train_idx, train_y, val_idx, val_y, recon, seed=run_seed, **fit_kwargs)
    val_probs = predict_probs(model, data.images[val_idx], device)
    threshold = youden_threshold(val_y, val_probs)
    model.thresholds = [threshold]
    run = {"seed": run_seed, "best_epoch": best_epoch, "threshold": threshold,
           "val_auc": roc_auc(val_y, val_probs), "train_time_s": round(fit_time, 1)}
    if candidates > 1:
        shift = latent_shift_report(model, autoencoder, data, val_idx, val_y, val_probs,
                                    threshold, None, None, 0)
        run["val_curtail_share"] = shift["curtail_true_positives"]["share"]
        run["val_exaggerate_share"] = shift["exaggerate_true_negatives"]["share"]
        logger.info("candidate seed %d: val AUC %.4f, threshold %.3f, val Latent Shift curtail %.2f, "
                    "exaggerate %.2f", run_seed, run["val_auc"], threshold, run["val_curtail_share"],
                    run["val_exaggerate_share"])
    return run, model, history, val_probs


def _classifier_metrics(data: CXRData, model, autoencoder, runs, history, val_probs, threshold: float,
                        split: tuple, recipe: dict) -> dict:
    """The metrics record of the kept classifier (what ``<id>.metrics.json`` holds)."""
    train_idx, val_idx, val_y, test_idx, test_y, n_pos, n_neg = split
    device, recon_prob, mixup = recipe["device"], recipe["recon_prob"], recipe["mixup"]
    test_probs = predict_probs(model, data.images[test_idx], device)
    return {
        "id": CLF_ID, "kind": "classifier", "architecture": "demo-classifier",
        "architecture_kwargs": CLF_KWARGS, "labels": ["Pneumonia"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "threshold": threshold,
        "threshold_rule": "Youden's J (sensitivity + specificity - 1) maximised on the Kermany validation split",
        "recipe": {"epochs": recipe["epochs"], "best_epoch": recipe["best_epoch"], "seed": recipe["seed"],
                   "candidates": [r for r, *_ in runs],
                   "batch_size": recipe["batch_size"],
                   "lr": recipe["lr"], "weight_decay": recipe["weight_decay"], "optimizer": "AdamW + OneCycle",
                   "loss": "BCE with pos_weight = n_normal / n_pneumonia",
                   "augmentation": "affine (rot 10 deg, scale 0.9-1.15, shift 6%), contrast 25%, "
                                   "brightness 10%, gamma 0.7-1.4, blur p=1/3",
                   "autoencoder_reconstructions": (f"each training image replaced by its demo-autoencoder "
                                                   f"reconstruction with p={recon_prob}" if recipe["reconstructions"]
                                                   else "none"),
                   "mixup": (f"Beta({mixup}, {mixup}) blends of image pairs and their labels within each "
                             f"batch, after augmentation" if mixup > 0 else "none"),
                   "limit": recipe["limit"], "device": device},
        "data": {"train": len(train_idx), "train_pneumonia": n_pos, "train_normal": n_neg,
                 "val": len(val_idx), "test": len(test_idx), "source": "kermany only"},
        "val": binary_report(val_y, val_probs, threshold),
        "test": binary_report(test_y, test_probs, threshold),
        **({"val_on_reconstructions": binary_report(
                val_y, predict_probs(model, data.images[val_idx], device, autoencoder=autoencoder), threshold),
            "test_on_reconstructions": binary_report(
                test_y, predict_probs(model, data.images[test_idx], device, autoencoder=autoencoder), threshold)}
           if autoencoder is not None else {}),
        "nih_out_of_domain": nih_report(model, data, threshold, device, recipe["limit"]),
        "history": history, "train_time_s": round(sum(r["train_time_s"] for r, *_ in runs), 1),
        "torch": torch.__version__,
    }


def _candidate_score(run: tuple) -> tuple[float, float]:
    """Sort key of a candidate (run, model, history, val_probs): val Latent Shift, then val AUC."""
    info = run[0]
    shares = [info.get("val_curtail_share", 0.0), info.get("val_exaggerate_share", 0.0)]
    shares = [0.0 if math.isnan(v) else v for v in shares]
    auc = info["val_auc"]
    return min(shares), (-1.0 if math.isnan(auc) else auc)


# ------------------------------------------------------------------- evaluation

