"""Models loaded on the CPU are channels_last (faster convolutions), with the same answers."""

from __future__ import annotations

import pytest
import torch

from latentshift.core.shift import LatentShift, ShiftOptions
from latentshift.models.placement import place_model
from latentshift.weights import Manifest
from latentshift.weights.loading import load_model
from tiny_models import TinyConvAutoencoder, TinyConvClassifier


def _conv_weight(model: torch.nn.Module) -> torch.Tensor:
    """A convolution weight whose layout is unambiguous (more than one input channel, k > 1)."""
    return next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)


def test_embedded_models_load_channels_last_on_cpu():
    manifest = Manifest.load()
    for kind in ("classifier", "autoencoder"):
        model = load_model(manifest.default(kind), "cpu")
        assert _conv_weight(model).is_contiguous(memory_format=torch.channels_last), kind


def test_opt_out_keeps_contiguous():
    model = load_model(Manifest.load().default("classifier"), "cpu", channels_last=False)
    weight = _conv_weight(model)
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("search", ["bisect", "ladder"])
def test_same_answer_in_either_layout(search):
    """The search stops at the same λs for the same reasons; predictions agree to float rounding."""
    x = torch.linspace(-900, 900, 32 * 32).view(1, 1, 32, 32)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        classifier = place_model(TinyConvClassifier(), "cpu", channels_last).eval()
        autoencoder = place_model(TinyConvAutoencoder(), "cpu", channels_last).eval()
        results += LatentShift(classifier, autoencoder).attribute(x, 0, ShiftOptions(step_size=5.0, search=search))
    contiguous, channels_last = results
    # the ladder's λs are exact; bisect's probes sit where the rules' lines cross, so its ends
    # carry the predictions' float rounding
    assert contiguous.lambda_range == pytest.approx(channels_last.lambda_range, rel=1e-6)
    assert contiguous.lambda_range != (0.0, 0.0)
    if search == "ladder":
        assert contiguous.lambda_range == channels_last.lambda_range
    assert contiguous.stop_reasons == channels_last.stop_reasons
    assert abs(contiguous.preds - channels_last.preds).max() < 1e-5
