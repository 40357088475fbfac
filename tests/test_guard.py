"""The domain guard: warning logic on a tiny model, and the shipped guard on held-out cases.

The held-out cases (``synthetic_cases.py``) are built differently from the guard's
training negatives; the full measurement is in ``latentshift/embedded/demo-domain-guard.metrics.json``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from latentshift_research.training import synthetic_cases as cases
from latentshift.core.guard import DomainGuard, GuardResult
from latentshift.io.imaging import XrayImage, load_xray
from latentshift.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LATENTSHIFT_DATA") or REPO.parent / "shared" / "data" / "cxr")
EXAMPLES = sorted((REPO / "examples").glob("*.png"))


class FixedLogits(nn.Module):
    """Returns the same logits (pediatric, adult, not_cxr) and feature distance for any
    (1, 1, H, W) input."""

    def __init__(self, logits, distance: float = 0.0):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([logits], dtype=torch.float32), requires_grad=False)
        self.distance = distance
        self.classes = ["pediatric", "adult", "not_cxr"]

    def forward(self, x):
        assert x.shape[:2] == (1, 1)
        return self.logits.expand(x.shape[0], -1)

    def feature_distance(self, x):
        return torch.full((x.shape[0],), self.distance)


def _upload(arr: np.ndarray) -> XrayImage:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return load_xray(buffer.getvalue())


def _codes(result: GuardResult) -> list[str]:
    return [w["code"] for w in result.warnings]


# ------------------------------------------------------------------- warning logic


def test_warning_logic_on_a_tiny_model():
    x = np.zeros((8, 8), np.float32)
    child = DomainGuard(FixedLogits([3.0, 0.0, -3.0]), not_cxr_threshold=0.5)
    result = child.check(x, population="pediatric")
    assert result.population == "pediatric" and result.warnings == [] and result.is_chest_xray
    assert abs(sum(result.probabilities.values()) - 1) < 1e-6
    (warning,) = child.check(x, population="adult").warnings
    assert warning["code"] == "out_of_domain" and "child" in warning["message"] and "adult" in warning["message"]
    assert child.check(x).warnings == []  # no population given: no out-of-domain check

    other = DomainGuard(FixedLogits([0.0, 0.0, 2.0]), not_cxr_threshold=0.5)
    result = other.check(torch.zeros(1, 1, 8, 8), population="adult")
    assert _codes(result) == ["not_a_chest_xray"] and not result.is_chest_xray
    assert "not look like a frontal chest X-ray" in result.warnings[0]["message"]
    strict = DomainGuard(FixedLogits([0.0, 0.0, 2.0]), not_cxr_threshold=0.9)  # p(not_cxr) = 0.79
    assert strict.check(x).warnings == []
    with pytest.raises(ValueError, match="population"):
        child.check(x, population="elderly")
    with pytest.raises(ValueError, match="one grey image"):
        child.check(torch.zeros(2, 1, 8, 8))
    assert set(result.summary()) == {"probabilities", "population", "population_probability",
                                     "feature_distance", "warnings"}


def test_feature_distance_rule_flags_images_unlike_any_xray():
    x = np.zeros((8, 8), np.float32)
    far = DomainGuard(FixedLogits([3.0, 0.0, -3.0], distance=80.0), distance_threshold=50.0)
    result = far.check(x, population="adult")  # also the wrong population: one warning only
    assert _codes(result) == ["not_a_chest_xray"] and result.feature_distance == 80.0
    assert "unlike every chest X-ray" in result.warnings[0]["message"]
    near = DomainGuard(FixedLogits([3.0, 0.0, -3.0], distance=20.0), distance_threshold=50.0)
    assert near.check(x).warnings == []
    with pytest.raises(ValueError, match="feature_distance"):
        DomainGuard(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), distance_threshold=1.0)


# ------------------------------------------------------------------- shipped guard


@pytest.fixture(scope="module")
def guard() -> DomainGuard:
    torch.set_num_threads(1)
    return Pipeline.domain_guard()


@pytest.mark.parametrize("make", list(cases.NOISE_CASES.values()), ids=list(cases.NOISE_CASES))
def test_shipped_guard_flags_noise(guard, make):
    for seed in (0, 1):
        assert "not_a_chest_xray" in _codes(guard.check(_upload(make(seed))))


@pytest.mark.parametrize("kind", ["document", "ct_like", "lateral_like"])
def test_shipped_guard_flags_documents_ct_and_lateral_views(guard, kind):
    make = cases.GENERATED_CASES[kind]
    for seed in range(3):
        assert "not_a_chest_xray" in _codes(guard.check(_upload(make(seed)))), f"{kind} seed {seed}"


def test_shipped_guard_accepts_the_examples(guard):
    assert len(EXAMPLES) == 8
    for path in EXAMPLES:
        result = guard.check(load_xray(path), population="pediatric")
        assert result.warnings == [], f"{path.name}: {result.summary()}"


def test_shipped_guard_accepts_a_sample_of_test_xrays(guard):
    if not (DATA / "labels.csv").is_file():
        pytest.skip(f"no chest X-ray data at {DATA}")
    with open(DATA / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    sample = [r for r in rows if r["source"] == "kermany"][::10] + [r for r in rows if r["source"] == "nih"][::5]
    wrong_population = 0
    for row in sample:
        result = guard.check(load_xray(DATA / row["file"]))
        assert result.warnings == [], f"{row['file']}: {result.summary()}"
        wrong_population += result.population != {"kermany": "pediatric", "nih": "adult"}[row["source"]]
    assert wrong_population <= 1, f"{wrong_population} of {len(sample)} given the wrong population"
