"""The compare view (one finding, several classifiers, one autoencoder) and what else moves along
the target's path, on tiny models where the answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from latentshift.cli import main
from latentshift.core.shift import LatentShift, ShiftOptions
from latentshift.io.describe import moving_findings, moving_findings_sentence, outcome_sentence
from latentshift.io.render import gif_frame_count
from tiny_models import write_tiny_manifest


@pytest.fixture()
def three_classifiers(tmp_path):
    """tiny-classifier and tiny-classifier-b (Pneumonia, Effusion) and tiny-pneumonia (Pneumonia only)."""
    path = write_tiny_manifest(tmp_path)
    data = json.loads(path.read_text())
    classifier = next(e for e in data["models"] if e["kind"] == "classifier")
    data["models"].append(dict(classifier, id="tiny-classifier-b", embedded_default=False))
    data["models"].append(dict(classifier, id="tiny-pneumonia", embedded_default=False, labels=["Pneumonia", ""],
                               thresholds=[0.5, None]))
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def xray_png(tmp_path):
    rng = np.random.default_rng(0)
    pixels = (128 + 40 * rng.standard_normal((32, 32))).clip(0, 255).astype(np.uint8)
    path = tmp_path / "xray.png"
    Image.fromarray(pixels).save(path)
    return path


def test_compare_cli_gives_one_gif_per_classifier_with_the_finding(three_classifiers, xray_png, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", str(xray_png), "--target", "Effusion", "--out", str(out), "--frames", "6",
                 "--manifest", str(three_classifiers)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    summary = json.loads((out / "compare.json").read_text())
    assert [run["classifier"] for run in summary["classifiers"]] == ["tiny-classifier", "tiny-classifier-b"]
    assert "tiny-pneumonia" not in stdout, "a classifier without the finding is not offered"
    for run in summary["classifiers"]:
        assert gif_frame_count(out / run["gif"]) == 2 * 6 - 2, "same frame count, palindromic loop"
        assert len(run["preds"]) == 6 and run["line"].startswith(run["classifier"] + " — Effusion:")
    assert (out / "compare.png").stat().st_size > 0


def test_compare_names_a_classifier_without_the_finding_as_skipped(three_classifiers, xray_png, tmp_path, capsys):
    code = main(["compare", str(xray_png), "--target", "Effusion", "--classifiers", "tiny-classifier,tiny-pneumonia",
                 "--out", str(tmp_path / "c"), "--frames", "4", "--manifest", str(three_classifiers)])
    assert code == 0
    assert "tiny-pneumonia — skipped: has no output 'Effusion'" in capsys.readouterr().out


def test_compare_without_target_or_with_an_unknown_one_says_so(three_classifiers, xray_png, tmp_path, capsys):
    assert main(["compare", str(xray_png), "--out", str(tmp_path / "c"), "--manifest", str(three_classifiers)]) == 2
    assert "needs --target" in capsys.readouterr().err
    assert main(["compare", str(xray_png), "--target", "Hernia", "--out", str(tmp_path / "c"),
                 "--manifest", str(three_classifiers)]) == 2
    assert "no classifier available here has the finding 'Hernia'" in capsys.readouterr().err


class BrightnessHead(nn.Module):
    """Logits linear in the mean pixel m (in [-1, 1]): (8m, −8m, 0): output 1 moves against output 0."""

    def forward(self, x):
        m = (x / 1024).mean((1, 2, 3))
        return torch.stack([8 * m, -8 * m, torch.zeros_like(m)], 1)


class ShiftAutoencoder(nn.Module):
    """z = x / 1024 (one number per pixel); decode = clamp(z) * 1024: a step in z is a step in brightness."""

    def encode(self, x):
        return x / 1024

    def decode(self, z):
        return z.clamp(-1, 1) * 1024


def test_other_findings_along_the_path_equal_the_hand_computed_predictions():
    x = torch.full((1, 1, 8, 8), 100.0)
    [result] = LatentShift(BrightnessHead(), ShiftAutoencoder()).attribute(
        x, 0, ShiftOptions(lambda_range=(-2.0, 2.0), frames=5))
    means = result.frames.mean((1, 2, 3)).double() / 1024
    expected = torch.sigmoid(torch.stack([8 * means, -8 * means, torch.zeros_like(means)], 1)).numpy()
    np.testing.assert_allclose(result.all_preds, expected, atol=1e-6)
    np.testing.assert_allclose(result.all_preds[:, 0], result.preds, atol=1e-9)
    moving = moving_findings(result.all_preds, ["Up", "Down", "Flat"], 0)
    assert [m["finding"] for m in moving] == ["Down"] and moving[0]["with_target"] is False
    assert moving[0]["change"] == pytest.approx(expected[-1, 1] - expected[0, 1], abs=1e-4)
    assert "Down moves against it" in moving_findings_sentence(moving, "Up")


def test_moving_findings_threshold_and_sign_on_a_hand_made_table():
    preds = np.array([[0.1, 0.50, 0.9, 0.30], [0.9, 0.55, 0.6, 0.45]])  # target column 0 rises by 0.8
    moving = moving_findings(preds, ["T", "small", "falls", "rises"], 0)
    assert [(m["finding"], m["with_target"]) for m in moving] == [("falls", False), ("rises", True)]
    assert moving[0]["change"] == pytest.approx(-0.3)


def test_outcome_sentence_says_both_ends_against_the_threshold_and_why():
    text = outcome_sentence("Effusion", 0.7, [0.1, 0.65, 0.9], [-50.0, 0.0, 40.0], 0.5,
                            {"curtail": "pixel_budget", "exaggerate": "ceiling"},
                            {"pred_diff": 0.8, "floor": 0.05, "ceiling": 0.95, "pixel_budget": 0.05, "max_lambda": 3000.0})
    assert "Effusion: 0.70 on the input (threshold 0.50: positive)" in text
    assert "curtailing takes it to 0.10, so it becomes negative (stopped because the image had changed by 5%)" in text
    assert "exaggerating takes it to 0.90, so it stays positive" in text
    # the verdict is against the input's side, even when the reconstruction (λ = 0) sits across the threshold
    text = outcome_sentence("Pneumonia", 0.22, [0.04, 0.19, 0.91], [-77.0, 0.0, 159.0], 0.20,
                            {"curtail": "floor", "exaggerate": "pixel_budget"},
                            {"pred_diff": 0.8, "floor": 0.05, "ceiling": 0.95, "pixel_budget": 0.05, "max_lambda": 3000.0})
    assert "(threshold 0.20: positive); curtailing takes it to 0.04, so it becomes negative" in text
    assert "exaggerating takes it to 0.91, so it stays positive" in text


def test_a_crossing_smaller_than_the_margin_is_told_as_touching_the_threshold():
    limits = {"pred_diff": 0.8, "floor": 0.05, "ceiling": 0.95, "pixel_budget": 0.05, "max_lambda": 3000.0}
    text = outcome_sentence("Effusion", 0.65, [0.59, 0.65], [-30.0, 0.0], 0.62, {"curtail": "pixel_budget"}, limits)
    assert "only touches the threshold (0.59 against 0.62: less than 0.05 past it, too close to call it negative)" \
        in text and "becomes" not in text
    text = outcome_sentence("Effusion", 0.65, [0.56, 0.65], [-30.0, 0.0], 0.62, {"curtail": "pixel_budget"}, limits)
    assert "curtailing takes it to 0.56, so it becomes negative" in text


def test_prediction_jitter_of_a_classifier_that_ignores_the_image_is_zero():
    from latentshift_research.tools.prediction_jitter import jitter, variants
    from tiny_models import ConstantClassifier

    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
    assert [v.shape for v in variants(images[0])] == [(32, 32)] * 4
    preds, deltas = jitter(ConstantClassifier(), images, 0)
    assert preds.shape == (3,) and deltas.shape == (3, 4) and not deltas.any()


def test_stop_words_use_the_limits_the_search_used(tmp_path):
    from latentshift import LatentShift
    from tiny_models import LinearAutoencoder, LinearClassifier

    shift = LatentShift(LinearClassifier(8, scale=2000.0), LinearAutoencoder(8))
    x = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 500
    [result] = shift.attribute(x, 1, ShiftOptions(floor=0.3, ceiling=0.7, pred_diff=1.0, pixel_budget=10.0, frames=3))
    assert result.stop_reasons == {"curtail": "floor", "exaggerate": "ceiling"}
    words = result.summary()["stop_reason_text"]
    assert words == {"curtail": "the prediction fell below 0.3", "exaggerate": "the prediction rose above 0.7"}
    sentence = outcome_sentence("F", result.initial_pred, result.preds, result.lambdas, None, result.stop_reasons,
                                result.limits)
    assert "fell below 0.3" in sentence and "rose above 0.7" in sentence
