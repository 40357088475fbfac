"""Adult multi-label demo classifier, trained on the NIH ChestX-ray14 images only.

Usage::

    python -m latentshift_research train-adult --data ../shared/data/cxr --out out/models --epochs 14 --seeds 0 1 2

Data: the NIH rows (``source == "nih"``) of the chest X-ray folder described in
``shared/data/README-cxr.md``; the pediatric Kermany images are never read into the
training, so "child vs adult" cannot stand in for a finding. Targets come from the
``finding`` column (NIH ``Finding Labels``, split on ``|``); the negatives of a finding
are the NIH images without it. ``"Mass/Nodule"`` is positive when either is listed.

Recipe (reusing :mod:`latentshift_research.training.train`): class-weighted BCE per output
(pos_weight = n_negative / n_positive), the pediatric classifier's augmentation, optional
mixup, optional demo-autoencoder reconstructions in place of training images, and
optionally an encoder stem initialised from the shared demo autoencoder
(:class:`~latentshift.models.demo.DemoEncoderClassifier`). The epoch with the best mean
validation AUC is kept; per-output thresholds maximise Youden's J on the *validation*
split; among several seeds the one whose Latent Shift curtails most validation true
positives (worst of the ``shift_findings``) wins. The test split decides nothing.
Outputs whose validation AUC is not clearly above chance (bootstrap 95 % lower bound
≤ ``keep_min_lower``) are removed from the head before saving.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentshift.core.shift import LatentShift, ShiftOptions
from latentshift.errors import LatentShiftError
from latentshift.io.imaging import to_display_uint8
from latentshift.io.render import write_gif
from latentshift.models.demo import DemoClassifier, DemoEncoderClassifier
from latentshift.weights.manifest import PACKAGE_ROOT
from .data import CXRData, augment_classifier, load_data, mixup_batch, to_model_range
from .metrics import binary_report, roc_auc, youden_threshold
from .train import (AE_ID, _batches, _optimizer_step, _seed_everything, load_demo_autoencoder, reconstruct_uint8,
                    save_model)

#: The installed runtime's embedded weights (read only: the demo autoencoder).
EMBEDDED = PACKAGE_ROOT / "embedded"

logger = logging.getLogger(__name__)

ADULT_ID = "demo-adult-classifier"
CANDIDATE_FINDINGS = ("Cardiomegaly", "Effusion", "Atelectasis", "Pneumothorax", "Mass", "Nodule",
                      "Mass/Nodule", "Infiltration", "Pneumonia")
SHIFT_FINDINGS = ("Cardiomegaly", "Effusion")
ARCHITECTURES = {
    "plain": ("demo-classifier", {"widths": [16, 32, 64, 96, 128], "dropout": 0.2}),
    "encoder": ("demo-encoder-classifier", {"encoder_widths": [16, 32, 64], "widths": [96, 128],
                                            "dropout": 0.2}),
}
PIXEL_BUDGET = 0.05


# --------------------------------------------------------------------------- data

def nih_indices(data: CXRData, split: str) -> list[int]:
    """Row indices of the NIH (adult) images of ``split``."""
    return data.select(split=split, source="nih")


def finding_targets(data: CXRData, indices: list[int], findings) -> np.ndarray:
    """(N, K) float32 0/1 targets from the ``finding`` column; "A/B" means A or B."""
    out = np.zeros((len(indices), len(findings)), dtype=np.float32)
    for n, i in enumerate(indices):
        listed = set(data.rows[i]["finding"].split("|"))
        for k, name in enumerate(findings):
            out[n, k] = float(any(part in listed for part in name.split("/")))
    return out


# ------------------------------------------------------------------------ models

def build_classifier(arch: str, findings, autoencoder: nn.Module | None, encoder_init: bool) -> nn.Module:
    """A fresh multi-label classifier; ``encoder_init`` copies the autoencoder's encoder."""
    kwargs = ARCHITECTURES[arch][1]
    if arch == "plain":
        return DemoClassifier(list(findings), **kwargs)
    model = DemoEncoderClassifier(list(findings), **kwargs)
    if encoder_init:
        if autoencoder is None:
            raise ValueError("encoder_init needs the autoencoder")
        model.init_from_autoencoder(autoencoder)
    return model


