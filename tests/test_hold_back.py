"""An image the domain check calls "not a chest X-ray" is held back: predicted and checked, not
explained, unless ``allow_non_xray`` asks for it (pipeline, batch rows, compare, CLI); and the
classifier that answers for a finding is chosen by the finding and the image's population."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentshift.batch.results import explanation_row
from latentshift.compare import compare
from latentshift.errors import NotAChestXrayError, OptionsError
from latentshift.options import ExplainOptions
from latentshift.pipeline import Pipeline
from latentshift.weights.choice import choose_classifier, findings
from latentshift.weights.manifest import Manifest

REPO = Path(__file__).resolve().parents[1]
FAST = ExplainOptions(frames=4, ig_steps=4, lambda_range=(-50.0, 50.0))


def noise_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline.get()


def test_noise_is_held_back_with_the_reason(pipeline, tmp_path):
    image = pipeline.load_image(noise_png(tmp_path / "noise.png"))
    explanation = pipeline.explain(image, FAST, tmp_path / "out")
    assert explanation.held_back and "not a frontal chest X-ray" in explanation.held_back
    assert explanation.shift is None and explanation.gradcam is None and explanation.integrated_gradients is None
    assert explanation.outcome == explanation.held_back
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["held_back"] == explanation.held_back and summary["latent_shift"] is None
    assert sorted(summary["files"]) == ["input", "summary"]
    assert "not_a_chest_xray" in [w["code"] for w in summary["domain"]["warnings"]]


def test_allow_non_xray_explains_it_anyway(pipeline, tmp_path):
    image = pipeline.load_image(noise_png(tmp_path / "noise.png"))
    explanation = pipeline.explain(image, FAST.replace(allow_non_xray=True), tmp_path / "out")
    assert explanation.held_back is None and explanation.shift is not None
    assert "not_a_chest_xray" in [w["code"] for w in explanation.warnings]


def test_a_chest_xray_is_not_held_back(pipeline, tmp_path):
    example = sorted((REPO / "examples").glob("*.png"))[0]
    explanation = pipeline.explain(pipeline.load_image(example), FAST, tmp_path)
    assert explanation.held_back is None and explanation.shift is not None


def test_explain_many_holds_back_only_the_noise(pipeline, tmp_path):
    example = sorted((REPO / "examples").glob("*.png"))[0]
    images = [pipeline.load_image(example), pipeline.load_image(noise_png(tmp_path / "noise.png"))]
    explained = pipeline.explain_many(images, FAST, [tmp_path / "a", tmp_path / "b"])
    assert [e.held_back is None for e in explained] == [True, False]
    assert explained[0].shift is not None and explained[1].shift is None
    row = explanation_row({"name": "noise"}, explained[1], "b")
    assert row["error"].startswith("held back") and json.loads(row["predictions"]) and row["gif"] is None


def test_compare_refuses_noise_with_the_reason(tmp_path):
    with pytest.raises(NotAChestXrayError, match="not a frontal chest X-ray"):
        compare(noise_png(tmp_path / "noise.png"), "Pneumonia", out_dir=tmp_path / "c", options=FAST)


def test_cli_explain_holds_back_with_exit_code_3(tmp_path):
    noise = noise_png(tmp_path / "noise.png")
    run = subprocess.run([sys.executable, "-m", "latentshift", "explain", str(noise), "--out", str(tmp_path / "o"),
                          "--frames", "4", "--range", "-50", "50", "--maps", ""],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr[-2000:]
    assert "Not explained" in run.stdout and "allow_non_xray" in run.stdout
    assert ExplainOptions().allow_non_xray is False


def test_options_check_the_flag_type():
    with pytest.raises(OptionsError, match="allow non xray must be true or false"):
        ExplainOptions(allow_non_xray="yes").validate()


# ------------------------------------------------------------------ explain by finding

def test_every_finding_of_the_available_classifiers_is_offered():
    assert findings(Manifest.for_user()) == ["Cardiomegaly", "Effusion", "Mass", "Nodule", "Pneumonia"]


@pytest.mark.parametrize("finding, population, expected, fits", [
    ("Cardiomegaly", "adult", "demo-adult-cardiomegaly", True),
    ("Pneumonia", "pediatric", "demo-pneumonia-classifier", True),
    ("Pneumonia", "adult", "demo-adult-classifier", True),
    ("Mass", "pediatric", "demo-adult-classifier", False),  # only adult classifiers know Mass
])
def test_the_classifier_for_a_finding_fits_the_population(finding, population, expected, fits):
    choice = choose_classifier(Manifest.for_user(), finding, population, current="demo-pneumonia-classifier")
    assert (choice.classifier_id, choice.fits_population) == (expected, fits)
    assert choice.reason.startswith(expected) and finding in choice.reason
    assert ("with care" in choice.reason) == (not fits)


def test_a_finding_nobody_knows_gets_none_and_the_current_classifier_wins_a_tie():
    manifest = Manifest.for_user()
    assert choose_classifier(manifest, "Hernia", "adult") is None
    # both adult classifiers know Effusion and fit an adult image: the one answering now stays
    for current in ("demo-adult-classifier", "demo-adult-cardiomegaly"):
        assert choose_classifier(manifest, "effusion", "adult", current).classifier_id == current


def test_an_unavailable_classifier_is_never_chosen():
    manifest = Manifest.for_user()
    hub = [e for e in manifest.of_kind("classifier") if e.source_type == "hub"]
    # the paper's DenseNets know Hernia but are not cached here
    assert hub and all("Hernia" in e.labels for e in hub[:1])
    assert choose_classifier(manifest, "Hernia", None) is None


def test_for_finding_uses_the_domain_check_population():
    example = sorted((REPO / "examples" / "adult").glob("cardiomegaly-*.png"))[0]
    image = Pipeline.get().load_image(example)
    chosen, choice = Pipeline.for_finding("Cardiomegaly", image, current="demo-pneumonia-classifier")
    assert chosen.classifier_id == choice.classifier_id == "demo-adult-cardiomegaly"
    with pytest.raises(OptionsError, match="no classifier available here knows 'Hernia'"):
        Pipeline.for_finding("Hernia", image)
