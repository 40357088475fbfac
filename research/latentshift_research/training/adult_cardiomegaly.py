"""Adult multi-label classifier, second recipe: frozen autoencoder encoder + box-supervised heads.

Usage (the shipped recipe; see ``latentshift/embedded/demo-adult-cardiomegaly.md``)::

    python -m latentshift_research train-adult-cardiomegaly --data ../shared/data/cxr --out latentshift/embedded --seeds 0 1 2 3 \
        --epochs 24 --workers 2 --findings Cardiomegaly Effusion --box-weight '{"Cardiomegaly": 3, "Effusion": 3}' --manifest

Data: NIH rows only (``source == "nih"``, adults), targets from the ``finding`` column as in
:mod:`latentshift_research.training.adult`. Model: :class:`~latentshift.models.demo.DemoAEHeadClassifier`,
the demo autoencoder's encoder (copied, **frozen**: 64 channels at 28×28) followed by a small
conv head that outputs a 14×14 logit map per finding, pooled by log-mean-exp.

Losses per image and finding k:

* classification: BCE of the pooled logit, pos_weight = n_negative / n_positive (train split);
* box (weight ``box_weight``): per-cell BCE of the logit map against the radiologist box
  mask of k (fraction of each 16×16-pixel cell inside a box, from the ``bbox`` column),
  where the image has a box for k; against 0 everywhere where the image is negative for k;
  no box loss for positives without a box. This tells the heads *where* a finding is.

Augmentation: ``train.augment_classifier``'s affine / intensity / blur (no flips), with the
same affine applied to the box masks. One model per seed; the final model averages the heads'
pooled logits (an ensemble in one module, ``ensemble="logits"``). Seeds, epochs and kept outputs are chosen on the
validation split only; thresholds: Youden's J on validation. The test split decides nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from latentshift.errors import LatentShiftError
from latentshift.models.demo import DemoAEHeadClassifier
from .adult import (EMBEDDED, _split, add_recipe_flags, auc_table, evaluate_adult, predict_multi, select_outputs,
                    write_manifest_entry)
from .data import CXRData, intensity_jitter, load_data, random_affine
from .data import blur as _blur
from .metrics import roc_auc, youden_threshold
from .train import AE_ID, _batches, _optimizer_step, _seed_everything, load_demo_autoencoder, save_model

#: Id of this recipe's classifier (the first adult recipe's is ``demo-adult-classifier``).
ADULT_ID = "demo-adult-cardiomegaly"

logger = logging.getLogger(__name__)

FINDINGS = ("Cardiomegaly", "Effusion", "Atelectasis", "Pneumothorax", "Mass", "Nodule", "Infiltration",
            "Pneumonia")
SELECT_FINDINGS = ("Cardiomegaly", "Effusion")
BOX_NAMES = {"Infiltrate": "Infiltration"}
MASK_SIDE = 56  # box masks are built at 56×56 (4 px cells), pooled to the 14×14 logit grid
ARCH_NAME = "demo-ae-head-classifier"


# --------------------------------------------------------------------------- data

def box_masks(data: CXRData, indices, findings) -> tuple[torch.Tensor, torch.Tensor]:
    """Box masks and where the box loss applies.

    Returns masks (N, K, 56, 56) float32 in {0, 1} (1 inside a radiologist box of finding k,
    from the ``bbox`` column in 224-px coordinates) and known (N, K) float32: 1 where the
    image has a box of k or is negative for k (mask all 0), 0 where k is listed without a box.
    """
    s = MASK_SIDE / 224.0
    masks = torch.zeros(len(indices), len(findings), MASK_SIDE, MASK_SIDE)
    known = torch.zeros(len(indices), len(findings))
    for n, i in enumerate(indices):
        row = data.rows[i]
        listed = set(row["finding"].split("|"))
        for b in json.loads(row["bbox"]) if row["bbox"] else []:
            name = BOX_NAMES.get(b["label"], b["label"])
            if name in findings:
                k = findings.index(name)
                x0, y0 = int(math.floor(b["x"] * s)), int(math.floor(b["y"] * s))
                x1, y1 = int(math.ceil((b["x"] + b["w"]) * s)), int(math.ceil((b["y"] + b["h"]) * s))
                masks[n, k, max(y0, 0):y1, max(x0, 0):x1] = 1.0
                known[n, k] = 1.0
        for k, name in enumerate(findings):
            if name not in listed:
                known[n, k] = 1.0
    return masks, known


def augment_with_masks(u8: torch.Tensor, masks: torch.Tensor,
                       gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``train.augment_classifier`` (affine, contrast, brightness, gamma, blur; no flips) with the
    same affine applied to the masks. u8 (N, H, W), masks (N, K, 56, 56) -> image (N, 1, H, W) in
    [-1024, 1024] and masks pooled to cell fractions (N, K, 14, 14)."""
    y = u8.float().unsqueeze(1) / 255.0
    n = y.shape[0]
    theta = random_affine(n, gen)
    y = F.grid_sample(y, F.affine_grid(theta, list(y.shape), align_corners=False), mode="bilinear",
                      padding_mode="border", align_corners=False)
    m = F.grid_sample(masks, F.affine_grid(theta, list(masks.shape), align_corners=False), mode="bilinear",
                      padding_mode="zeros", align_corners=False)
    y = intensity_jitter(y, gen, contrast=0.25, brightness=0.10, gamma=0.4)
    blur = torch.rand(n, generator=gen) < 1 / 3
    if blur.any():
        y[blur] = _blur(y[blur], 0.5 + float(torch.rand(1, generator=gen)) * 1.0)
    return y * 2048.0 - 1024.0, F.avg_pool2d(m, MASK_SIDE // 14)


# ---------------------------------------------------------------------- training

def head_loss(model: DemoAEHeadClassifier, x: torch.Tensor, y: torch.Tensor, cells: torch.Tensor,
              known: torch.Tensor, pos_weight: torch.Tensor, box_weight) -> torch.Tensor:
    """Classification BCE (pooled logits vs y (N, K)) + box_weight × per-cell BCE of the logit
    maps (N, K, 14, 14) vs the cell fractions ``cells`` where ``known`` (N, K) is 1.
    ``box_weight``: one float or K floats (one per finding)."""
    with torch.set_grad_enabled(any(p.requires_grad for p in model.encoder.parameters())):
        h = model.encoder(x / 1024.0)
    maps = model.heads(h)  # one head in training: (N, K, 14, 14)
    loss = F.binary_cross_entropy_with_logits(model.pool(maps), y, pos_weight=pos_weight)
    box_weight = torch.as_tensor(box_weight, dtype=torch.float32).expand(y.shape[1])
    if box_weight.sum() > 0 and known.sum() > 0:
        cell = F.binary_cross_entropy_with_logits(maps, cells, reduction="none").mean((-2, -1))
        loss = loss + (cell * known * box_weight).sum() / known.sum()
    return loss


def fit_head(data: CXRData, ae: nn.Module, train_idx, y_train: np.ndarray, val_idx, y_val: np.ndarray, findings,
             *, seed: int, epochs: int, batch_size: int = 32, lr: float = 2e-3, weight_decay: float = 1e-3,
             box_weight: float | dict = 1.0, head_width: int = 48, lse_r: float = 2.0, dropout: float = 0.2,
             encoder_lr: float = 0.0, select=SELECT_FINDINGS) -> tuple[DemoAEHeadClassifier, list[dict], float]:
    """One seeded run (encoder copied from ``ae``; frozen unless ``encoder_lr`` > 0; AdamW, one-cycle
    schedule). Returns the model after the last epoch, the per-epoch validation AUCs and the seconds."""
    gen = _seed_everything(seed)
    if isinstance(box_weight, dict):
        box_weight = [float(box_weight.get(f, box_weight.get("default", 1.0))) for f in findings]
    model = DemoAEHeadClassifier(list(findings), head_width=head_width, lse_r=lse_r, dropout=dropout)
    model.init_from_autoencoder(ae)
    model.encoder.requires_grad_(encoder_lr > 0)
    masks, known = box_masks(data, train_idx, list(findings))
    pos = y_train.sum(0)
    pos_weight = torch.tensor((len(y_train) - pos) / np.maximum(pos, 1), dtype=torch.float32)
    groups = [{"params": list(model.heads.parameters()), "lr": lr}]
    if encoder_lr > 0:
        groups.append({"params": list(model.encoder.parameters()), "lr": encoder_lr})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    steps = epochs * len(_batches(train_idx, batch_size, torch.Generator(), True))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.1)
    where = {i: n for n, i in enumerate(train_idx)}
    sel = [list(findings).index(f) for f in select]
    history, t0 = [], time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        model.encoder.eval()
        for batch in _batches(train_idx, batch_size, gen, drop_last=True):
            rows = [where[i] for i in batch]
            x, cells = augment_with_masks(data.images[batch], masks[rows], gen)
            loss = _optimizer_step(opt, sched, steps, head_loss(model, x, torch.from_numpy(y_train[rows]), cells,
                                                                known[rows], pos_weight, box_weight))
        probs = predict_multi(model, data.images[val_idx])
        aucs = {f: roc_auc(y_val[:, k], probs[:, k]) for k, f in enumerate(findings)}
        history.append({"epoch": epoch, "val_auc": aucs, "val_select_auc": float(np.mean([aucs[findings[k]] for k in sel]))})
        logger.info("seed %d epoch %d/%d loss %.3f val %s %.0f s", seed, epoch, epochs, loss,
                    " ".join(f"{f[:5]}={a:.3f}" for f, a in aucs.items()), time.time() - t0)
    return model.eval(), history, time.time() - t0


