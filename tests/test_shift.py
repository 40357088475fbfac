"""LatentShift in the paper's frame mode (frames D(z + λ·g)) on tiny linear models whose answers
are known analytically; the search rules tested here are the same in both frame modes (the input
mode's own tests are in test_residual_frames.py)."""

import numpy as np
import pytest
import torch

from latentshift import LatentShift
from latentshift.errors import OptionsError
from latentshift.core.shift import ShiftOptions, compute_heatmap, lambda_ladder, sweep_lambdas
from tiny_models import ConstantClassifier, LinearAutoencoder, LinearClassifier, SineClassifier

SIDE = 8


class PaperShift(LatentShift):
    """LatentShift with the paper's frames (``frames_from="reconstruction"``) unless told otherwise."""

    def explain(self, x, target, **options):
        """The one result of image ``x`` (1, 1, H, W) with ``ShiftOptions(**options)``."""
        [result] = self.attribute(x, target, ShiftOptions(**{"frames_from": "reconstruction", **options}))
        return result

    def latent_gradient(self, x, target, frames_from="reconstruction"):
        return super().latent_gradient(x, target, frames_from)


def image(seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, SIDE, SIDE, generator=generator) * 2 - 1) * 1024


def explainer(classifier=None, **kwargs) -> LatentShift:
    return PaperShift(classifier or LinearClassifier(SIDE), LinearAutoencoder(SIDE), **kwargs)


def test_gradient_is_analytic_for_linear_models():
    shift = explainer()
    x = image()
    z, gradient = shift.latent_gradient(x, target=0)
    w = shift.classifier.linear.weight[0]
    decoder = shift.autoencoder.decoder.weight
    logit = (decoder @ z[0]) @ w
    expected = torch.sigmoid(logit) * (1 - torch.sigmoid(logit)) * (decoder.T @ w)
    torch.testing.assert_close(gradient[0], expected, rtol=1e-4, atol=1e-9)


def test_curtail_lowers_and_exaggerate_raises_monotonically():
    result = explainer().explain(image(), 0, lambda_range=(-200.0, 200.0), frames=11)
    assert np.all(np.diff(result.lambdas) > 0)
    assert np.all(np.diff(result.preds) > 0), "prediction must rise with λ for a linear model"
    zero = result.zero_index
    assert result.lambdas[zero] == 0.0
    assert result.preds[0] < result.reconstruction_pred < result.preds[-1]


def test_fixed_range_matches_plain_per_lambda_loop():
    shift = explainer(batch_size=3)
    x = image()
    result = shift.explain(x, 1, lambda_range=(-150.0, 90.0), frames=9)
    z, gradient = shift.latent_gradient(x, 1)
    with torch.no_grad():
        for lam, frame, pred in zip(result.lambdas, result.frames, result.preds):
            expected_frame = shift.autoencoder.decode(z + float(lam) * gradient)
            expected_pred = torch.sigmoid(shift.classifier(expected_frame)[0, 1])
            # Pixels span [-1024, 1024]; a batched and a single decode may differ in float32
            # rounding by a few 1e-5 (measured up to 2.9e-5), so 1e-4 is the honest tolerance.
            torch.testing.assert_close(frame, expected_frame[0], rtol=1e-5, atol=1e-4)
            assert abs(float(expected_pred) - pred) < 1e-5


def test_sweep_includes_zero_and_has_requested_frame_count():
    lambdas = sweep_lambdas(-300.0, 100.0, 20)
    assert len(lambdas) == 20 and 0.0 in lambdas
    assert lambdas[0] == -300.0 and lambdas[-1] == 100.0
    assert np.all(np.diff(lambdas) > 0)
    only_curtail = sweep_lambdas(-50.0, 0.0, 5)
    np.testing.assert_allclose(only_curtail, [-50, -37.5, -25, -12.5, 0])
    assert list(sweep_lambdas(0.0, 0.0, 10)) == [0.0]


def test_ladder_follows_the_reference_rule_without_clipping():
    # λ ← λ − step + λ // 10 with floor division, as the reference implementation computes it
    assert lambda_ladder(10.0, 3000.0, -1)[:6] == [-10.0, -21.0, -34.0, -48.0, -63.0, -80.0]
    assert lambda_ladder(10.0, 3000.0, +1)[:6] == [10.0, 21.0, 34.0, 48.0, 63.0, 80.0]
    ladder = lambda_ladder(10.0, 100.0, -1)
    assert ladder[-1] < -100.0 and ladder[-2] > -100.0, "ends at the first rung past max λ, unclipped"
    assert lambda_ladder(10.0, 3000.0, -1)[-1] == -3103.0


