"""Where weight files come from: the package's own files, the Hugging Face Hub, a URL.

One interface for every source: :func:`fetch_weights` returns a verified local file
(:class:`~.integrity.FetchedWeights`), :func:`model_status` says cheaply whether a model
can be loaded here and why not (never downloads). Hub and URL sources live in :mod:`.hub`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelUnavailableError, WeightsError
from . import hub
from .integrity import (ALLOW_UNVERIFIED_ENV, FetchedWeights, ModelStatus, accept_file,
                        check_file, refuse_unverified_message)
from ..models.registry import ARCHITECTURES
from .exported import EXPORT_FORMAT
from .manifest import ModelEntry


def resolve_local_file(entry: ModelEntry) -> Path:
    """Path of a ``file`` source, relative paths taken from the manifest's folder."""
    path = local_file_path(entry)
    if not path.is_file():
        raise ModelUnavailableError(f"weights file of {entry.id!r} is missing: {path}")
    return path


def local_file_path(entry: ModelEntry) -> Path:
    """Where a ``file`` source should be, whether or not it exists."""
    path = Path(entry.source["path"])
    return path if path.is_absolute() else entry.base_dir / path


def fetch_weights(entry: ModelEntry, allow_unverified: bool | None = None) -> FetchedWeights:
    """Return the entry's local weight file, verified (or explicitly allowed unverified).

    ``file`` sources are read from the repository; ``hub`` and ``url`` sources are
    handled by :mod:`latentshift.weights.hub` (cache first, no network when cached).
    """
    if entry.source_type == "file":
        if not entry.sha256 and not allow_unverified:
            raise ModelUnavailableError(refuse_unverified_message(entry))
        return accept_file(resolve_local_file(entry), entry, allow_unverified)
    if entry.source_type in ("hub", "url"):
        return hub.fetch_weights(entry, allow_unverified=allow_unverified)
    raise WeightsError(f"model {entry.id!r} has an unknown source type {entry.source_type!r}")


def fetch(entry: ModelEntry, allow_unverified: bool | None = None) -> Path:
    """Return a local, *verified* path to the entry's weight file (see :func:`fetch_weights`)."""
    return fetch_weights(entry, allow_unverified=allow_unverified).path


def model_status(entry: ModelEntry, check_network: bool = True,
                 allow_unverified: bool | None = None) -> ModelStatus:
    """Whether ``entry`` can be loaded here and why not; never downloads.

    With ``check_network`` a Hub/URL entry that is not cached costs at most one quick
    reachability probe per host and process (see :func:`latentshift.weights.hub.is_reachable`).
    An entry whose architecture cannot be built here is unavailable, whatever its file.
    """
    if entry.format != EXPORT_FORMAT and entry.architecture not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        return ModelStatus(False, False, None, f"unknown architecture {entry.architecture!r} (known: {known}); "
                                               "register it in Python or export the model with torch.export")
    if entry.source_type == "file":
        path = local_file_path(entry)
        if not path.is_file():
            return ModelStatus(False, False, None, f"weights file missing: {path}")
        verified, detail = check_file(path, entry)
        if verified is None:
            allowed = bool(allow_unverified)
            reason = ("in the repository, hash unknown (loads unverified by opt-in)" if allowed
                      else f"in the repository, hash unknown (set {ALLOW_UNVERIFIED_ENV}=1 to load it)")
            return ModelStatus(allowed, True, None, reason)
        if verified:
            return ModelStatus(True, True, True, "in the repository, sha256 verified")
        return ModelStatus(False, True, False, f"repository file fails verification: {detail}")
    if entry.source_type in ("hub", "url"):
        return hub.source_status(entry, check_network=check_network, allow_unverified=allow_unverified)
    return ModelStatus(False, False, None, f"unknown source type {entry.source_type!r}")