@torch.no_grad()
def predict_multi(model: nn.Module, u8: torch.Tensor, device="cpu", batch_size: int = 32,
                  autoencoder: nn.Module | None = None) -> np.ndarray:
    """Sigmoid outputs (N, K) for uint8 images (N, H, W); optionally of their AE reconstructions."""
    model.eval()
    out = []
    for start in range(0, len(u8), batch_size):
        x = to_model_range(u8[start:start + batch_size]).to(device)
        if autoencoder is not None:
            x = autoencoder.decode(autoencoder.encode(x)).clamp(-1024.0, 1024.0)
        out.append(torch.sigmoid(model(x)).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 0))


def prune_outputs(model: nn.Module, keep: list[int]) -> nn.Module:
    """Copy of ``model`` whose linear head keeps only the outputs ``keep`` (in that order)."""
    pruned = copy.deepcopy(model)
    old = model.classifier
    pruned.classifier = nn.Linear(old.in_features, len(keep))
    with torch.no_grad():
        pruned.classifier.weight.copy_(old.weight[keep])
        pruned.classifier.bias.copy_(old.bias[keep])
    pruned.pathologies = [model.pathologies[k] for k in keep]
    pruned.thresholds = [model.thresholds[k] for k in keep]
    return pruned


# ---------------------------------------------------------------------- training

def _train_epoch(model, opt, sched, steps, loss_fn, data, batches, targets, recon, gen, *, device,
                 recon_prob: float, mixup: float) -> float:
    """One epoch; ``targets`` maps row index -> (K,) float32 targets. Returns mean loss."""
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        u8 = data.images[batch]
        if recon is not None and recon_prob > 0:
            use = (torch.rand(len(batch), generator=gen) < recon_prob).tolist()
            u8 = torch.stack([recon[i] if r else u8[k] for k, (i, r) in enumerate(zip(batch, use))])
        x = augment_classifier(u8, gen).to(device)
        y = torch.from_numpy(np.stack([targets[i] for i in batch])).to(device)
        if mixup > 0:
            x, y = mixup_batch(x, y, mixup, gen)
        total += _optimizer_step(opt, sched, steps, loss_fn(model(x), y)) * len(batch)
        count += len(batch)
    return total / max(count, 1)


