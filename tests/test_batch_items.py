"""Item batching: ``LatentShift.attribute_many`` against one ``attribute`` call per image, and
``latentshift batch --item-batch K`` against ``--item-batch 1`` (tiny models, CPU only)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentshift import LatentShift
from latentshift.batch import BatchConfig, run_batch
from latentshift.cli import main
from latentshift.errors import OptionsError
from latentshift.options import ExplainOptions
from tiny_models import LinearAutoencoder, LinearClassifier, SineClassifier, write_tiny_manifest

SIDE = 8
SETUP = "tiny_models:register_tiny_architectures"


def images(count: int, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 1, SIDE, SIDE, generator=generator) * 2 - 1) * 1024


def explainer(classifier=None, **kwargs) -> LatentShift:
    """A classifier strong enough that the images' searches stop for different reasons."""
    return LatentShift(classifier or LinearClassifier(SIDE, outputs=3, scale=2000.0), LinearAutoencoder(SIDE),
                       **kwargs)


#: Search limits under which the 4 test images stop at floor, ceiling, pred_diff and the budget.
LIMITS = dict(step_size=2.0, pixel_budget=0.5, pred_diff=0.3)


def assert_same(single, batched):
    assert single.lambda_range == batched.lambda_range
    assert single.stop_reasons == batched.stop_reasons
    assert single.evaluations == batched.evaluations
    assert single.target == batched.target
    np.testing.assert_array_equal(single.lambdas, batched.lambdas)
    np.testing.assert_allclose(single.preds, batched.preds, atol=1e-5)
    np.testing.assert_allclose(single.all_preds, batched.all_preds, atol=1e-5)
    np.testing.assert_allclose(single.pixel_change, batched.pixel_change, rtol=1e-5, atol=1e-5)
    assert abs(single.initial_pred - batched.initial_pred) < 1e-5
    assert abs(single.reconstruction_pred - batched.reconstruction_pred) < 1e-5
    torch.testing.assert_close(single.frames, batched.frames, rtol=1e-4, atol=1e-3)  # float32 rounding of other batch shapes
    np.testing.assert_allclose(single.heatmap, batched.heatmap, rtol=1e-4, atol=1e-3)
    assert set(single.timings) == set(batched.timings) and all(v >= 0 for v in batched.timings.values())


@pytest.mark.parametrize("options", [
    dict(search="bisect"),
    dict(search="ladder"),
    dict(search="ladder", search_batch=3),
    dict(search="bisect", direction="curtail"),
    dict(lambda_range=(-120.0, 80.0)),
], ids=["bisect", "ladder", "ladder-batch3", "bisect-curtail", "fixed-range"])
def test_attribute_many_gives_the_answers_of_one_attribute_per_image(options):
    shift = explainer(batch_size=3)
    xs, targets = images(4), [0, 2, 1, 0]
    options = dict(LIMITS, frames=9, **options)
    batched = shift.attribute_many(xs, targets, **options)
    singles = [shift.attribute(xs[i:i + 1], t, **options) for i, t in enumerate(targets)]
    assert len(batched) == 4
    for single, result in zip(singles, batched):
        assert_same(single, result)
    if "lambda_range" not in options:
        assert len({r.lambda_range for r in batched}) > 1, "the images' searches end apart"
        assert len({tuple(r.stop_reasons.values()) for r in batched}) > 1, "and for different reasons"
        assert len({r.evaluations for r in batched}) > 1


def test_attribute_many_with_a_non_monotone_classifier_and_given_initial_preds():
    shift = LatentShift(SineClassifier(period=30.0), LinearAutoencoder(SIDE), batch_size=2)
    xs = images(3, seed=5)
    batched = shift.attribute_many(xs, [0, 0, 0], search="bisect", frames=5, initial_preds=[0.1, 0.2, 0.3])
    for i, result in enumerate(batched):
        assert_same(shift.attribute(xs[i:i + 1], 0, search="bisect", frames=5, initial_pred=0.1 * (i + 1)), result)


@pytest.mark.parametrize("call, message", [
    (lambda s: s.attribute_many(images(2)[0], [0]), r"shape \(B, 1, H, W\)"),
    (lambda s: s.attribute_many(images(2)[:0], []), r"B ≥ 1"),
    (lambda s: s.attribute_many(images(2), [0]), "one target per image: 2 images, 1 targets"),
    (lambda s: s.attribute_many(images(2), [0, -1]), "image 1: target must be"),
    (lambda s: s.attribute_many(images(2), [0, 1], initial_preds=[0.5]), "one initial prediction per image"),
    (lambda s: s.attribute_many(images(2), [0, 1], frames=1), "image 0: frames must be at least 2"),
])
def test_attribute_many_bad_input_raises_clear_errors(call, message):
    with pytest.raises(OptionsError, match=message):
        call(explainer())