# ------------------------------------------------------------------------ recipe

_WORK: dict = {}


def _seed_job(seed: int) -> tuple[dict, list[dict], float]:
    """Worker: one seed of :func:`fit_head` on the data in ``_WORK`` (set before forking)."""
    torch.set_num_threads(1)
    w = _WORK
    (tr, y_tr), (va, y_va) = w["splits"]["train"], w["splits"]["val"]
    model, history, seconds = fit_head(w["data"], w["ae"], tr, y_tr, va, y_va, w["findings"], seed=seed, **w["opts"])
    return model.state_dict(), history, seconds


def _train_seeds(data, ae, splits, findings, seeds, opts, workers: int) -> tuple[list, list[dict]]:
    """Train one single-head model per seed, ``workers`` processes at a time (fork; 1 thread each).
    Returns the models (in seed order) and one run record per seed."""
    import multiprocessing

    _WORK.update(data=data, ae=ae, splits=splits, findings=findings, opts=opts)
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_seed_job, list(seeds), chunksize=1)
    else:
        results = [_seed_job(s) for s in seeds]
    models, runs = [], []
    for seed, (state, history, seconds) in zip(seeds, results):
        model = DemoAEHeadClassifier(list(findings), head_width=opts["head_width"], lse_r=opts["lse_r"],
                                     dropout=opts["dropout"])
        model.load_state_dict(state)
        models.append(model.eval())
        runs.append({"seed": seed, "train_time_s": round(seconds, 1), "val_auc_last": history[-1]["val_auc"],
                     "history": history})
    return models, runs


