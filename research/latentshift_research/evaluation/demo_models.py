"""``python -m latentshift_research evaluate-models``: recompute the shipped demo models' figures from their weights."""

from __future__ import annotations

import logging
from pathlib import Path



from ..training.data import (limit_indices, load_data)
from ..training.metrics import (latent_shift_report, binary_report, predict_probs, reconstruction_report)
from ..training.train import (AE_ID, CLF_ID, kermany_xy, nih_report)

logger = logging.getLogger(__name__)

def evaluate_models(data_dir=None, device: str = "cpu", limit: int | None = None,
                    shift_subset: int | None = None, gif_dir: Path | None = None, n_gifs: int = 12,
                    skip_shift: bool = False) -> dict:
    """Recompute the figures of both shipped demo models from the repository's weights."""
    from latentshift.weights import Manifest, load_model

    manifest = Manifest.load()
    ae = load_model(manifest.get(AE_ID, "autoencoder"), device)
    clf = load_model(manifest.get(CLF_ID, "classifier"), device)
    threshold = float(clf.thresholds[0])
    data = load_data(data_dir)
    results: dict = {}
    test_all = limit_indices(data.select(split="test"), limit)
    results["autoencoder_test"] = reconstruction_report(ae, data.images[test_all], device)
    test_idx, test_y = kermany_xy(data, "test", limit)
    probs = predict_probs(clf, data.images[test_idx], device)
    results["classifier_test"] = binary_report(test_y, probs, threshold)
    rec_probs = predict_probs(clf, data.images[test_idx], device, autoencoder=ae)
    results["classifier_test_on_reconstructions"] = binary_report(test_y, rec_probs, threshold)
    results["nih_out_of_domain"] = nih_report(clf, data, threshold, device, limit)
    results["threshold"] = threshold
    if not skip_shift:
        results["latent_shift"] = latent_shift_report(clf, ae, data, test_idx, test_y, probs, threshold,
                                                        shift_subset, gif_dir, n_gifs)
    return results


def format_results(results: dict) -> str:
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


