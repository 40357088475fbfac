"""The IG step-count study (latentshift_research.tools.ig_steps) on maps and a model whose answers are known."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from latentshift.options import DEFAULTS
from latentshift_research.tools.ig_steps import map_agreement, measure_image, rules_to_compare, summarize


class SquaredMean(nn.Module):
    """logit = (mean(x) / 1024)²·50: along IG's path from the zero baseline the integrand is
    linear in α, which Gauss-Legendre integrates exactly from 1 node on, and every pixel's
    attribution is proportional to its value. (N, 1, H, W) -> (N, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 50.0 * (x.mean(dim=(1, 2, 3)) / 1024.0).pow(2).unsqueeze(1)


def test_map_agreement_of_equal_shuffled_and_negated_maps():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(20, 20))
    assert map_agreement(reference, reference) == (1.0, 1.0)
    correlation, kept = map_agreement(-reference, reference)
    assert correlation == -1.0 and kept == 1.0  # the top 5 % are taken by |value|
    shuffled = rng.permutation(reference.ravel()).reshape(20, 20)
    correlation, kept = map_agreement(shuffled, reference)
    assert abs(correlation) < 0.3 and kept < 0.5


def test_every_rule_is_exact_on_a_model_gauss_legendre_integrates_exactly():
    model = SquaredMean()
    generator = torch.Generator().manual_seed(0)
    images = [mean + 200.0 * torch.randn(1, 1, 16, 16, generator=generator) for mean in (300.0, 600.0)]
    rules = rules_to_compare()
    rows = [measure_image(model, x, 0, rules, reference_steps=32) for x in images]
    summary = summarize(rows)
    assert set(summary) == set(rules)
    default = next(name for name in summary if name.startswith("default"))
    assert summary[default]["steps"] == {str(DEFAULTS.ig_steps): 2}  # converged: no doubling
    for name, entry in summary.items():
        assert entry["relative_delta"]["max"] < 1e-4, name
        assert entry["correlation"]["min"] > 0.9999, name  # every map is ∝ x
        assert entry["top_kept_min"] == 1.0, name