def _ensemble_probs(models, data: CXRData, idx) -> np.ndarray:
    """(N, K) sigmoid of the head-averaged logits of single-head ``models``."""
    merged = DemoAEHeadClassifier.merge(models)
    return predict_multi(merged, data.images[idx])


def train_adult2_classifier(data_dir, out_dir, *, seeds=(0, 1, 2, 3, 4, 5), epochs: int = 30,
                            findings=FINDINGS, box_weight: float | dict = 1.0, head_width: int = 48, lse_r: float = 2.0,
                            lr: float = 2e-3, weight_decay: float = 1e-3, dropout: float = 0.2,
                            encoder_lr: float = 0.0, workers: int = 1, keep_min_lower: float = 0.5, n_boot: int = 2000, evaluate_test: bool = True,
                            save: bool = True, gif_dir=None, n_gifs: int = 6, shift_findings=SELECT_FINDINGS,
                            autoencoder_path=None) -> dict:
    """Train one head per seed, average all heads into one model, keep the outputs whose
    validation AUC 95 % lower bound is above ``keep_min_lower``, set Youden thresholds on
    validation and evaluate (AUC with bootstrap CIs, Latent Shift curtail counts). With
    ``evaluate_test=False`` the test split is never read. Returns the metrics dict."""
    out_dir, t_start = Path(out_dir), time.time()
    findings = list(findings)
    data = load_data(data_dir)
    ae = load_demo_autoencoder(autoencoder_path or EMBEDDED / f"{AE_ID}.safetensors")
    splits = {s: _split(data, s, findings) for s in ("train", "val", "test")}
    va, y_va = splits["val"]
    opts = {"epochs": epochs, "box_weight": box_weight, "head_width": head_width, "lse_r": lse_r, "lr": lr,
            "weight_decay": weight_decay, "dropout": dropout, "encoder_lr": encoder_lr}
    models, runs = _train_seeds(data, ae, splits, findings, seeds, opts, workers)
    train_s = sum(r["train_time_s"] for r in runs)
    probs = _ensemble_probs(models, data, va)
    thresholds = [youden_threshold(y_va[:, k], probs[:, k]) for k in range(len(findings))]
    val_table = auc_table(y_va, probs, findings, thresholds, n_boot)
    logger.info("ensemble val AUC %s", {f: round(r["auc"], 3) for f, r in val_table.items()})
    keep, dropped = select_outputs(findings, val_table, keep_min_lower)
    if not keep:
        raise LatentShiftError(f"no output learned anything on the validation split: {dropped}")
    kept = [findings[k] for k in keep]
    model = DemoAEHeadClassifier.merge(models, keep, [thresholds[k] for k in keep])
    splits = {s: (idx, y[:, keep]) for s, (idx, y) in splits.items()}
    evaluation = evaluate_adult(model, ae, data, splits, device="cpu", n_boot=n_boot,
                                shift_findings=[f for f in kept if f in shift_findings], evaluate_test=evaluate_test,
                                gif_dir=None if gif_dir is None else Path(gif_dir), n_gifs=n_gifs)
    kwargs = {"encoder_widths": [16, 32, 64], "head_width": head_width, "n_heads": len(models),
              "ensemble": "logits", "lse_r": lse_r, "dropout": dropout}
    metrics = {
        "id": ADULT_ID, "kind": "classifier", "architecture": ARCH_NAME, "architecture_kwargs": kwargs,
        "labels": kept, "thresholds": list(model.thresholds), "population": "adult",
        "parameters": sum(p.numel() for p in model.parameters()),
        "threshold_rule": "Youden's J maximised per output on the NIH validation split",
        "recipe": {**opts, "seeds": list(seeds), "trained_outputs": findings, "encoder": "demo-autoencoder encoder, frozen",
                   "loss": "BCE (pos_weight n_neg/n_pos) on log-mean-exp pooled logits + box_weight x per-cell BCE "
                           "of the 14x14 logit maps vs box masks (boxed positives) or 0 (negatives)",
                   "augmentation": "affine rot 10 deg, scale 0.9-1.15, shift 6% (masks too), contrast 25%, "
                                   "brightness 10%, gamma 0.7-1.4, blur p=1/3; no flips",
                   "runs": runs},
        "val_all_trained_outputs": val_table, "dropped_outputs": dropped,
        "data": {s: {"n": len(idx), "positives": dict(zip(kept, y.sum(0).astype(int).tolist()))}
                 for s, (idx, y) in splits.items() if s != "test" or evaluate_test},
        **evaluation, "train_time_s": round(train_s, 1), "wall_time_s": round(time.time() - t_start, 1),
        "torch": torch.__version__,
    }
    if save:
        save_model(model, out_dir, ADULT_ID, metrics,
              {"architecture_kwargs": kwargs, "thresholds": list(model.thresholds), "labels": kept})
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{ADULT_ID}.metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def load_adult2_classifier(weights_path) -> DemoAEHeadClassifier:
    """The saved classifier, rebuilt from its safetensors metadata (kwargs, labels, thresholds)."""
    from safetensors import safe_open

    from latentshift.models import build_architecture
    from latentshift.weights import read_state_dict

    with safe_open(str(weights_path), "pt") as handle:
        meta = {k: json.loads(v) for k, v in (handle.metadata() or {}).items()}
    model = build_architecture(ARCH_NAME, labels=meta["labels"], thresholds=meta["thresholds"],
                               **meta["architecture_kwargs"])
    model.load_state_dict(read_state_dict(Path(weights_path), "safetensors"), strict=True)
    return model.eval()


