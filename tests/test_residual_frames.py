"""Frames built on the input (``frames_from="input"``): x + D(z0 + λ·g) − D(z0), clipped.

With a linear autoencoder (D(z) = W_d·z) and a linear classifier (logit = w·x + b) everything is
known in closed form: the frame is x + λ·W_d·g, the gradient g = σ'(logit(x))·W_dᵀ·w, and the
prediction σ(w·frame + b). The paper's mode is pinned to the numbers the release before the
input mode gave.
"""

import json

import numpy as np
import pytest
import torch

from latentshift import LatentShift
from latentshift.core import ShiftOptions
from latentshift.io.describe import outcome_sentence
from tiny_models import LinearAutoencoder, LinearClassifier, SineClassifier

SIDE = 8


def image(seed: int = 3, scale: float = 500.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, SIDE, SIDE, generator=generator) * 2 - 1) * scale


def explainer(classifier=None) -> LatentShift:
    return LatentShift(classifier or LinearClassifier(SIDE, scale=2000.0), LinearAutoencoder(SIDE))


def explain(shift: LatentShift, x: torch.Tensor, target: int, **options):
    """The one result of image ``x`` (1, 1, H, W) with ``ShiftOptions(**options)``."""
    [result] = shift.attribute(x, target, ShiftOptions(**options))
    return result


def analytic(shift: LatentShift, x: torch.Tensor, target: int):
    """(g, W_d·g, p(λ) as a function) in closed form for the linear pair."""
    w = shift.classifier.linear.weight[target].detach().double()
    bias = float(shift.classifier.linear.bias[target].detach())
    decoder = shift.autoencoder.decoder.weight.detach().double()
    flat = x.flatten().double()
    logit = float(flat @ w) + bias
    sigma = 1.0 / (1.0 + np.exp(-logit))
    gradient = sigma * (1.0 - sigma) * (decoder.T @ w)
    step = (decoder @ gradient).view(1, SIDE, SIDE)

    def pred(frame: torch.Tensor) -> float:
        return float(torch.sigmoid(frame.flatten().double() @ w + bias))

    return gradient, step, pred


def test_the_zero_frame_is_the_input_bit_for_bit_and_its_prediction_the_classifiers():
    shift, x = explainer(), image()
    result = explain(shift, x, 1, lambda_range=(-2.0, 1.0), frames=7)
    assert result.frames_from == "input" and result.reconstruction_pred is None
    assert torch.equal(result.frames[result.zero_index], x[0])
    with torch.inference_mode():
        on_input = float(torch.sigmoid(shift.classifier(x))[0, 1])
    assert result.zero_pred == pytest.approx(on_input, abs=1e-7)
    assert result.initial_pred == pytest.approx(on_input, abs=1e-7)
    assert result.pixel_change[result.zero_index] == 0.0


def test_gradient_and_frames_are_the_closed_form_ones():
    shift, x = explainer(), image()
    gradient, step, pred = analytic(shift, x, 1)
    _, ours = shift.latent_gradient(x, 1, frames_from="input")
    torch.testing.assert_close(ours[0].double(), gradient, rtol=1e-4, atol=1e-12)
    result = explain(shift, x, 1, lambda_range=(-0.5, 0.3), frames=6)
    for lam, frame, p in zip(result.lambdas, result.frames, result.preds):
        expected = x[0].double() + float(lam) * step
        assert expected.abs().max() < 1024, "this range stays inside the pixel range (no clip)"
        torch.testing.assert_close(frame.double(), expected, rtol=0, atol=2e-3)
        assert p == pytest.approx(pred(frame), abs=1e-6), "the prediction is the classifier's on the frame shown"


def test_frames_are_clipped_to_the_pixel_range_and_predictions_follow_the_clipped_frames():
    shift, x = explainer(), image(scale=1000.0)
    _, step, pred = analytic(shift, x, 0)
    result = explain(shift, x, 0, lambda_range=(-60.0, 60.0), frames=5)
    assert result.frames.min() >= -1024 and result.frames.max() <= 1024
    for lam, frame, p in zip(result.lambdas, result.frames, result.preds):
        expected = (x[0].double() + float(lam) * step).clamp(-1024, 1024)
        # float32 frames: D(z0 + λ·g) − D(z0) of decoded values in the thousands rounds to ~1e-2
        torch.testing.assert_close(frame.double(), expected, rtol=0, atol=2e-2)
        assert p == pytest.approx(pred(frame), abs=1e-6)
    assert ((x[0].double() + 60 * step).abs() > 1024).any(), "the end frames do reach the clip"


