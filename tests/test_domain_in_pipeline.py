"""The domain check with the shipped models: an adult X-ray shown to the pediatric classifier is
flagged out of domain (app, API and summary.json), the adult classifier takes it without that
warning, and noise is flagged as not a chest X-ray."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentshift.app import handlers
from latentshift.options import ExplainOptions
from latentshift.core.shift import ShiftOptions
from latentshift.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cxr"
FAST = ExplainOptions(frames=4, ig_steps=4, maps=(), lambda_range=(-50.0, 50.0))  # no search: fast


@pytest.fixture(scope="module")
def adult_effusion() -> Path:
    if not (DATA / "labels.csv").is_file():
        pytest.skip(f"no chest X-ray data at {DATA}")
    with open(DATA / "labels.csv", newline="", encoding="utf-8") as handle:
        row = next(r for r in csv.DictReader(handle) if r["source"] == "nih" and r["split"] == "test"
                   and "Effusion" in r["finding"])
    return DATA / row["file"]


def codes(warnings) -> list[str]:
    return [w["code"] for w in warnings]


def test_adult_image_with_the_pediatric_classifier_is_out_of_domain(adult_effusion, tmp_path):
    pipeline = Pipeline.get("demo-pneumonia-classifier")
    explanation = pipeline.explain(pipeline.load_image(adult_effusion), FAST, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "out_of_domain" in codes(summary["warnings"]) and summary["domain"]["population"] == "adult"
    assert "children" in summary["outcome"], "the outcome sentence carries the warning"
    assert explanation.warnings == summary["warnings"]


def test_the_adult_classifier_explains_effusion_without_that_warning(adult_effusion, tmp_path):
    pipeline = Pipeline.get("demo-adult-classifier")
    explanation = pipeline.explain(pipeline.load_image(adult_effusion), FAST.replace(target="Effusion"), tmp_path)
    assert explanation.target == "Effusion" and "out_of_domain" not in codes(explanation.warnings)
    assert set(explanation.other_findings) == set(pipeline.pathologies) - {"Effusion"}
    assert (tmp_path / "other_findings.png").is_file()


def test_the_app_offers_the_adult_classifier_in_one_click(adult_effusion):
    values = handlers.predict_upload(str(adult_effusion), "demo-pneumonia-classifier", "")
    assert values["suggestion"] == "demo-adult-classifier"
    assert "adult" in values["warnings"] and "children" in values["warnings"]
    assert handlers.predict_upload(str(adult_effusion), "demo-adult-classifier", "")["suggestion"] is None


def test_noise_is_flagged_as_not_a_chest_xray(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    pipeline = Pipeline.get()
    explanation = pipeline.explain(pipeline.load_image(buffer.getvalue()), FAST.replace(allow_non_xray=True), tmp_path)
    assert "not_a_chest_xray" in codes(explanation.warnings)
    assert "not look like a frontal chest X-ray" in explanation.outcome


def test_no_warning_on_the_examples(tmp_path):
    pipeline = Pipeline.get()
    for example in sorted((REPO / "examples").glob("*.png")):
        domain, warnings = pipeline.check_domain(pipeline.load_image(example))
        assert warnings == [], (example.name, warnings)
        assert domain["population"] == "pediatric"


def test_the_adult_examples_are_adult_true_positives_that_curtail_below_the_threshold(tmp_path):
    """The app's adult example row: each is an adult X-ray (no domain warning for the adult classifier),
    positive for Cardiomegaly, and its Latent Shift takes the prediction below the threshold."""
    examples = sorted((REPO / "examples" / "adult").glob("cardiomegaly-*.png"))
    assert len(examples) == 4
    pipeline = Pipeline.get("demo-adult-cardiomegaly", "demo-autoencoder")
    threshold = pipeline.thresholds["Cardiomegaly"]
    for example in examples:
        image = pipeline.load_image(example)
        domain, warnings = pipeline.check_domain(image)
        assert warnings == [] and domain["population"] == "adult", example.name
        assert pipeline.predict(image)["Cardiomegaly"] >= threshold, example.name
        [shift] = pipeline.explainer.attribute(image.tensor(), pipeline.target_index("Cardiomegaly", {})[1],
                                               ShiftOptions(direction="curtail", frames=4))
        assert min(shift.preds) < threshold, (example.name, shift.preds)