def ladder(classifier=None, **kwargs):
    return explainer(classifier).explain(image(), 0, search="ladder", **kwargs)


def test_ladder_returns_the_rung_at_which_a_rule_fired():
    result = ladder(pred_diff=0.3, pixel_budget=10.0, frames=12)
    rungs = {"curtail": lambda_ladder(10.0, 3000.0, -1), "exaggerate": lambda_ladder(10.0, 3000.0, 1)}
    for side, end, pred in (("curtail", result.lambda_range[0], result.preds[0]),
                            ("exaggerate", result.lambda_range[1], result.preds[-1])):
        assert end in rungs[side]
        assert result.stop_reasons[side] in ("pred_diff", "floor", "ceiling")
        moved = abs(pred - result.reconstruction_pred)
        assert moved > 0.3 or pred < 0.05 or pred > 0.95, "the returned rung is where the rule fired"


def test_ladder_checks_floor_and_pred_diff_before_the_pixel_budget():
    # A huge first step: the prediction moves past pred_diff and the image past the budget
    # at the same rung; the reference names the prediction rule and returns that rung.
    result = ladder(step_size=2000.0, pixel_budget=0.01, pred_diff=0.2, frames=3)
    assert result.stop_reasons["curtail"] in ("floor", "pred_diff")
    assert result.lambda_range[0] == -2000.0 and result.pixel_change[0] > 0.01


def test_ladder_does_not_clip_at_max_lambda():
    result = ladder(max_lambda=15.0, pixel_budget=100.0, pred_diff=1.0, floor=0.0, ceiling=1.0, frames=5)
    assert result.stop_reasons == {"curtail": "max_lambda", "exaggerate": "max_lambda"}
    assert result.lambda_range == (-21.0, 21.0)


def test_ladder_stops_at_the_pixel_budget_on_the_rung_past_it():
    result = ladder(step_size=0.2, pixel_budget=0.05, pred_diff=1.0, frames=6)
    assert result.stop_reasons == {"curtail": "pixel_budget", "exaggerate": "pixel_budget"}
    assert result.pixel_change[0] > 0.05 and result.pixel_change[-1] > 0.05
    end = result.lambda_range[0]
    before = [lam for lam in lambda_ladder(0.2, 3000.0, -1) if lam > end][-1]
    check = explainer().explain(image(), 0, lambda_range=(before, 1.0), frames=2)
    assert check.pixel_change[0] <= 0.05


def test_bisect_ends_within_precision_of_a_fine_scan():
    # Linear models: p(λ) is monotone, so the first λ past pred_diff is well defined.
    shift = explainer()
    result = shift.explain(image(), 0, pred_diff=0.3, pixel_budget=10.0, frames=4, precision=0.02)
    fine = np.linspace(0.0, -400.0, 4001)
    scan = shift.explain(image(), 0, lambda_range=(-400.0, 0.0), frames=len(fine))
    start = result.reconstruction_pred
    fired = scan.lambdas[(scan.preds < start - 0.3) | (scan.preds < 0.05)]
    first = fired.max()  # the λ nearest 0 at which a rule fires
    assert result.stop_reasons["curtail"] in ("pred_diff", "floor")
    assert result.lambda_range[0] <= first + 0.1
    assert abs(result.lambda_range[0] - first) <= 0.02 * abs(first) + 0.1


def test_bisect_needs_fewer_evaluations_than_the_ladder_on_a_long_search():
    kwargs = dict(step_size=0.2, pred_diff=0.6, pixel_budget=10.0, frames=4, direction="curtail")
    bisect = explainer().explain(image(), 0, search="bisect", **kwargs)
    walked = explainer().explain(image(), 0, search="ladder", **kwargs)
    assert walked.evaluations > 20
    assert bisect.evaluations < 0.6 * walked.evaluations, (bisect.evaluations, walked.evaluations)
    assert abs(bisect.lambda_range[0] - walked.lambda_range[0]) <= 0.15 * abs(walked.lambda_range[0])