def evaluate_saved(out_dir, data_dir=None, *, n_boot: int = 2000, gif_dir=None, n_gifs: int = 6,
                   shift_findings=SELECT_FINDINGS) -> dict:
    """Val and test figures of ``<out_dir>/demo-adult-classifier.safetensors`` (AUCs with 95 % CIs,
    on reconstructions, Latent Shift curtail counts), merged into its ``.metrics.json``."""
    out_dir = Path(out_dir)
    model = load_adult2_classifier(out_dir / f"{ADULT_ID}.safetensors")
    ae = load_demo_autoencoder(EMBEDDED / f"{AE_ID}.safetensors")
    data = load_data(data_dir)
    splits = {s: _split(data, s, model.pathologies) for s in ("val", "test")}
    out = evaluate_adult(model, ae, data, splits, device="cpu", n_boot=n_boot,
                         shift_findings=[f for f in model.pathologies if f in shift_findings], evaluate_test=True,
                         gif_dir=None if gif_dir is None else Path(gif_dir), n_gifs=n_gifs)
    out["data"] = {s: {"n": len(idx), "positives": dict(zip(model.pathologies, y.sum(0).astype(int).tolist()))}
                   for s, (idx, y) in splits.items()}
    path = out_dir / f"{ADULT_ID}.metrics.json"
    merged = {**json.loads(path.read_text(encoding="utf-8")), **out}
    path.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    return merged


