"""The model store: each model is loaded once whatever it is paired with, the number in memory is
bounded (least recently used dropped first), and each model has its own lock."""

from __future__ import annotations

import json

import pytest

from latentshift.pipeline import Pipeline
from latentshift.weights import Manifest
from latentshift.settings import DEFAULT_MAX_MODELS, Settings
from latentshift.weights.store import ModelStore, cycle_through_models
from tiny_models import write_tiny_manifest


@pytest.fixture()
def two_of_each(tmp_path):
    """A manifest with two classifiers and two autoencoders (the second of each a copy of the first)."""
    path = write_tiny_manifest(tmp_path)
    data = json.loads(path.read_text())
    copies = []
    for entry in data["models"]:
        copy = dict(entry, id=entry["id"] + "-b", embedded_default=False)
        copies.append(copy)
    data["models"] += copies
    path.write_text(json.dumps(data))
    return path


def test_a_classifier_is_loaded_once_whatever_autoencoder_it_meets(two_of_each):
    first = Pipeline.get("tiny-classifier", "tiny-autoencoder", manifest_path=str(two_of_each))
    second = Pipeline.get("tiny-classifier", "tiny-autoencoder-b", manifest_path=str(two_of_each))
    store = Pipeline.store(manifest_path=str(two_of_each))
    assert first.classifier is second.classifier
    assert first.autoencoder is not second.autoencoder
    tiny = sorted(i for i in store.loaded_ids() if i.startswith("tiny"))
    assert tiny == ["tiny-autoencoder", "tiny-autoencoder-b", "tiny-classifier"]
    assert store.loads == len(store.loaded_ids()), "nothing was read from disk twice (the guard is loaded once too)"
    assert first.classifier_model.lock is second.classifier_model.lock, "one lock per model"


def test_the_least_recently_used_model_is_dropped_at_the_bound(two_of_each):
    store = ModelStore(Manifest.load(two_of_each), max_models=2)
    store.get("tiny-classifier", "classifier")
    store.get("tiny-autoencoder", "autoencoder")
    store.get("tiny-classifier", "classifier")          # used again: now the most recent
    store.get("tiny-classifier-b", "classifier")        # third model: the autoencoder goes
    assert store.loaded_ids() == ["tiny-classifier", "tiny-classifier-b"]
    store.get("tiny-autoencoder", "autoencoder")
    assert store.loads == 4 and len(store) == 2


def test_an_unknown_model_falls_back_to_the_default_with_a_warning(two_of_each):
    store = ModelStore(Manifest.load(two_of_each))
    loaded = store.get("no-such-model", "classifier")
    assert loaded.id == "tiny-classifier"
    assert "no-such-model" in loaded.warning and "embedded default" in loaded.warning
    assert store.get("tiny-classifier", "classifier").warning is None, "the default itself carries no warning"


def test_the_bound_comes_from_the_settings(two_of_each):
    manifest = Manifest.load(two_of_each)
    assert ModelStore(manifest, settings=Settings.from_environ({"LATENTSHIFT_MAX_MODELS": "3"})).max_models == 3
    assert ModelStore(manifest).max_models == DEFAULT_MAX_MODELS == 6
    assert ModelStore(manifest, max_models=2, settings=Settings(max_models=3)).max_models == 2
    with pytest.raises(ValueError, match="LATENTSHIFT_MAX_MODELS must be a whole number, not 'many'"):
        Settings.from_environ({"LATENTSHIFT_MAX_MODELS": "many"})


def test_cycling_through_every_model_reports_loads_and_memory(two_of_each):
    store = ModelStore(Manifest.load(two_of_each), max_models=1)
    report = cycle_through_models(store, rounds=2)
    assert sorted(report["models"]) == ["tiny-autoencoder", "tiny-autoencoder-b", "tiny-classifier",
                                        "tiny-classifier-b"]
    assert report["loads_from_disk"] == 8, "a bound of 1 reloads every model in each round"
    assert len(report["in_memory"]) == 1 and report["peak_rss_mib"] > 0 and not report["failed"]
