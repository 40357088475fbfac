"""Which classifier answers for a finding: every finding the available classifiers know, and the
classifier to use for one of them on an image of a given population.

A classifier is a candidate for finding F when it is available here and has an output named F.
Candidates are ranked by how well their training population fits the image's (the domain check's
population): trained on it first, population unknown next, trained on the other population last;
then the classifier already answering, then the manifest's ``"serving"`` ranking, then the id.
"""

from __future__ import annotations

from dataclasses import dataclass

from .manifest import Manifest, ModelEntry
from .sources import model_status

#: How a population is named in the reasons.
GROUP = {"pediatric": "children's chest X-rays", "adult": "adults' chest X-rays"}


@dataclass(frozen=True)
class ClassifierChoice:
    """The classifier that answers for ``finding``, and ``reason``: why, in words for the page."""

    classifier_id: str
    finding: str
    reason: str
    fits_population: bool


def population_of(entry: ModelEntry) -> str | None:
    """The population a classifier was trained on ("pediatric", "adult"), or None when unknown."""
    population = entry.info.get("population")
    return population if population in GROUP else None


def available_classifiers(manifest: Manifest, allow_unverified: bool = False) -> list[ModelEntry]:
    """The manifest's classifiers that load here (no download, no network probe; ``allow_unverified``:
    the store's opt-in to weights of unknown hash)."""
    return [e for e in manifest.of_kind("classifier")
            if model_status(e, check_network=False, allow_unverified=allow_unverified).available]


def findings(manifest: Manifest, allow_unverified: bool = False) -> list[str]:
    """Every finding that some available classifier has, in alphabetical order."""
    names = {label for entry in available_classifiers(manifest, allow_unverified) for label in entry.labels if label}
    return sorted(names, key=str.lower)


def _has(entry: ModelEntry, finding: str) -> bool:
    return finding.lower() in (label.lower() for label in entry.labels if label)


def choose_classifier(manifest: Manifest, finding: str, population: str | None = None,
                      current: str | None = None, allow_unverified: bool = False) -> ClassifierChoice | None:
    """The classifier for ``finding`` on an image of ``population`` (None: unknown); None when no
    available classifier has the finding. ``current``: the classifier answering now (kept on a tie)."""
    candidates = [e for e in available_classifiers(manifest, allow_unverified) if _has(e, finding)]
    if not candidates:
        return None
    serving = [pair.classifier for pair in manifest.serving()]

    def rank(entry: ModelEntry) -> tuple:
        trained_on = population_of(entry)
        if population is None or trained_on is None:
            fit = 1
        else:
            fit = 0 if trained_on == population else 2
        served = serving.index(entry.id) if entry.id in serving else len(serving)
        return fit, entry.id != current, served, entry.id

    best = min(candidates, key=rank)
    name = next(label for label in best.labels if label and label.lower() == finding.lower())
    return ClassifierChoice(best.id, name, _reason(best, name, population), rank(best)[0] == 0)


def _reason(entry: ModelEntry, finding: str, population: str | None) -> str:
    """Why ``entry`` answers for ``finding``, in one sentence."""
    trained_on = population_of(entry)
    if population is not None and trained_on == population:
        return f"{entry.id} answers: it knows {finding} and was trained on {GROUP[population]}, like this image."
    if trained_on is None:
        return f"{entry.id} answers: it knows {finding} (its training population is not recorded)."
    if population is None:
        return f"{entry.id} answers: it knows {finding} (trained on {GROUP[trained_on]})."
    return (f"{entry.id} answers: no classifier here trained on {GROUP[population]} knows {finding}; "
            f"this one was trained on {GROUP[trained_on]}, so treat its answer with care.")