@pytest.mark.parametrize("rule", ["pixel_budget", "pred_diff"])
def test_bisect_aims_its_first_probe_so_that_linear_models_close_in_two(rule):
    # Linear models: the logit and the pixel change are exactly linear in λ, so the first
    # probe (the prediction's slope |∂p/∂z|² and one decode at -step_size, extended to the
    # limit) lands just past the end and the second just before it: 2 evaluations + λ = 0.
    shift = explainer()
    limits = dict(pixel_budget=0.3, pred_diff=1.0) if rule == "pixel_budget" else dict(pixel_budget=10.0,
                                                                                        pred_diff=0.2)
    result = shift.explain(image(), 0, direction="curtail", floor=0.0, frames=2, **limits)
    assert result.stop_reasons["curtail"] == rule
    assert result.evaluations == 3, result.evaluations
    z, gradient = shift.latent_gradient(image(), 0)
    with torch.no_grad():
        x0 = shift.autoencoder.decode(z)
        unit_change = float((shift.autoencoder.decode(z - gradient) - x0).abs().sum())
        logit0 = float(shift.classifier(x0)[0, 0])
        unit_logit = logit0 - float(shift.classifier(shift.autoencoder.decode(z - gradient))[0, 0])
    if rule == "pixel_budget":
        exact = 0.3 * float(x0.abs().sum()) / unit_change
    else:
        p0 = result.reconstruction_pred
        exact = (logit0 - float(torch.logit(torch.tensor(p0 - 0.2, dtype=torch.float64)))) / unit_logit
    assert exact <= -result.lambda_range[0] <= exact * 1.02


def test_bisect_on_a_steep_classifier_ends_within_precision():
    # Logit slope ~1e6 per unit λ: the first-order line leaves the logit range at once;
    # the first probe is clipped to step_size/100 and the bracket is narrowed from there.
    classifier = LinearClassifier(SIDE, scale=1.0)
    shift = explainer(classifier)
    with torch.no_grad():
        x0 = shift.autoencoder.decode(shift.autoencoder.encode(image()))
        classifier.linear.bias.copy_(-classifier(x0)[0])  # p = 0.5 on the reconstruction
    result = shift.explain(image(), 0, direction="curtail", pixel_budget=10.0, frames=2)
    assert result.stop_reasons["curtail"] in ("floor", "pred_diff")
    assert result.preds[0] < 0.05 and -result.lambda_range[0] < 0.1


def test_bad_search_mode_raises():
    with pytest.raises(OptionsError, match="search must be one of"):
        explainer().explain(image(), 0, search="walk")


def test_search_both_directions_reaches_pred_diff():
    result = explainer().explain(image(), 0, pred_diff=0.3, pixel_budget=10.0, frames=12)
    assert result.stop_reasons["curtail"] in ("pred_diff", "floor")
    assert result.stop_reasons["exaggerate"] in ("pred_diff", "ceiling")
    assert result.lambda_range[0] < 0 < result.lambda_range[1]
    start = result.reconstruction_pred
    assert result.preds[0] <= start - 0.3 or result.preds[0] < 0.05
    assert result.preds[-1] >= start + 0.3 or result.preds[-1] > 0.95
    assert len(result.lambdas) == 12


def test_bisect_stops_at_pixel_budget_just_past_it():
    result = explainer().explain(image(), 0, step_size=0.2, pixel_budget=0.05, pred_diff=1.0, frames=6)
    assert result.stop_reasons == {"curtail": "pixel_budget", "exaggerate": "pixel_budget"}
    assert 0.05 < result.pixel_change.max() <= 0.05 * 1.03


def test_bisect_clips_at_max_lambda():
    result = explainer().explain(image(), 0, max_lambda=15.0, pixel_budget=100.0, pred_diff=1.0,
                                   floor=0.0, ceiling=1.0, frames=5)
    assert result.stop_reasons == {"curtail": "max_lambda", "exaggerate": "max_lambda"}
    assert result.lambda_range == (-15.0, 15.0)


def test_search_stops_when_prediction_stops_moving():
    shift = PaperShift(SineClassifier(period=3.0), LinearAutoencoder(SIDE))
    result = shift.explain(image(), 0, step_size=50.0, pixel_budget=1e9, pred_diff=1.0,
                             max_lambda=1e5, frames=6, search="ladder")
    # Exaggerating overshoots the sine's peak at the first rung: the reference returns that rung.
    assert result.stop_reasons["exaggerate"] == "not_moving"
    assert result.lambda_range[1] == 50.0


def test_zero_gradient_gives_single_frame_without_crash():
    shift = PaperShift(ConstantClassifier(), LinearAutoencoder(SIDE))
    result = shift.explain(image(), 0, frames=10)
    assert result.stop_reasons == {"curtail": "not_moving", "exaggerate": "not_moving"}
    assert list(result.lambdas) == [0.0]
    assert result.heatmap.shape == (SIDE, SIDE) and not result.heatmap.any()


