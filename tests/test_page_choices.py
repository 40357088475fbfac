"""The page's handlers for what is not a chest X-ray and for explaining by finding (no browser):
noise gets the banner and no probabilities, a chosen finding switches to the classifier that knows it
and fits the image's population, and the model list puts the unavailable ones last."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentshift.app import handlers

REPO = Path(__file__).resolve().parents[1]
ADULT = sorted((REPO / "examples" / "adult").glob("cardiomegaly-*.png"))[0]


@pytest.fixture
def noise(tmp_path) -> str:
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_noise_gets_the_banner_and_no_probabilities(noise):
    values = handlers.predict_upload(noise, "demo-pneumonia-classifier", "demo-autoencoder")
    assert values["predictions"] is None and values["explain_anyway"] is True
    assert "does not look like a chest X-ray" in values["banner"] and "Explain anyway" in values["banner"]
    assert "no prediction shown" in values["status"]


def test_an_adult_image_keeps_its_prediction_with_the_warning_and_an_offer(tmp_path):
    values = handlers.predict_upload(str(ADULT), "demo-pneumonia-classifier", "demo-autoencoder")
    assert values["predictions"] and values["banner"] == "" and values["explain_anyway"] is False
    assert "children" in values["warnings"]
    assert values["suggestion"] == "demo-adult-classifier"
    assert values["suggestion_label"].startswith("Use demo-adult-classifier: trained on adults'")


def test_choosing_cardiomegaly_switches_to_the_classifier_that_knows_it():
    values = handlers.choose_finding("Cardiomegaly", "demo-pneumonia-classifier", "demo-autoencoder", str(ADULT))
    assert values["classifier"] == "demo-adult-cardiomegaly" and values["target"] == "Cardiomegaly"
    assert values["answering"].startswith("demo-adult-cardiomegaly answers") and "adults'" in values["answering"]
    assert "Cardiomegaly" in values["predictions"] and values["suggestion"] is None
    # the same finding with the classifier that has it already: no switch, only the line
    same = handlers.choose_finding("Cardiomegaly", "demo-adult-cardiomegaly", "demo-autoencoder", str(ADULT))
    assert "classifier" not in same and same["target"] == "Cardiomegaly"


def test_the_finding_list_has_every_finding_and_the_model_list_the_unavailable_last():
    pipeline = handlers.pipeline_for("demo-pneumonia-classifier", "demo-autoencoder")
    names = [value for _, value in handlers.target_choices(pipeline)]
    assert names[0] == handlers.TOP_PREDICTION and {"Cardiomegaly", "Effusion", "Pneumonia"} <= set(names)
    pairs, _ = handlers.model_dropdown_choices("classifier")
    unavailable = ["unreachable" in label or "not cached" in label or "(" in label and "default" not in label
                   for label, _ in pairs]
    assert unavailable == sorted(unavailable), pairs


def test_a_held_back_explanation_shows_the_banner_and_its_button(noise, tmp_path):
    pipeline = handlers.pipeline_for(None, None)
    explanation = pipeline.explain(pipeline.load_image(noise), handlers.explain_options(
        "", "both", 4, 10, True, -20, 20, 100, 4), tmp_path)
    values = handlers.result_values(explanation)
    assert values["predictions"] is None and values["explain_anyway"] is True and values["gif"] is None
    assert "does not look like a chest X-ray" in values["banner"]
