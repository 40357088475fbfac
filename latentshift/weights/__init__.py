"""Weights: the manifest, integrity checks, sources (file, Hub, URL), loading and the model store.

Layers inside this room, imported one way: ``manifest`` (what exists) ← ``integrity``
(sha256 and size) ← ``hub`` (Hub and URL downloads) ← ``sources`` (one interface for every
source) ← ``loading`` (state dict into architecture) ← ``store`` (loaded models by id) ←
``preference`` (the ranked pairs the app answers with, fetched in the background); ``pinning`` (``weights pin``: sha256 and size of a download) builds on ``sources``.
"""

from .integrity import (ALLOW_UNVERIFIED_ENV, FetchedWeights, ModelStatus, accept_file,
                        check_file, sha256_of, verify_file)
from .loading import (build_model, load_model, load_model_or_default, load_model_with_warning,
                      read_state_dict)
from .manifest import DEFAULT_MANIFEST, KINDS, MANIFEST_ENV, Manifest, ModelEntry
from .sources import fetch, fetch_weights, local_file_path, model_status, resolve_local_file
from .store import ModelStore

__all__ = [
    "ALLOW_UNVERIFIED_ENV", "DEFAULT_MANIFEST", "KINDS", "MANIFEST_ENV", "FetchedWeights", "Manifest",
    "ModelEntry", "ModelStatus", "ModelStore", "accept_file", "build_model",
    "check_file", "fetch", "fetch_weights", "load_model", "load_model_or_default", "load_model_with_warning",
    "local_file_path", "model_status", "read_state_dict", "resolve_local_file", "sha256_of", "verify_file",
]
