"""The counterfactual-quality report: its measures on cases whose answers are known, and the command end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from latentshift_research.cli import main
from latentshift.core.shift import ShiftResult
from latentshift_research.evaluation import counterfactuals as cf

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr"


def test_frechet_distance_of_gaussians_with_the_same_covariance_is_the_squared_mean_shift():
    rng = np.random.default_rng(0)
    first = rng.normal(size=(4000, 3))
    second = first + np.array([1.0, 2.0, 0.0])
    assert cf.frechet_distance(first, first) == pytest.approx(0.0, abs=1e-4)
    assert cf.frechet_distance(first, second) == pytest.approx(5.0, rel=1e-3)
    wider = first * 2.0  # same mean; covariances I and 4·I in 3 dimensions: trace(I + 4I − 2·2I) = 3
    assert cf.frechet_distance(first, wider) == pytest.approx(3.0, rel=0.05)


def test_sharpness_ratio_is_one_for_the_image_and_small_for_a_blurred_copy():
    rng = np.random.default_rng(1)
    image = rng.uniform(-1024, 1024, size=(64, 64))
    blurred = ndimage.gaussian_filter(image, 2.0)
    assert cf.laplacian_variance(image) / cf.laplacian_variance(image) == 1.0
    assert cf.laplacian_variance(blurred) / cf.laplacian_variance(image) < 0.05


def shift_result(preds, lambdas, frames, pixel_change) -> ShiftResult:
    frames = torch.as_tensor(np.asarray(frames, dtype=np.float32))[:, None]
    return ShiftResult(lambdas=np.asarray(lambdas, float), preds=np.asarray(preds, float), frames=frames,
                       heatmap=np.zeros(frames.shape[-2:], np.float32), reconstruction=frames[:1],
                       initial_pred=float(preds[list(lambdas).index(0.0)]), reconstruction_pred=None,
                       lambda_range=(min(lambdas), max(lambdas)), stop_reasons={}, target=0,
                       pixel_change=np.asarray(pixel_change, float), frames_from="input")


def test_judge_case_validity_proximity_and_box_share_known_answers():
    x = np.full((4, 4), 100.0)
    curtailed = x.copy()
    curtailed[0, 0] += 40.0  # the whole change in one pixel
    frames = [curtailed, x + np.eye(4) * 8, x]
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    # the λ = -2 frame crosses 0.5 but is over the budget; λ = -1 stays inside it and does not cross
    result = shift_result([0.3, 0.6, 0.9], [-2.0, -1.0, 0.0], frames, [0.08, 0.02, 0.0])
    case = cf.judge_case(result, x, "tp", threshold=0.5, pixel_budget=0.05, mask=mask, row=7)
    assert not case.valid, "a crossing only past the pixel budget does not count"
    assert case.proximity == pytest.approx(40.0 / 16) and case.relative_proximity == pytest.approx(40.0 / 1600)
    assert case.box_share == 1.0 and case.box_area == pytest.approx(2 / 16)
    inside = cf.judge_case(shift_result([0.3, 0.4, 0.9], [-2.0, -1.0, 0.0], frames, [0.08, 0.02, 0.0]),
                           x, "tp", threshold=0.5, pixel_budget=0.05, mask=None, row=7)
    assert inside.valid and inside.box_share is None
    exaggerated = cf.judge_case(shift_result([0.1, 0.3, 0.6], [0.0, 1.0, 2.0], [x, x, curtailed], [0, 0.01, 0.03]),
                                x, "tn", threshold=0.5, pixel_budget=0.05, mask=None, row=1)
    assert exaggerated.valid and np.array_equal(exaggerated.counterfactual, curtailed)


def test_bootstrap_interval_holds_the_statistic():
    value, low, high = cf.bootstrap(np.arange(100.0))
    assert value == 49.5 and low < value < high
    assert all(np.isnan(cf.bootstrap([])))


@pytest.mark.skipif(not (DATA / "labels.csv").is_file(), reason="the shared chest X-ray data is not here")
def test_the_command_writes_table_json_and_figure(tmp_path, capsys):
    code = main(["evaluate-counterfactuals", "--data", str(DATA), "--limit", "3", "--out", str(tmp_path),
                 "--tasks", "demo-adult-cardiomegaly-cardiomegaly"])
    assert code == 0
    table = (tmp_path / "counterfactuals.md").read_text()
    assert "input (x + D(z+λg) − D(z))" in table and "reconstruction (paper)" in table
    record = json.loads((tmp_path / "counterfactuals.json").read_text())
    modes = record["tasks"][0]["modes"]
    assert set(modes) == {"input", "reconstruction"}
    assert modes["input"]["sharpness"][0] > 0.9 > modes["reconstruction"]["sharpness"][0]
    assert (tmp_path / "counterfactuals-demo-adult-cardiomegaly-cardiomegaly.png").is_file()
    assert "Fréchet distance" in capsys.readouterr().out


def test_the_command_names_an_unknown_task(capsys):
    assert main(["evaluate-counterfactuals", "--tasks", "nope"]) == 2
    assert "--tasks: choose from demo-pneumonia-classifier-pneumonia" in capsys.readouterr().err