def fit_multilabel(data: CXRData, train_idx, y_train: np.ndarray, val_idx, y_val: np.ndarray,
                   recon: dict | None, autoencoder: nn.Module | None, findings, *, arch: str,
                   encoder_init: bool, epochs: int, seed: int, device: str, batch_size: int, lr: float,
                   weight_decay: float, recon_prob: float, mixup: float):
    """One seeded run. y_* are (N, K) 0/1 targets. Returns (model at the epoch with the best
    mean validation AUC, history, best epoch, seconds)."""
    gen = _seed_everything(seed)
    model = build_classifier(arch, findings, autoencoder, encoder_init).to(device)
    pos = y_train.sum(0)
    pos_weight = torch.tensor((len(y_train) - pos) / np.maximum(pos, 1), dtype=torch.float32, device=device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * len(_batches(train_idx, batch_size, torch.Generator(), True)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    targets = dict(zip(train_idx, y_train))
    history, best_auc, best_state, best_epoch = [], -1.0, copy.deepcopy(model.state_dict()), 0
    t0 = time.time()
    for epoch in range(1, epochs + 1):
        batches = _batches(train_idx, batch_size, gen, drop_last=True)
        loss = _train_epoch(model, opt, sched, steps, loss_fn, data, batches, targets, recon, gen,
                            device=device, recon_prob=recon_prob, mixup=mixup)
        probs = predict_multi(model, data.images[val_idx], device)
        aucs = [roc_auc(y_val[:, k], probs[:, k]) for k in range(len(findings))]
        mean_auc = float(np.nanmean(aucs))
        history.append({"epoch": epoch, "train_loss": loss, "val_mean_auc": mean_auc,
                        "val_auc": dict(zip(findings, aucs)), "elapsed_s": round(time.time() - t0, 1)})
        logger.info("seed %d epoch %d/%d: loss %.4f, val mean AUC %.3f (%s) %.0f s", seed, epoch, epochs, loss,
                    mean_auc, " ".join(f"{f[:5]}={a:.2f}" for f, a in zip(findings, aucs)), time.time() - t0)
        if mean_auc > best_auc + 1e-9:
            best_auc, best_state, best_epoch = mean_auc, copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    return model.eval(), history, best_epoch, time.time() - t0


# ------------------------------------------------------------------- evaluation

def bootstrap_auc(y: np.ndarray, p: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95 % interval of the ROC AUC over ``n_boot`` resamples of images (y, p: (N,))."""
    rng = np.random.default_rng(seed)
    n, values = len(y), []
    for _ in range(n_boot):
        s = rng.integers(0, n, n)
        if 0 < y[s].sum() < n:
            values.append(roc_auc(y[s], p[s]))
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if values else (math.nan,) * 2


def auc_table(y: np.ndarray, probs: np.ndarray, findings, thresholds, n_boot: int) -> dict:
    """Per finding: binary_report at its threshold plus a bootstrap 95 % AUC interval."""
    table = {}
    for k, name in enumerate(findings):
        report = binary_report(y[:, k], probs[:, k], thresholds[k])
        report["auc_ci95"] = list(bootstrap_auc(y[:, k], probs[:, k], n_boot, seed=k))
        report["threshold"] = float(thresholds[k])
        table[name] = report
    return table


def curtail_report(model, autoencoder, data: CXRData, indices, y: np.ndarray, probs: np.ndarray,
                   thresholds, findings, targets, gif_dir: Path | None = None, n_gifs: int = 0) -> dict:
    """Per finding in ``targets``: how many true positives (label 1, prob ≥ threshold) the default
    curtail search (5 % pixel budget) brings below the threshold with a frame inside the budget."""
    explainer = LatentShift(model, autoencoder, apply_sigmoid=True)
    report = {}
    for name in targets:
        k = list(findings).index(name)
        tps = [n for n in range(len(indices)) if y[n, k] == 1 and probs[n, k] >= thresholds[k]]
        hits, rec_crossed, stops, extremes, t0, saved = 0, 0, {}, [], time.time(), 0
        for n in tps:
            x = to_model_range(data.images[indices[n]:indices[n] + 1])
            [res] = explainer.attribute(x, k, ShiftOptions(direction="curtail", pixel_budget=PIXEL_BUDGET,
                                                           frames_from="reconstruction"))  # the paper's frames
            side = (res.lambdas < 0) & (res.pixel_change <= PIXEL_BUDGET + 1e-9)
            ext = float(res.preds[side].min()) if side.any() else math.nan
            hits += int(side.any() and ext < thresholds[k])
            rec_crossed += int(res.reconstruction_pred < thresholds[k])
            extremes.append(ext)
            stops[res.stop_reasons["curtail"]] = stops.get(res.stop_reasons["curtail"], 0) + 1
            if gif_dir is not None and saved < n_gifs:
                save_case(res, x, thresholds[k], name, gif_dir,
                          f"{name.replace('/', '-')}-{Path(data.rows[indices[n]]['file']).stem}")
                saved += 1
        report[name] = {"n_true_positives": len(tps), "curtailed_below_threshold": hits,
                        "share": hits / len(tps) if tps else math.nan,
                        "reconstruction_already_below": rec_crossed, "stop_reasons": stops,
                        "median_lowest_pred": float(np.nanmedian(extremes)) if tps else math.nan,
                        "seconds_per_image": (time.time() - t0) / max(len(tps), 1)}
        logger.info("latent shift %s: %d/%d true positives curtailed below %.3f", name, hits, len(tps),
                    thresholds[k])
    return report


def save_case(res, x: torch.Tensor, threshold: float, name: str, out_dir: Path, stem: str) -> None:
    """GIF (latentshift.io.render) plus a PNG strip: input | λ=0 | most curtailed frame | signed
    difference (curtailed − λ=0, ×4; red = brighter, blue = darker), all 224×224."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    write_gif(out_dir / f"{stem}.gif", res.frames, res.preds, res.lambdas, input_image=x[0, 0].cpu().numpy(),
              target_name=name, threshold=threshold)
    rec, low = res.frames[res.zero_index, 0].numpy(), res.frames[0, 0].numpy()
    d = np.clip((low - rec) / 2048.0 * 4 * 255, -255, 255)
    diff = np.stack([np.clip(d, 0, 255), np.zeros_like(d), np.clip(-d, 0, 255)], -1).astype(np.uint8)
    gray = [np.repeat(to_display_uint8(a)[..., None], 3, -1) for a in (x[0, 0].cpu().numpy(), rec, low)]
    Image.fromarray(np.concatenate(gray + [diff], axis=1)).save(out_dir / f"{stem}.png")


# ------------------------------------------------------------------------ recipe

def select_outputs(findings, val_table: dict, keep_min_lower: float) -> tuple[list[int], dict]:
    """Indices of the outputs to keep and the reason for each dropped one.

    An output is kept when the lower end of its validation AUC 95 % interval is above
    ``keep_min_lower``. Mass and Nodule are kept separately if both pass; otherwise
    "Mass/Nodule" (either finding) replaces them if it passes.
    """
    passes = {f: val_table[f]["auc_ci95"][0] > keep_min_lower for f in findings}
    dropped = {f: f"val AUC {val_table[f]['auc']:.3f}, 95% CI lower bound "
                  f"{val_table[f]['auc_ci95'][0]:.3f} <= {keep_min_lower}" for f in findings if not passes[f]}
    separate = [f for f in ("Mass", "Nodule") if f in findings]
    if "Mass/Nodule" in findings and passes["Mass/Nodule"]:
        if separate and all(passes[f] for f in separate):
            dropped["Mass/Nodule"] = "Mass and Nodule both learn separately"
            passes["Mass/Nodule"] = False
        else:
            for f in separate:
                if passes[f]:
                    dropped[f] = "merged into Mass/Nodule (not both learn separately)"
                passes[f] = False
    return [k for k, f in enumerate(findings) if passes[f]], dropped


def _split(data: CXRData, split: str, findings) -> tuple[list[int], np.ndarray]:
    idx = nih_indices(data, split)
    return idx, finding_targets(data, idx, findings)


def _candidate(data, splits, recon, ae, findings, seed, opts: dict, shift_findings) -> dict:
    """Train one seed; thresholds, validation AUCs and (optionally) validation curtail shares."""
    (train_idx, y_tr), (val_idx, y_val) = splits["train"], splits["val"]
    model, history, best_epoch, seconds = fit_multilabel(data, train_idx, y_tr, val_idx, y_val, recon, ae,
                                                         findings, seed=seed, **opts)
    probs = predict_multi(model, data.images[val_idx], opts["device"])
    thresholds = [youden_threshold(y_val[:, k], probs[:, k]) for k in range(len(findings))]
    model.thresholds = thresholds
    run = {"seed": seed, "best_epoch": best_epoch, "train_time_s": round(seconds, 1),
           "val_auc": {f: roc_auc(y_val[:, k], probs[:, k]) for k, f in enumerate(findings)}}
    if shift_findings:
        t0 = time.time()
        shift = curtail_report(model, ae, data, val_idx, y_val, probs, thresholds, findings, shift_findings)
        run["val_curtail"] = {f: f"{r['curtailed_below_threshold']}/{r['n_true_positives']}" for f, r in shift.items()}
        run["val_curtail_min_share"] = min(r["share"] for r in shift.values())
        run["shift_time_s"] = round(time.time() - t0, 1)
    logger.info("candidate %s", json.dumps(run))
    return {"run": run, "model": model, "history": history, "val_probs": probs}


def _score(c: dict) -> tuple[float, float]:
    """Candidate sort key: worst validation curtail share, then mean validation AUC."""
    share = c["run"].get("val_curtail_min_share", 0.0)
    return (0.0 if math.isnan(share) else share), float(np.nanmean(list(c["run"]["val_auc"].values())))


def evaluate_adult(model, ae, data: CXRData, splits: dict, *, device: str, n_boot: int, shift_findings,
                   evaluate_test: bool, gif_dir: Path | None, n_gifs: int) -> dict:
    """AUC tables (with bootstrap CIs), results on AE reconstructions and Latent Shift curtail
    counts for val (and test when ``evaluate_test``) of the final, pruned ``model``."""
    findings, thresholds = model.pathologies, model.thresholds
    out = {}
    for split in ("val", "test") if evaluate_test else ("val",):
        idx, y = splits[split][0], splits[split][1]
        probs = predict_multi(model, data.images[idx], device)
        out[split] = auc_table(y, probs, findings, thresholds, n_boot)
        rec_probs = predict_multi(model, data.images[idx], device, autoencoder=ae)
        out[f"{split}_on_reconstructions"] = {
            f: {"auc": roc_auc(y[:, k], rec_probs[:, k]),
                "mean_prob_shift": float(np.mean(rec_probs[:, k] - probs[:, k]))} for k, f in enumerate(findings)}
        targets = [f for f in findings if f in shift_findings]
        out[f"latent_shift_{split}"] = curtail_report(
            model, ae, data, idx, y, probs, thresholds, findings, targets,
            None if gif_dir is None else gif_dir / split, n_gifs)
    return out


def _adult_metrics(model, best, cands, arch, opts, seeds, findings, kept_findings, val_table, dropped, splits,
                   evaluation, evaluate_test, t_start) -> dict:
    """The metrics record of the kept adult classifier (what ``<id>.metrics.json`` holds)."""
    arch_name, arch_kwargs = ARCHITECTURES[arch]
    return {
        "id": ADULT_ID, "kind": "classifier", "architecture": arch_name, "architecture_kwargs": arch_kwargs,
        "labels": kept_findings, "thresholds": list(model.thresholds), "population": "adult",
        "parameters": sum(p.numel() for p in model.parameters()),
        "threshold_rule": "Youden's J maximised per output on the NIH validation split",
        "recipe": {**opts, "seeds": list(seeds), "chosen_seed": best["run"]["seed"],
                   "best_epoch": best["run"]["best_epoch"], "candidates": [c["run"] for c in cands],
                   "trained_outputs": list(findings), "autoencoder_encoder_init": arch == "encoder" and opts["encoder_init"],
                   "loss": "BCE per output with pos_weight = n_negative / n_positive (train split)",
                   "augmentation": "train.augment_classifier (affine rot 10 deg, scale 0.9-1.15, shift 6%, "
                                   "contrast 25%, brightness 10%, gamma 0.7-1.4, blur p=1/3)"},
        "val_all_trained_outputs": val_table, "dropped_outputs": dropped,
        "data": {s: {"n": len(idx), "positives": dict(zip(kept_findings, y.sum(0).astype(int).tolist()))}
                 for s, (idx, y) in splits.items() if s != "test" or evaluate_test},
        **evaluation, "history": best["history"],
        "train_time_s": round(sum(c["run"]["train_time_s"] for c in cands), 1),
        "wall_time_s": round(time.time() - t_start, 1), "torch": torch.__version__,
    }


def train_adult_classifier(data_dir, out_dir, *, epochs: int = 14, seeds=(0,), device: str = "cpu",
                           arch: str = "encoder", encoder_init: bool = True, recon_prob: float = 0.5,
                           mixup: float = 0.4, findings=CANDIDATE_FINDINGS, shift_findings=SHIFT_FINDINGS,
                           final_shift_findings=None, batch_size: int = 32, lr: float = 2e-3,
                           weight_decay: float = 1e-4, autoencoder_path=None, n_boot: int = 2000,
                           keep_min_lower: float = 0.5, evaluate_test: bool = True, save: bool = True,
                           gif_dir=None, n_gifs: int = 6) -> dict:
    """Train the adult multi-label classifier (see the module docstring); returns its metrics.

    ``seeds``: one run per seed; with more than one, the validation curtail shares of
    ``shift_findings`` choose. ``final_shift_findings`` (default: every kept output) are
    the outputs whose Latent Shift curtail counts are reported. ``evaluate_test=False``
    for recipe exploration (the test split is then not read at all). With ``save``, writes
    ``<out_dir>/demo-adult-classifier.safetensors`` and ``.metrics.json``; else only the metrics.
    """
    out_dir, t_start = Path(out_dir), time.time()
    data = load_data(data_dir)
    ae = load_demo_autoencoder(autoencoder_path or EMBEDDED / f"{AE_ID}.safetensors").to(device)
    splits = {s: _split(data, s, findings) for s in ("train", "val", "test")}
    recon = None
    if recon_prob > 0:
        recon = dict(zip(splits["train"][0], reconstruct_uint8(ae, data.images[splits["train"][0]], device)))
    opts = {"arch": arch, "encoder_init": encoder_init, "epochs": epochs, "device": device,
            "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "recon_prob": recon_prob,
            "mixup": mixup}
    cands = [_candidate(data, splits, recon, ae, findings, s, opts, shift_findings if len(seeds) > 1 else ())
             for s in seeds]
    best = max(cands, key=_score)
    val_table = auc_table(splits["val"][1], best["val_probs"], findings, best["model"].thresholds, n_boot)
    keep, dropped = select_outputs(findings, val_table, keep_min_lower)
    if not keep:
        raise LatentShiftError(f"no output learned anything on the validation split: {dropped}")
    kept_findings = [findings[k] for k in keep]
    model = prune_outputs(best["model"], keep)
    splits = {s: (idx, y[:, keep]) for s, (idx, y) in splits.items()}
    evaluation = evaluate_adult(model, ae, data, splits, device=device, n_boot=n_boot,
                                shift_findings=final_shift_findings or kept_findings,
                                evaluate_test=evaluate_test, gif_dir=None if gif_dir is None else Path(gif_dir),
                                n_gifs=n_gifs)
    arch_name, arch_kwargs = ARCHITECTURES[arch]
    metrics = _adult_metrics(model, best, cands, arch, opts, seeds, findings, kept_findings, val_table, dropped,
                             splits, evaluation, evaluate_test, t_start)
    if save:
        save_model(model.cpu(), out_dir, ADULT_ID, metrics,
              {"architecture_kwargs": arch_kwargs, "thresholds": list(model.thresholds), "labels": kept_findings})
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{ADULT_ID}.metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def load_adult_classifier(weights_path) -> nn.Module:
    """The saved classifier, rebuilt from the safetensors metadata (architecture kwargs, labels, thresholds)."""
    from safetensors import safe_open

    from latentshift.models import build_architecture
    from latentshift.weights import read_state_dict

    with safe_open(str(weights_path), "pt") as handle:
        meta = {k: json.loads(v) for k, v in (handle.metadata() or {}).items()}
    name = next(n for n, kw in ARCHITECTURES.values() if set(kw) == set(meta["architecture_kwargs"]))
    model = build_architecture(name, labels=meta["labels"], thresholds=meta["thresholds"],
                               **meta["architecture_kwargs"])
    model.load_state_dict(read_state_dict(Path(weights_path), "safetensors"), strict=True)
    return model.eval()


def evaluate_adult_weights(weights_path, data_dir=None, *, device: str = "cpu", n_boot: int = 2000,
                           autoencoder_path=None, gif_dir=None, n_gifs: int = 6,
                           metrics_path=None) -> dict:
    """Val and test figures of saved weights (AUCs with 95 % CIs, Latent Shift curtail counts,
    GIFs); with ``metrics_path``, merged into that metrics JSON (its val/test keys replaced)."""
    model = load_adult_classifier(weights_path).to(device)
    ae = load_demo_autoencoder(autoencoder_path or EMBEDDED / f"{AE_ID}.safetensors").to(device)
    data = load_data(data_dir)
    splits = {s: _split(data, s, model.pathologies) for s in ("val", "test")}
    out = evaluate_adult(model, ae, data, splits, device=device, n_boot=n_boot, shift_findings=model.pathologies,
                         evaluate_test=True, gif_dir=None if gif_dir is None else Path(gif_dir), n_gifs=n_gifs)
    out["data"] = {s: {"n": len(idx), "positives": dict(zip(model.pathologies, y.sum(0).astype(int).tolist()))}
                   for s, (idx, y) in splits.items()}
    if metrics_path is not None:
        merged = {**json.loads(Path(metrics_path).read_text(encoding="utf-8")), **out}
        Path(metrics_path).write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
        out = merged
    return out


def manifest_entry(metrics: dict, weights_path: Path, model_id: str = ADULT_ID) -> dict:
    """The ``weights_manifest.json`` entry of the saved classifier (sha256 and size of the file)."""
    from latentshift.weights import sha256_of

    test = metrics.get("test", {})
    return {
        "id": model_id, "kind": "classifier", "architecture": metrics["architecture"],
        "architecture_kwargs": metrics["architecture_kwargs"], "labels": metrics["labels"],
        "thresholds": metrics["thresholds"], "resolution": 224, "input_range": [-1024, 1024],
        "format": "safetensors",
        "source": {"type": "file", "path": f"latentshift/embedded/{model_id}.safetensors",
                   "sha256": sha256_of(weights_path), "size": weights_path.stat().st_size},
        "embedded_default": False, "population": "adult", "findings": metrics["labels"],
        "license": "weights trained by this project on NIH ChestX-ray14 images (NIH Clinical Center; NIH states "
                   "no restrictions on their use; attribution in the model card)",
        "citation": "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray "
                    "Database and Benchmarks. IEEE CVPR 2017 (data: NIH Clinical Center, "
                    "https://nihcc.app.box.com/v/ChestXray-NIHCC); Cohen JP, Brooks R, En S, et al. "
                    "Gifsplanation via Latent Shift. MIDL 2021",
        "description": (f"Small multi-label CNN ({metrics['parameters']} parameters) for adult frontal chest X-rays, "
                        f"trained by this project on NIH ChestX-ray14 images only ({', '.join(metrics['labels'])}). "
                        "Thresholds: Youden's J per output on the validation split. Research and teaching demo, "
                        "not for clinical use."),
        "model_card": f"latentshift/embedded/{model_id}.md",
        "metrics": {"nih_test": {f: {"n": r["n"], "n_positive": r["n_positive"], "auc": r["auc"],
                                     "auc_ci95": r["auc_ci95"]} for f, r in test.items()}},
    }


def write_manifest_entry(metrics: dict, out_dir: Path, manifest_path: Path,
                         model_id: str = ADULT_ID) -> dict:
    """Add (or replace) the classifier's entry in the manifest at ``manifest_path``; returns the entry."""
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    entry = manifest_entry(metrics, Path(out_dir) / f"{model_id}.safetensors", model_id)
    manifest["models"] = [m for m in manifest["models"] if m["id"] != model_id] + [entry]
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("manifest entry %s written to %s", ADULT_ID, manifest_path)
    return entry


def add_recipe_flags(p) -> None:
    """The flags both adult recipes share (threads, exploration switches, GIFs, manifest)."""
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-test", action="store_true", help="exploration: never read the test split")
    p.add_argument("--no-save", action="store_true", help="write only the metrics JSON")
    p.add_argument("--gifs", default=None)
    p.add_argument("--n-gifs", type=int, default=6)
    p.add_argument("--manifest", type=Path, default=None, metavar="FILE",
                   help="also add (or replace) the model's entry in this manifest, e.g. weights_manifest.json "
                        "of a checkout (default: no manifest is written)")


def main(argv=None) -> int:
    """Command line: ``python -m latentshift_research train-adult [options]``."""
    p = argparse.ArgumentParser(description="Train the adult multi-label demo classifier (NIH only).")
    p.add_argument("--data", default=None)
    p.add_argument("--out", required=True, help="folder for the weights, metrics and model card")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default="encoder")
    p.add_argument("--no-encoder-init", action="store_true")
    p.add_argument("--recon-prob", type=float, default=0.5)
    p.add_argument("--mixup", type=float, default=0.4)
    p.add_argument("--device", default="cpu")
    add_recipe_flags(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    metrics = train_adult_classifier(a.data, a.out, epochs=a.epochs, seeds=tuple(a.seeds), device=a.device, arch=a.arch,
                           encoder_init=not a.no_encoder_init, recon_prob=a.recon_prob, mixup=a.mixup,
                           evaluate_test=not a.no_test, save=not a.no_save, gif_dir=a.gifs, n_gifs=a.n_gifs)
    if a.manifest and not a.no_save:
        write_manifest_entry(metrics, Path(a.out), a.manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