def test_single_direction_searches_one_side_only():
    curtail = explainer().explain(image(), 0, direction="curtail", pixel_budget=10.0)
    assert curtail.lambda_range[1] == 0.0 and curtail.lambdas[-1] == 0.0
    assert curtail.stop_reasons["exaggerate"] == "not_requested"
    exaggerate = explainer().explain(image(), 0, direction="exaggerate", pixel_budget=10.0)
    assert exaggerate.lambda_range[0] == 0.0 and exaggerate.lambdas[0] == 0.0


def test_batched_search_equals_one_at_a_time_search_and_reuses_cache():
    kwargs = dict(pred_diff=0.3, pixel_budget=10.0, frames=8)
    one_at_a_time = explainer(batch_size=1).explain(image(), 0, search="ladder", search_batch=1, **kwargs)
    batched = explainer(batch_size=16).explain(image(), 0, search="ladder", search_batch=8, **kwargs)
    assert one_at_a_time.lambda_range == batched.lambda_range
    np.testing.assert_allclose(one_at_a_time.preds, batched.preds, atol=1e-6)
    # The sweep's two ends were evaluated by the search and not decoded again.
    assert batched.evaluations < 1 + len(batched.lambdas) - 2 + 2 * 32


def test_deterministic_and_no_parameter_gradients():
    shift = explainer()
    first = shift.explain(image(), 0, frames=6)
    second = shift.explain(image(), 0, frames=6)
    np.testing.assert_array_equal(first.lambdas, second.lambdas)
    assert torch.equal(first.frames, second.frames)
    assert all(p.grad is None for p in shift.classifier.parameters())
    assert all(p.grad is None for p in shift.autoencoder.parameters())


def test_initial_pred_is_the_input_prediction():
    shift = explainer()
    x = image()
    result = shift.explain(x, 0, lambda_range=(-10.0, 10.0), frames=3)
    with torch.no_grad():
        expected = torch.sigmoid(shift.classifier(x)[0, 0])
    assert result.initial_pred == pytest.approx(float(expected), abs=1e-6)


def test_heatmap_modes_known_answers():
    reconstruction = torch.zeros(1, 1, 2, 2)
    frames = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]],
                           [[[2.0, 0.0], [0.0, 0.0]]],
                           [[[2.0, 4.0], [0.0, 0.0]]]])
    np.testing.assert_allclose(compute_heatmap(frames, reconstruction, "int"), [[1.0, 2.0], [0, 0]])
    np.testing.assert_allclose(compute_heatmap(frames, reconstruction, "max"), [[2.0, 4.0], [0, 0]])
    np.testing.assert_allclose(compute_heatmap(frames, reconstruction, "mean"), [[4 / 3, 4 / 3], [0, 0]])
    np.testing.assert_allclose(compute_heatmap(frames, reconstruction, "mm"), [[2.0, 4.0], [0, 0]])


def test_heatmap_marks_where_the_decoder_changes_the_image():
    result = explainer().explain(image(), 0, lambda_range=(-100.0, 100.0), frames=5, heatmap="mm")
    expected = (result.frames[0, 0] - result.frames[-1, 0]).abs().numpy()
    np.testing.assert_allclose(result.heatmap, expected, rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lambda_range=(5.0, 10.0)), "λ_min ≤ 0 ≤ λ_max"),
    (dict(direction="sideways"), "direction"),
    (dict(heatmap="fancy"), "heatmap"),
    (dict(frames=1), "frames"),
    (dict(step_size=0.0), "step_size"),
])
def test_bad_options_raise_clear_errors(kwargs, message):
    with pytest.raises(OptionsError, match=message):
        explainer().explain(image(), 0, **kwargs)
    with pytest.raises(OptionsError, match=message):
        ShiftOptions(**kwargs)


def test_bad_input_shape_and_values():
    for shape in ((1, SIDE, SIDE), (1, 2, SIDE, SIDE), (0, 1, SIDE, SIDE)):
        with pytest.raises(OptionsError, match=r"\(B, 1, H, W\) with B ≥ 1"):
            explainer().explain(torch.zeros(shape), 0)
    bad = image()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(OptionsError, match="NaN"):
        explainer().explain(bad, 0)


def test_summary_is_json_ready():
    import json

    result = explainer().explain(image(), 0, frames=4, pixel_budget=10.0)
    summary = json.loads(json.dumps(result.summary()))
    assert len(summary["lambdas"]) == len(summary["preds"]) == len(result.lambdas)
    assert set(summary["stop_reasons"]) == {"curtail", "exaggerate"}
