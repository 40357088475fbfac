"""Domain guard: is an upload a frontal chest X-ray, and of which population?

``DomainGuard.from_model(model, info)`` wraps the guard model (manifest kind ``"guard"``)
with its entry's thresholds; ``guard.check(image, population="pediatric")`` returns a
:class:`GuardResult` whose warnings are:

* ``"not_a_chest_xray"``: p(not_cxr) reaches its threshold, or the image's features lie far
  from every training chest X-ray's (squared Mahalanobis distance at or above its threshold;
  both set by :mod:`latentshift_research.training.guard`);
* ``"out_of_domain"``: the image more probably belongs to the other population than the
  one the classifier was trained on.

A coarse check for a teaching demo, not a safety device: see
``latentshift/embedded/demo-domain-guard.md`` for what it was tested on and its limits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..models.demo import GUARD_CLASSES

logger = logging.getLogger(__name__)

POPULATIONS = ("pediatric", "adult")
DEFAULT_NOT_CXR_THRESHOLD = 0.5
#: How the messages name one person and a training population.
PERSON = {"pediatric": "a child", "adult": "an adult"}
GROUP = {"pediatric": "children (pediatric, ages 1-5)", "adult": "adults"}


@dataclass
class GuardResult:
    """What the guard says about one image: softmax ``probabilities`` by class, the more probable
    ``population`` and its share of p(pediatric) + p(adult), the ``feature_distance`` (None
    without ``feature_distance`` on the model) and ``warnings`` ({"code", "message"} dicts)."""

    probabilities: dict[str, float]
    population: str
    population_probability: float
    feature_distance: float | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)

    @property
    def is_chest_xray(self) -> bool:
        return not any(w["code"] == "not_a_chest_xray" for w in self.warnings)

    def summary(self) -> dict:
        """JSON-ready record."""
        return {"probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
                "population": self.population,
                "population_probability": round(self.population_probability, 6),
                "feature_distance": None if self.feature_distance is None else round(self.feature_distance, 3),
                "warnings": [dict(w) for w in self.warnings]}


def _as_batch(x) -> torch.Tensor:
    """XrayImage (anything with ``pixels``), array (H, W) or tensor (H, W) / (1, H, W) / (1, 1, H, W)
    -> (1, 1, H, W) float32."""
    x = getattr(x, "pixels", x)
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    while t.dim() < 4:
        t = t.unsqueeze(0)
    if t.shape[0] != 1 or t.shape[1] != 1:
        raise ValueError(f"check() takes one grey image, got a tensor of shape {tuple(t.shape)}")
    return t


class DomainGuard:
    """Wraps a guard model ((N, 1, 224, 224) in [-1024, 1024] -> logits (N, 3), :data:`GUARD_CLASSES`).

    Args:
        not_cxr_threshold: p(not_cxr) at or above which ``not_a_chest_xray`` is raised.
        distance_threshold: feature distance at or above which ``not_a_chest_xray`` is raised
            (None: rule off).
        population_threshold: share of the *other* population above which ``out_of_domain`` is raised.
    """

    def __init__(self, model: nn.Module, not_cxr_threshold: float = DEFAULT_NOT_CXR_THRESHOLD,
                 distance_threshold: float | None = None, population_threshold: float = 0.5,
                 classes=GUARD_CLASSES):
        self.model = model.eval()
        self.classes = list(getattr(model, "classes", classes))
        missing = {"not_cxr", *POPULATIONS} - set(self.classes)
        if missing:
            raise ValueError(f"guard model lacks the classes {sorted(missing)}")
        self.not_cxr_threshold = float(not_cxr_threshold)
        self.distance_threshold = None if distance_threshold is None else float(distance_threshold)
        if self.distance_threshold is not None and not hasattr(model, "feature_distance"):
            raise ValueError("a distance threshold needs a model with a feature_distance method")
        self.population_threshold = float(population_threshold)

    @classmethod
    def from_model(cls, model: nn.Module, info: dict | None = None) -> DomainGuard:
        """The guard around a loaded model, with the thresholds of its manifest entry's ``info``."""
        info = info or {}
        threshold = float(info.get("not_cxr_threshold", DEFAULT_NOT_CXR_THRESHOLD))
        distance = info.get("distance_threshold")
        return cls(model, not_cxr_threshold=threshold, distance_threshold=None if distance is None else float(distance))

    @torch.inference_mode()
    def scores(self, x) -> tuple[dict[str, float], float | None]:
        """(class name -> probability, feature distance or None) for one image (see
        :func:`_as_batch` for the accepted inputs)."""
        device = next(self.model.parameters()).device
        batch = _as_batch(x).to(device)
        distance = None
        if hasattr(self.model, "forward_with_distance"):
            logits, dist = self.model.forward_with_distance(batch)
            distance = float(dist[0])
        else:
            logits = self.model(batch)
            if hasattr(self.model, "feature_distance"):
                distance = float(self.model.feature_distance(batch)[0])
        p = torch.softmax(logits.float(), dim=1)[0].cpu().tolist()
        return dict(zip(self.classes, (float(v) for v in p))), distance

    def check(self, x, population: str | None = None) -> GuardResult:
        """Check one image (XrayImage, or pixels (224, 224) in [-1024, 1024]).

        population: the population the classifier to be explained was trained on
        ("pediatric" or "adult"), or None to skip the out-of-domain check.
        """
        if population is not None and population not in POPULATIONS:
            raise ValueError(f"population must be one of {POPULATIONS} or None, not {population!r}")
        probs, distance = self.scores(x)
        cxr = probs["pediatric"] + probs["adult"]
        share = {p: probs[p] / cxr if cxr > 0 else 0.5 for p in POPULATIONS}
        predicted = max(POPULATIONS, key=share.get)
        result = GuardResult(probs, predicted, share[predicted], distance)
        unlike = self.distance_threshold is not None and distance >= self.distance_threshold
        if probs["not_cxr"] >= self.not_cxr_threshold or unlike:
            reason = (f"the domain check gives {probs['not_cxr']:.0%} for 'not a chest X-ray'"
                      if probs["not_cxr"] >= self.not_cxr_threshold else
                      "it is unlike every chest X-ray the domain check was trained on")
            result.warnings.append({"code": "not_a_chest_xray", "message": (
                f"This image does not look like a frontal chest X-ray ({reason}). The "
                "classifier and its explanation are only meaningful for frontal chest "
                "X-rays, so treat the results as meaningless.")})
        elif population is not None and 1.0 - share[population] > self.population_threshold:
            result.warnings.append({"code": "out_of_domain", "message": (
                f"This X-ray looks like the X-ray of {PERSON[predicted]} (domain check: "
                f"{share[predicted]:.0%}), but the classifier was trained only on X-rays of "
                f"{GROUP[population]}. Its prediction and explanation may be unreliable for "
                "this image.")})
        for warning in result.warnings:
            logger.info("domain guard: %s", warning["code"])
        return result
