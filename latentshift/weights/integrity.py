"""Integrity of weight files: sha256 and size against the manifest, before anything is read.

A mismatch raises :class:`~latentshift.errors.IntegrityError` naming both values; nothing is
deleted. An entry whose hash is unknown is read as plain tensors only (safetensors, or
``torch.load(weights_only=True)``), and loads when its source is HTTPS (see
:func:`latentshift.weights.hub.unverified_permitted`) or on request (``allow_unverified=True`` or
``LATENTSHIFT_ALLOW_UNVERIFIED=1``); either way with an ``unverified_weights`` note. A file that
needs full unpickling loads only with a pinned sha256 (``latentshift weights pin``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import IntegrityError, ModelUnavailableError
from ..settings import variable_name
from .manifest import ModelEntry

logger = logging.getLogger(__name__)

ALLOW_UNVERIFIED_ENV = variable_name("allow_unverified")  # LATENTSHIFT_ALLOW_UNVERIFIED


def same_sha256(actual: str, expected: str | None) -> bool:
    """Whether two hex digests name the same content (case-insensitive); False if one is missing."""
    return bool(actual and expected) and actual.lower() == expected.lower()


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: Why weights of unknown hash were accepted, when the person opted in.
BY_OPT_IN = "allowed by opt-in"


def unverified_warning(entry: ModelEntry, why: str = BY_OPT_IN) -> str:
    """The message shown (log and UI) when weights load without hash verification; ``why`` says
    what allowed them (the opt-in, or a safe-format file from an HTTPS source)."""
    return (f"the weights of {entry.id!r} were loaded WITHOUT hash verification (the manifest has "
            f"no sha256 for them; {why}). Only tensors were read from the file; "
            f"`latentshift weights pin {entry.id}` records its sha256.")


def refuse_unverified_message(entry: ModelEntry) -> str:
    """Why an entry without a known hash is refused, and how to opt in."""
    return (f"the manifest has no sha256 for {entry.id!r}, so its weights cannot be verified; "
            f"refusing to load them (set {ALLOW_UNVERIFIED_ENV}=1 or pass --allow-unverified to accept "
            f"unverified weights; they are then read as plain tensors only)")


def verify_file(path: Path, entry: ModelEntry) -> None:
    """Raise :class:`IntegrityError` unless ``path`` has the entry's size and sha256.

    Nothing is deleted: the user's file stays where it is, it is only refused.
    """
    if entry.size is not None:
        actual_size = path.stat().st_size
        if actual_size != entry.size:
            raise IntegrityError(
                f"weights of {entry.id!r} at {path} have {actual_size} bytes, "
                f"the manifest expects {entry.size}; refusing to load them")
    if not entry.sha256:
        raise IntegrityError(f"the manifest has no sha256 for {entry.id!r}; refusing to load unverified weights")
    actual = sha256_of(path)
    if not same_sha256(actual, entry.sha256):
        raise IntegrityError(
            f"weights of {entry.id!r} at {path} failed verification: "
            f"expected sha256 {entry.sha256}, got {actual}; refusing to load them")


_hash_memo: dict[tuple[str, int, int], str] = {}


def cached_sha256_of(path: Path) -> str:
    """sha256 of ``path``, remembered per (path, size, mtime) so status checks stay cheap."""
    stat = path.stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_memo:
        _hash_memo[key] = sha256_of(path)
    return _hash_memo[key]


def check_file(path: Path, entry: ModelEntry) -> tuple[bool | None, str]:
    """Compare ``path`` with the entry's size and sha256 without raising.

    Returns ``(verified, detail)``: True when both match, False on a mismatch (detail
    names expected and actual values), None when the manifest has no sha256.
    """
    actual_size = path.stat().st_size
    if entry.size is not None and actual_size != entry.size:
        return False, f"size {actual_size} bytes, expected {entry.size}"
    if not entry.sha256:
        return None, "sha256 unknown to the manifest"
    actual = cached_sha256_of(path)
    if not same_sha256(actual, entry.sha256):
        return False, f"expected sha256 {entry.sha256}, got {actual}"
    return True, "sha256 verified"


@dataclass(frozen=True)
class FetchedWeights:
    """A local weight file ready to be read.

    ``verified`` is True when its sha256 matched the manifest; False only for
    entries without a known hash that the user allowed, in which case ``warning``
    says so (for the log and the UI).
    """

    path: Path
    verified: bool
    warning: str | None = None


@dataclass(frozen=True)
class ModelStatus:
    """Whether a model can be loaded here, cheaply determined (no download).

    ``available``: loading would be attempted now (cached and verified, or downloadable).
    ``cached``: a local copy exists (repository file or download cache).
    ``verified``: that copy matches the manifest's sha256; None when there is no copy
    or no known hash.
    ``reason``: one line for people ("cached, sha256 verified", "offline and not cached", ...).
    """

    available: bool
    cached: bool
    verified: bool | None
    reason: str


def accept_file(path: Path, entry: ModelEntry, allow_unverified: bool | None = None,
                why: str = BY_OPT_IN) -> FetchedWeights:
    """Verify ``path`` against the entry (size, sha256), or accept it unverified when allowed
    (``why``: what allowed it, for the warning).

    Raises :class:`IntegrityError` on a mismatch and :class:`ModelUnavailableError` for an
    unknown hash without opt-in. Nothing is deleted.
    """
    if entry.sha256:
        verify_file(path, entry)
        return FetchedWeights(path, verified=True)
    if not allow_unverified:
        raise ModelUnavailableError(refuse_unverified_message(entry))
    verified, detail = check_file(path, entry)
    if verified is False:
        raise IntegrityError(f"weights of {entry.id!r} at {path}: {detail}; refusing to load them")
    warning = unverified_warning(entry, why)
    logger.warning("%s", warning)
    return FetchedWeights(path, verified=False, warning=warning)