def test_the_pixel_budget_is_the_change_from_the_input_and_the_search_ends_there():
    # No prediction rule can fire (pred_diff 1, floor 0): the curtail end is where
    # sum|λ·W_d·g| = budget · sum|x|, i.e. |λ| = budget · sum|x| / sum|W_d·g| (no clip this close).
    shift, x = explainer(), image()
    _, step, _ = analytic(shift, x, 1)
    exact = 0.05 * float(x.abs().sum()) / float(step.abs().sum())
    result = explain(shift, x, 1, direction="curtail", pixel_budget=0.05, pred_diff=1.0, floor=0.0, frames=4)
    assert result.stop_reasons["curtail"] == "pixel_budget"
    assert exact <= -result.lambda_range[0] <= exact * 1.02
    change = (result.frames - x[0]).abs().flatten(1).sum(1) / x.abs().sum()
    np.testing.assert_allclose(result.pixel_change, change.numpy(), rtol=1e-5, atol=1e-7)


def test_heatmap_max_is_measured_from_the_input():
    shift, x = explainer(), image()
    result = explain(shift, x, 1, lambda_range=(-2.0, 1.0), frames=4, heatmap="max")
    expected = (result.frames - x[0]).abs().amax(0)[0].numpy()
    np.testing.assert_allclose(result.heatmap, expected, rtol=1e-6, atol=1e-4)


def test_the_paper_mode_gives_the_numbers_of_the_release_before_the_input_mode():
    # Computed with the code before frames_from existed (same models, image, options).
    x = image(scale=1024.0)
    shift = explainer()
    fixed = explain(shift, x, 1, lambda_range=(-3.0, 2.0), frames=6, frames_from="reconstruction")
    np.testing.assert_allclose(fixed.lambdas, [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(fixed.preds, [0.464504, 0.669896, 0.826017, 0.917405, 0.962943, 0.983817], atol=2e-6)
    np.testing.assert_allclose(fixed.frames.double().abs().flatten(1).sum(1).numpy(),
                               [20826.56, 21087.7, 21927.04, 23350.28, 25288.1, 27609.77], rtol=1e-5)
    searched = explain(shift, x, 1, frames=6, pixel_budget=0.5, pred_diff=0.3, frames_from="reconstruction")
    np.testing.assert_allclose(searched.lambdas, [-2.2878, -1.7158, -1.1439, -0.5719, 0.0, 0.6367], atol=2e-4)
    np.testing.assert_allclose(searched.preds, [0.613753, 0.720962, 0.807735, 0.872303, 0.917405, 0.950204],
                               atol=2e-6)
    assert searched.stop_reasons == {"curtail": "pred_diff", "exaggerate": "ceiling"}
    assert fixed.frames_from == "reconstruction"
    assert torch.equal(fixed.frames[fixed.zero_index], fixed.reconstruction[0])


def test_a_path_that_turns_back_keeps_the_frame_that_went_furthest():
    # logit = 4·sin(mean / 30): curtailing passes the sine's trough and comes back up.
    shift = LatentShift(SineClassifier(period=30.0), LinearAutoencoder(SIDE))
    x = image(seed=5, scale=20.0)
    result = explain(shift, x, 0, lambda_range=(-10.0, 0.0), frames=11)
    lowest = int(np.argmin(result.preds))
    assert 0 < lowest < result.zero_index and result.preds[0] > result.preds[lowest] + 0.05, "the path turns back"
    assert result.counterfactual_index("curtail") == lowest
    assert result.counterfactual_index("exaggerate") is None
    threshold = float(result.preds[lowest] + result.preds[0]) / 2  # crossed at the trough, not at the end
    sentence = outcome_sentence("Finding", result.initial_pred, result.preds, result.lambdas, threshold,
                                {"curtail": "given_range"}, {}, (),
                                {"curtail": result.counterfactual_index("curtail")})
    assert f"at λ = {result.lambdas[lowest]:.0f}" in sentence and "turns back" in sentence
    if result.initial_pred >= threshold:
        assert "becomes negative" in sentence
    json.dumps(result.summary())
    assert result.summary()["counterfactual_lambdas"]["curtail"] == pytest.approx(result.lambdas[lowest])


def test_batched_input_mode_frames_keep_each_image():
    shift = explainer()
    xs = torch.cat([image(seed) for seed in (1, 2, 3)])
    results = shift.attribute(xs, [0, 1, 1], ShiftOptions(lambda_range=(-1.0, 1.0), frames=3))
    for x, result in zip(xs, results):
        assert torch.equal(result.frames[result.zero_index], x)