def write_manifest(metrics: dict, out_dir, manifest_path: Path) -> dict:
    """:func:`latentshift_research.training.adult.write_manifest_entry` with this recipe's description; returns the entry."""
    entry = write_manifest_entry(metrics, Path(out_dir), manifest_path, model_id=ADULT_ID)
    path = Path(manifest_path)
    manifest = json.loads(path.read_text(encoding="utf-8"))
    entry["description"] = (
        f"Adult frontal chest X-ray classifier ({metrics['parameters']} parameters): the demo autoencoder's encoder "
        f"(frozen) plus {metrics['architecture_kwargs']['n_heads']} averaged box-supervised conv heads, trained by "
        f"this project on NIH ChestX-ray14 images only ({', '.join(metrics['labels'])}). Threshold: Youden's J on "
        "the validation split. Research and teaching demo, not for clinical use.")
    manifest["models"] = [entry if m["id"] == ADULT_ID else m for m in manifest["models"]]
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return entry


def main(argv=None) -> int:
    """Command line: ``python -m latentshift_research train-adult-cardiomegaly [options]``."""
    p = argparse.ArgumentParser(description="Adult classifier: frozen AE encoder + box-supervised heads (NIH only).")
    p.add_argument("--data", default=None)
    p.add_argument("--out", required=True, help="folder for the weights, metrics and model card")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--findings", nargs="+", default=list(FINDINGS))
    p.add_argument("--box-weight", default="1.0",
                   help='one float, or JSON {"Cardiomegaly": 3, "default": 1} (per finding)')
    p.add_argument("--head-width", type=int, default=48)
    p.add_argument("--lse-r", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--encoder-lr", type=float, default=0.0, help="> 0: fine-tune the encoder (exploration)")
    p.add_argument("--workers", type=int, default=1, help="seeds trained in parallel (processes)")
    add_recipe_flags(p)
    p.add_argument("--evaluate-only", action="store_true",
                   help="no training: evaluate <out>/demo-adult-cardiomegaly.safetensors on val and test")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    if a.evaluate_only:
        metrics = evaluate_saved(a.out, a.data, gif_dir=a.gifs, n_gifs=a.n_gifs)
        if a.manifest:
            write_manifest(metrics, a.out, a.manifest)
        return 0
    metrics = train_adult2_classifier(a.data, a.out, seeds=tuple(a.seeds), epochs=a.epochs, findings=a.findings,
                                      box_weight=json.loads(a.box_weight), head_width=a.head_width, lse_r=a.lse_r, lr=a.lr,
                                      weight_decay=a.weight_decay, dropout=a.dropout, encoder_lr=a.encoder_lr,
                                      workers=a.workers, evaluate_test=not a.no_test,
                                      save=not a.no_save, gif_dir=a.gifs, n_gifs=a.n_gifs)
    if a.manifest and not a.no_save:
        write_manifest(metrics, a.out, a.manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
