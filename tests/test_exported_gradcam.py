"""Grad-CAM on a ``torch.export`` classifier whose card names no ``gradcam_layer``: the last
convolution of the exported graph is found and tapped; a graph without a convolution explains
without Grad-CAM, with a warning naming the card field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from latentshift.cli import main
from latentshift.core.attribution import GradCAM
from latentshift.weights.exported import ExportedClassifier, entry_from_card, load_program

REPO = Path(__file__).resolve().parents[1]
IMAGE = str(REPO / "examples" / "normal-IM-0225-0001.png")
FAST = ["--frames", "4", "--range", "-100", "100", "--ig-steps", "4"]


class BlockClassifier(nn.Module):
    """Convolutions in a Sequential (the README example's shape): (N, 1, 224, 224) -> logits (N, 2)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.features(x / 1024).mean((2, 3)))


class FunctionalClassifier(nn.Module):
    """Its only convolution is a functional call in the top-level forward (no Conv2d module)."""

    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(6, 1, 7, 7) / 7)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.relu(nn.functional.conv2d(x / 1024, self.kernel, stride=4)).mean((2, 3)))


class PoolingClassifier(nn.Module):
    """No convolution at all: pooled pixels into a linear head."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(nn.functional.adaptive_avg_pool2d(x / 1024, 8).flatten(1))


def export(model: nn.Module, folder: Path, name: str, **card_fields) -> tuple[Path, Path]:
    """Save ``model`` as a torch.export program with a dynamic batch and write its card."""
    torch.manual_seed(0)
    batch = torch.export.Dim("batch")
    program = torch.export.export(model.eval(), (torch.zeros(2, 1, 224, 224),), dynamic_shapes={"x": {0: batch}})
    path = folder / f"{name}.pt2"
    torch.export.save(program, str(path))
    card = {"labels": ["Opacity", "Other"], "thresholds": [0.5, 0.5], "population": "pediatric",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), **card_fields}
    card_path = folder / f"{name}.json"
    card_path.write_text(json.dumps(card))
    return path, card_path


def exported(model: nn.Module, folder: Path, name: str) -> ExportedClassifier:
    path, card = export(model, folder, name)
    entry = entry_from_card("classifier", [str(path)], str(card))
    return ExportedClassifier(load_program(path, name), entry).eval()


def test_the_last_convolution_of_the_graph_gives_the_modules_grad_cam(tmp_path):
    torch.manual_seed(1)
    model = BlockClassifier().eval()
    classifier = exported(model, tmp_path, "block")
    x = torch.randn(1, 1, 224, 224) * 400
    assert torch.allclose(classifier(x), model(x), atol=1e-5), "the tap changes nothing the program computes"
    ours = GradCAM(classifier).attribute(x, 0).map
    reference = GradCAM(model, layer=model.features[2]).attribute(x, 0).map
    assert ours.shape == (224, 224) and ours.max() > 0
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6 * float(reference.max()))


def test_a_functional_convolution_in_the_top_level_graph_is_tapped(tmp_path):
    torch.manual_seed(2)
    classifier = exported(FunctionalClassifier(), tmp_path, "functional")
    assert classifier.gradcam_missing is None and classifier.gradcam_layer is not None
    x = torch.randn(3, 1, 224, 224) * 400
    assert classifier(x).shape == (3, 2)
    saliency = GradCAM(classifier).attribute(x[:1], 1).map
    assert saliency.shape == (224, 224) and np.isfinite(saliency).all() and saliency.max() > 0


def test_explain_without_gradcam_layer_runs_grad_cam_from_the_graph(tmp_path):
    path, card = export(BlockClassifier(), tmp_path, "block")
    out = tmp_path / "out"
    assert main(["explain", IMAGE, "--classifier-file", str(path), "--card", str(card), "--target", "Opacity",
                 *FAST, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "gradcam.png").is_file() and "gradcam_skipped" not in [w["code"] for w in summary["warnings"]]


def test_without_any_convolution_grad_cam_is_skipped_with_a_warning_naming_the_card_field(tmp_path, caplog):
    path, card = export(PoolingClassifier(), tmp_path, "pooling")
    out = tmp_path / "out"
    assert main(["explain", IMAGE, "--classifier-file", str(path), "--card", str(card), "--target", "Opacity",
                 *FAST, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    skipped = [w["message"] for w in summary["warnings"] if w["code"] == "gradcam_skipped"]
    assert len(skipped) == 1 and "`gradcam_layer`" in skipped[0] and "no convolution" in skipped[0]
    assert not (out / "gradcam.png").exists()
    assert (out / "latentshift.gif").is_file() and (out / "integrated_gradients.png").is_file()
    assert len(summary["preds"]) == 4
    assert any("Grad-CAM skipped" in record.getMessage() for record in caplog.records), "the command line says it"


def test_a_card_naming_a_missing_layer_says_so(tmp_path):
    path, card = export(BlockClassifier(), tmp_path, "block", gradcam_layer="not_there")
    entry = entry_from_card("classifier", [str(path)], str(card))
    classifier = ExportedClassifier(load_program(path, "block"), entry)
    with pytest.raises(Exception, match="'not_there' names no submodule"):
        classifier.gradcam_layer
