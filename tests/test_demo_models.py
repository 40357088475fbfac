"""The embedded demo models: shipped files, loading, output shapes, a tiny training run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from latentshift_research.cli import training as training_cli
from latentshift_research.training import data, metrics, train
from latentshift.weights import Manifest, load_model, sha256_of

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr"
IDS = {"autoencoder": train.AE_ID, "classifier": train.CLF_ID}


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest.load(REPO / "weights_manifest.json")


@pytest.mark.parametrize("kind", ["autoencoder", "classifier"])
def test_shipped_files_match_manifest(manifest, kind):
    entry = manifest.get(IDS[kind], kind)
    assert entry.embedded_default
    assert entry.format == "safetensors" and entry.source_type == "file"
    path = REPO / entry.source["path"]
    assert path.is_file()
    assert path.stat().st_size == entry.size
    assert sha256_of(path) == entry.sha256
    assert manifest.default(kind).id == entry.id
    card = REPO / entry.info["model_card"]
    assert card.is_file() and "not for clinical use" in card.read_text(encoding="utf-8")
    metrics = json.loads((path.parent / f"{entry.id}.metrics.json").read_text(encoding="utf-8"))
    assert metrics["id"] == entry.id


def test_shipped_weights_total_size(manifest):
    total = sum(manifest.get(i).size for i in IDS.values())
    assert total <= 25 * 1024 * 1024


def test_classifier_loads_and_returns_logits(manifest):
    model = load_model(manifest.get(train.CLF_ID, "classifier"))
    assert model.pathologies == ["Pneumonia"]
    assert len(model.thresholds) == 1 and 0.0 < model.thresholds[0] < 1.0
    assert model.resolution == 224 and tuple(model.input_range) == (-1024.0, 1024.0)
    assert isinstance(model.gradcam_layer, torch.nn.Module)
    x = torch.linspace(-1024, 1024, 2 * 224 * 224).reshape(2, 1, 224, 224)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 1) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_autoencoder_loads_and_reconstructs(manifest):
    model = load_model(manifest.get(train.AE_ID, "autoencoder"))
    assert model.resolution == 224 and tuple(model.input_range) == (-1024.0, 1024.0)
    x = torch.linspace(-1024, 1024, 2 * 224 * 224).reshape(2, 1, 224, 224)
    with torch.no_grad():
        z = model.encode(x)
        rec = model.decode(z)
    assert z.shape == (2, 4, 28, 28)
    assert rec.shape == (2, 1, 224, 224) and torch.isfinite(rec).all()


def test_latent_gradient_reaches_the_latent(manifest):
    """The classifier's gradient flows through the decoder into z (Latent Shift needs it)."""
    ae = load_model(manifest.get(train.AE_ID, "autoencoder"))
    clf = load_model(manifest.get(train.CLF_ID, "classifier"))
    z = ae.encode(torch.zeros(1, 1, 224, 224)).clone().requires_grad_(True)
    torch.sigmoid(clf(ae.decode(z)))[0, 0].backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


def test_cli_registers_the_training_commands():
    from latentshift import cli as runtime_cli
    from latentshift_research import cli

    assert {cli.COMMANDS[name][0] for name in ("train", "evaluate-models")} == {"latentshift_research.cli.training"}
    assert not {"train", "evaluate-models"} & set(runtime_cli.COMMANDS)  # not in the runtime's command line


def test_training_commands_log_progress_by_default():
    import logging

    from latentshift_research import cli

    parser = cli.build_parser()
    for argv in (["train", "classifier", "--out", "o"], ["train", "autoencoder", "--out", "o"], ["evaluate-models"]):
        assert parser.parse_args(argv).default_log_level == logging.INFO  # loss per epoch without -v
    assert not hasattr(parser.parse_args(["evaluate-maps", "--data", "d"]), "default_log_level")  # one-line errors stay quiet


def test_metrics_helpers():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    t = metrics.youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9])
    assert 0.2 < t < 0.7
    r = metrics.binary_report([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.3], 0.5)
    assert (r["tp"], r["tn"], r["fp"], r["fn"]) == (1, 1, 1, 1)


def test_mixup_blends_images_and_labels_alike():
    # each image is constant and equal to its label, so a correct blend keeps image == label
    labels = torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0], [0.0]])
    images = labels.view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone()
    torch.manual_seed(0)
    mixed, mixed_labels = data.mixup_batch(images, labels, 0.4, torch.Generator().manual_seed(0))
    assert mixed.shape == images.shape and mixed_labels.shape == labels.shape
    assert torch.allclose(mixed[:, 0, 0, 0], mixed_labels[:, 0], atol=1e-6)
    assert torch.allclose(mixed.amax(dim=(1, 2, 3)), mixed.amin(dim=(1, 2, 3)))
    assert ((mixed_labels > 0) & (mixed_labels < 1)).any()  # some pairs of unlike labels were blended
    assert float(mixed_labels.min()) >= 0.0 and float(mixed_labels.max()) <= 1.0


