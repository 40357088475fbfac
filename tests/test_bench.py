"""Smoke test of the benchmark: the baseline and ours agree, and the table prints (no timing checks)."""

import numpy as np
import pytest
import torch

from latentshift_research.tools import bench
from latentshift.core.shift import LatentShift, ShiftOptions
from tiny_models import LinearAutoencoder, LinearClassifier, write_tiny_manifest

TINY_SETTINGS = dict(frames=4, ig_steps=2, step_size=10.0)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    manifest = write_tiny_manifest(tmp_path_factory.mktemp("tiny"))
    return bench.ModelSource("tiny", str(manifest), "tiny-classifier", "tiny-autoencoder")


@pytest.mark.parametrize("lambda_range", [(-50.0, 80.0), None], ids=["fixed", "search"])
def test_baseline_and_ours_give_the_same_answer_and_the_table_prints(tiny_source, lambda_range, capsys):
    settings = bench.ShiftSettings(lambda_range=lambda_range, **TINY_SETTINGS)
    comparison = bench.compare(tiny_source, settings, repeats=1, isolate=False)

    assert comparison.equivalence.passed, comparison.equivalence.detail
    compared = comparison.ladder if lambda_range is None else comparison.paper
    assert (comparison.ladder is None) == (lambda_range is not None)
    assert comparison.paper is not None, "ours with the paper's frames runs in every mode"
    baseline, ours = comparison.baseline.outcome, compared.outcome
    np.testing.assert_allclose(baseline.lambdas, ours.lambdas, atol=1e-4)
    np.testing.assert_allclose(baseline.preds, ours.preds, atol=1e-4)
    assert len(ours.lambdas) == settings.frames
    assert comparison.ours.floor is not None and comparison.ours.floor["total"] > 0

    table = comparison.table()
    print(table)
    assert "PASS" in table and "end to end" in table and "baseline/ours" in table and "paper s" in table
    stage_rows = [line.split()[0] for line in table.splitlines()[2:]]
    assert ("search" in stage_rows) == (lambda_range is None)
    assert comparison.to_json()["equivalence"]["passed"] is True
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize("step_size", [2.0, 10.0, 40.0])
@pytest.mark.parametrize("target", [0, 1])
@pytest.mark.parametrize("search_batch", [None, 8])
def test_reference_style_search_matches_our_ladder_exactly(step_size, target, search_batch):
    classifier, autoencoder = LinearClassifier().eval(), LinearAutoencoder().eval()
    x = torch.linspace(-900, 900, 64).reshape(1, 1, 8, 8)
    settings = bench.ShiftSettings(step_size=step_size)
    [ours] = LatentShift(classifier, autoencoder).attribute(x, target, ShiftOptions(
        step_size=step_size, search="ladder", search_batch=search_batch, frames_from="reconstruction"))

    paper = bench.PaperStyleLatentShift(classifier, autoencoder)
    z, gradient, reconstruction, start = paper.latent_gradient(x, target)
    low, low_reason = paper.search_side(z, gradient, reconstruction, start, target, -1, settings)
    high, high_reason = paper.search_side(z, gradient, reconstruction, start, target, +1, settings)

    assert ours.lambda_range == (low, high)
    assert ours.stop_reasons == {"curtail": low_reason, "exaggerate": high_reason}


def test_a_different_answer_fails_the_check():
    outcome = bench.RequestOutcome(0, "a", np.array([-1.0, 0.0, 1.0]), np.array([0.2, 0.5, 0.8]), 0.5, 0.5,
                                   {"curtail": "floor"}, 3, np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)))
    shifted = bench.RequestOutcome(**{**outcome.__dict__, "preds": outcome.preds + 1e-3})
    assert bench.compare_outcomes(outcome, outcome).passed
    verdict = bench.compare_outcomes(outcome, shifted)
    assert not verdict.passed and "predictions differ" in verdict.detail


def test_seed_image_falls_back_to_a_synthetic_image(tmp_path):
    pixels = bench.seed_image(32, str(tmp_path / "missing.png"))
    assert pixels.shape == (32, 32) and pixels.min() >= -1024 and pixels.max() <= 1024