def test_training_rejects_a_negative_mixup(tmp_path):
    with pytest.raises(train.LatentShiftError, match="mixup"):
        train.train_classifier(None, tmp_path, epochs=1, mixup=-0.1)


def test_candidate_choice_prefers_latent_shift_working_both_ways():
    def run(curtail, exaggerate, auc):
        return ({"val_curtail_share": curtail, "val_exaggerate_share": exaggerate, "val_auc": auc},)

    one_sided, balanced, balanced_better_auc = run(0.95, 0.40, 0.99), run(0.80, 0.85, 0.97), run(0.80, 0.90, 0.98)
    assert max([one_sided, balanced], key=train._candidate_score) is balanced
    assert max([balanced, balanced_better_auc], key=train._candidate_score) is balanced_better_auc
    assert train._candidate_score(run(float("nan"), 0.9, 0.9))[0] == 0.0  # no TPs on val counts as failure


def test_choosing_candidates_needs_the_autoencoder(tmp_path):
    with pytest.raises(train.LatentShiftError, match="autoencoder"):
        train.train_classifier(None, tmp_path, epochs=1, candidates=2)


@pytest.mark.skipif(not (DATA / "labels.csv").is_file(),
                    reason=f"chest X-ray data folder not found at {DATA} (checkout beside shared/)")
@pytest.mark.parametrize("kind", ["autoencoder", "classifier"])
def test_tiny_training_run_end_to_end(tmp_path, kind):
    parser = argparse.ArgumentParser()
    training_cli.add_cli(parser.add_subparsers(dest="command"))
    extra = ["--candidates", "2"] if kind == "classifier" else []  # two seeds, chosen on val
    args = parser.parse_args(["train", kind, "--data", str(DATA), "--out", str(tmp_path),
                              "--epochs", "1", "--limit", "2", "--batch-size", "2", "--seed", "1", *extra])
    assert args.func(args) == 0
    model_id = IDS[kind]
    weights = tmp_path / f"{model_id}.safetensors"
    metrics = json.loads((tmp_path / f"{model_id}.metrics.json").read_text(encoding="utf-8"))
    assert weights.is_file() and weights.stat().st_size > 0
    assert metrics["id"] == model_id and len(metrics["history"]) == 1
    if kind == "classifier":
        tried = metrics["recipe"]["candidates"]
        assert [c["seed"] for c in tried] == [1, 2] and metrics["recipe"]["seed"] in (1, 2)
        best = max(tried, key=lambda c: train._candidate_score((c,)))
        assert metrics["recipe"]["seed"] == best["seed"] and metrics["threshold"] == best["threshold"]
    from safetensors.torch import load_file

    from latentshift.models import build_architecture

    kwargs = dict(train.AE_KWARGS if kind == "autoencoder" else train.CLF_KWARGS)
    if kind == "classifier":
        kwargs["labels"] = ["Pneumonia"]
    model = build_architecture("demo-" + kind, **kwargs)
    model.load_state_dict(load_file(str(weights)), strict=True)


@pytest.mark.skipif(not (DATA / "labels.csv").is_file(),
                    reason=f"chest X-ray data folder not found at {DATA} (checkout beside shared/)")
def test_evaluate_models_includes_the_latent_shift_figures():
    from latentshift_research.evaluation.demo_models import evaluate_models

    results = evaluate_models(DATA, limit=6, shift_subset=2)
    shift = results["latent_shift"]
    assert shift["curtail_true_positives"]["n"] >= 1
    assert 0 <= shift["curtail_true_positives"]["success"] <= shift["curtail_true_positives"]["n"]


def test_head_ensemble_averages_pooled_logits_or_maps():
    """merge(): 'logits' is the mean of the single heads' outputs; 'maps' pools the mean map."""
    from latentshift.models.demo import DemoAEHeadClassifier

    torch.manual_seed(0)
    singles = [DemoAEHeadClassifier(("A", "B"), head_width=8, resolution=64).eval() for _ in range(3)]
    for model in singles:
        model.encoder.load_state_dict(singles[0].encoder.state_dict())
        torch.nn.init.normal_(model.heads.out.weight, std=3.0)  # maps that differ across space and heads
    x = torch.randn(2, 1, 64, 64) * 500
    with torch.no_grad():
        outputs = torch.stack([m(x) for m in singles])
        maps = torch.stack([m.logit_maps(x) for m in singles])
        by_logits = DemoAEHeadClassifier.merge(singles, keep=[1])(x)
        by_maps = DemoAEHeadClassifier.merge(singles, keep=[1], ensemble="maps")(x)
    torch.testing.assert_close(by_logits[:, 0], outputs.mean(0)[:, 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_maps[:, 0], singles[0].pool(maps.mean(0))[:, 1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(by_logits, by_maps)
