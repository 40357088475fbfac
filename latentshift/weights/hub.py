"""Weights from the Hugging Face Hub and from plain URLs: pinned, verified, offline-aware.

* ``hub`` sources are downloaded with :func:`huggingface_hub.hf_hub_download` at a
  pinned 40-hex ``revision`` (never a branch) into the Hub cache, then their size and
  sha256 are checked against the manifest before anything deserialises them.
* ``url`` sources (the paper's autoencoder, a GitHub release asset) are downloaded
  with the standard library into ``$HF_HOME/latentshift`` (or ``~/.cache/latentshift``).
* A file already in the cache is used without any network call. ``HF_HUB_OFFLINE``,
  ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_ENDPOINT`` are read at call time (huggingface_hub
  reads them once, at import). Whether a host answers is probed once, quickly, and
  remembered, so an unreachable Hub costs about two seconds, not retries.
* A file whose hash the manifest does not know: see :func:`unverified_permitted`.
* Everything that cannot be fetched raises :class:`~latentshift.errors.ModelUnavailableError`
  with a message for people.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import ModelUnavailableError, WeightsError
from .integrity import (
    BY_OPT_IN,
    FetchedWeights,
    ModelStatus,
    accept_file,
    check_file,
    refuse_unverified_message,
)
from .manifest import ModelEntry

logger = logging.getLogger(__name__)

COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")
PROBE_TIMEOUT_S = 2.0
#: How long a reachability verdict is remembered (seconds).
REACHABILITY_TTL_S = 600.0
#: Seconds to wait for the Hub's answer to the metadata (HEAD) request of a reachable host.
METADATA_TIMEOUT_S = 10.0
URL_DOWNLOAD_TIMEOUT_S = 30.0
_TRUE_VALUES = ("1", "true", "yes", "on")
#: Formats this package reads as plain tensors when the hash is unknown: safetensors, and torch
#: files through ``torch.load(weights_only=True)`` (a whole pickled model is refused then).
TENSOR_ONLY_FORMATS = ("safetensors", "torch-pickle", "torch-export")


# --------------------------------------------------------------------------- settings read at call time

def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) now, or huggingface_hub's import-time setting."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE_VALUES:
            return True
    return bool(hf_constants.HF_HUB_OFFLINE)


def _cache_home() -> Path:
    """``$XDG_CACHE_HOME``, else ``~/.cache``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")).expanduser()


def hf_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``."""
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser()
    return _cache_home() / "huggingface"


def hub_cache_dir() -> Path:
    """The Hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub`` (read now, not at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    return hf_home() / "hub"


def url_cache_dir() -> Path:
    """Where ``url`` sources are cached: ``$HF_HOME/latentshift`` if HF_HOME is set, else ``~/.cache/latentshift``."""
    return (hf_home() if os.environ.get("HF_HOME") else _cache_home()) / "latentshift"


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` now, else huggingface_hub's endpoint."""
    return (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")


def source_url(entry: ModelEntry) -> str:
    """Where a ``hub`` or ``url`` entry is downloaded from (the Hub endpoint, or the URL)."""
    return hub_endpoint() if entry.source_type == "hub" else entry.source.get("url", "")


def https_origin(entry: ModelEntry) -> str | None:
    """The host of a Hub/URL entry's source when it is served over HTTPS, else None."""
    parts = urllib.parse.urlsplit(source_url(entry)) if entry.source_type in ("hub", "url") else None
    return parts.netloc if parts is not None and parts.scheme == "https" and parts.netloc else None


def unverified_permitted(entry: ModelEntry, allow_unverified: bool | None = None) -> str | None:
    """Why weights of unknown hash may load, or None when they may not.

    Allowed: by opt-in (``allow_unverified`` / ``$LATENTSHIFT_ALLOW_UNVERIFIED``), or without it
    when the source is HTTPS and the format is read as plain tensors only
    (:data:`TENSOR_ONLY_FORMATS`): such a file cannot run code, and HTTPS says where it came from.
    """
    if allow_unverified:
        return BY_OPT_IN
    host = https_origin(entry)
    if host and entry.format in TENSOR_ONLY_FORMATS:
        return f"read as plain tensors from the HTTPS source {host}"
    return None


# --------------------------------------------------------------------------- reachability, decided once

_reachability: dict[str, tuple[bool, float]] = {}
_reachability_lock = threading.Lock()


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _probe(origin: str, timeout: float) -> bool:
    """One HEAD request; any HTTP answer (even 404) means the host is reachable."""
    request = urllib.request.Request(origin + "/", method="HEAD", headers={"User-Agent": "latentshift"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
        logger.debug("probe of %s failed: %s", origin, exc)
        return False


def is_reachable(url: str, timeout: float | None = None) -> bool:
    """Whether the host of ``url`` answers, probed once per process (and per TTL).

    The probe runs in a daemon thread joined with a deadline, so neither slow DNS nor
    a silent server can stall the caller beyond ``timeout`` (default 2 s). Concurrent
    callers wait for the same probe.
    """
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    origin = _origin(url)
    with _reachability_lock:
        known = _reachability.get(origin)
        if known is not None and time.monotonic() - known[1] < REACHABILITY_TTL_S:
            return known[0]
        result: list[bool] = []
        worker = threading.Thread(target=lambda: result.append(_probe(origin, timeout)),
                                  name="latentshift-probe", daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(timeout + 0.5)
        reachable = bool(result and result[0])
        _reachability[origin] = (reachable, time.monotonic())
    logger.info("%s is %s (probed in %.2f s)", origin, "reachable" if reachable else "unreachable",
                time.monotonic() - started)
    return reachable


def forget_reachability() -> None:
    """Drop remembered reachability verdicts (for tests, or after the network changed)."""
    with _reachability_lock:
        _reachability.clear()


# --------------------------------------------------------------------------- cache lookups (no network)

def pinned_revision(entry: ModelEntry) -> str | None:
    """The entry's revision if it is a 40-hex commit, else None."""
    revision = entry.source.get("revision")
    if isinstance(revision, str) and COMMIT_PATTERN.fullmatch(revision.lower()):
        return revision.lower()
    return None


def _unpinned_message(entry: ModelEntry) -> str:
    return (f"{entry.id!r} is unavailable: revision not pinned (the manifest has no commit for "
            f"{entry.source.get('repo_id')}; downloading from a branch is refused)")


def url_cache_path(entry: ModelEntry) -> Path:
    """Cache location of a ``url`` source: ``<url cache>/url/<hash of the URL>/<file name>``."""
    url = entry.source["url"]
    name = os.path.basename(urllib.parse.urlsplit(url).path) or "weights"
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return url_cache_dir() / "url" / key / name


def cached_path(entry: ModelEntry) -> Path | None:
    """The local copy of a Hub/URL entry if one exists, found without any network call."""
    if entry.source_type == "hub":
        revision = pinned_revision(entry)
        if revision is None:
            return None
        found = huggingface_hub.try_to_load_from_cache(
            entry.source["repo_id"], entry.source["filename"],
            cache_dir=str(hub_cache_dir()), revision=revision)
        return Path(found) if isinstance(found, str) else None
    if entry.source_type == "url":
        path = url_cache_path(entry)
        return path if path.is_file() else None
    return None


# --------------------------------------------------------------------------- fetching

def _download_from_hub(entry: ModelEntry, revision: str) -> Path:
    """hf_hub_download at the pinned commit, with errors turned into ModelUnavailableError."""
    repo_id, filename = entry.source["repo_id"], entry.source["filename"]
    endpoint = hub_endpoint()
    cache_dir = hub_cache_dir()
    where = f"{repo_id}@{revision[:12]} on {endpoint}"
    if is_offline():
        raise ModelUnavailableError(
            f"{entry.id!r} is unavailable: offline mode (HF_HUB_OFFLINE) and {filename} of {where} "
            f"is not in the cache {cache_dir}")
    if not is_reachable(endpoint):
        raise ModelUnavailableError(
            f"{entry.id!r} is unavailable: {endpoint} cannot be reached and {filename} of {repo_id} "
            f"is not in the cache {cache_dir}")
    logger.info("downloading %s from %s", filename, where)
    try:
        return Path(huggingface_hub.hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=str(cache_dir), endpoint=endpoint,
            etag_timeout=METADATA_TIMEOUT_S))
    except RepositoryNotFoundError:  # also gated/private repositories
        raise ModelUnavailableError(
            f"{entry.id!r} is unavailable: repository {repo_id} not found on {endpoint} "
            f"(or it is private or gated)") from None
    except RevisionNotFoundError:
        raise ModelUnavailableError(
            f"{entry.id!r} is unavailable: revision {revision} of {repo_id} not found on {endpoint}") from None
    except RemoteEntryNotFoundError:
        raise ModelUnavailableError(
            f"{entry.id!r} is unavailable: {filename} not found in {where}") from None
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(
            f"{entry.id!r} is unavailable: could not download {filename} of {where} and it is not "
            f"in the cache {cache_dir}") from None
    except (HfHubHTTPError, OSError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelUnavailableError(
            f"{entry.id!r} is unavailable: downloading {filename} of {where} failed: {first_line}") from None


def download_pinned(repo_id: str, filename: str, revision: str) -> Path:
    """Download ``filename`` of ``repo_id`` at the 40-hex commit ``revision`` into the Hub cache.

    For adding a model the manifest does not list yet (``latentshift weights add``): nothing is
    read from the file here; its sha256 and size become the new entry's integrity data.
    """
    if not COMMIT_PATTERN.match(revision or ""):
        raise WeightsError(f"--revision must be a full 40-hex commit id (not a branch or tag), got {revision!r}")
    entry = ModelEntry(id=repo_id, kind="classifier", architecture="xrv-densenet121",
                       source={"type": "hub", "repo_id": repo_id, "filename": filename, "revision": revision})
    return _download_from_hub(entry, revision)


def _download_url(entry: ModelEntry, destination: Path) -> Path:
    """Download a ``url`` source with the standard library, atomically, into ``destination``."""
    url = entry.source["url"]
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise WeightsError(f"model {entry.id!r}: only http(s) URLs are supported, not {url!r}")
    if is_offline():
        raise ModelUnavailableError(
            f"{entry.id!r} is unavailable: offline mode (HF_HUB_OFFLINE) and it is not in the cache "
            f"{destination.parent}")
    if not is_reachable(url):
        raise ModelUnavailableError(
            f"{entry.id!r} is unavailable: {_origin(url)} cannot be reached and it is not in the cache "
            f"{destination.parent}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, destination)
    handle, partial = tempfile.mkstemp(prefix=destination.name + ".", suffix=".part", dir=destination.parent)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "latentshift"})
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(request, timeout=URL_DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(partial, destination)
    except (OSError, ValueError) as exc:
        Path(partial).unlink(missing_ok=True)  # our own partial download, never a user's file
        raise ModelUnavailableError(f"{entry.id!r} is unavailable: downloading {url} failed: {exc}") from None
    return destination


def fetch_weights(entry: ModelEntry, allow_unverified: bool | None = None) -> FetchedWeights:
    """Local, verified weight file of a ``hub`` or ``url`` entry (cache first, then download).

    Refused before any download: an unpinned revision, and an unknown hash unless
    :func:`unverified_permitted` (opt-in, or a tensor-only format over HTTPS). Refused after
    it: a size or sha256 mismatch (the cached file is kept).
    """
    if entry.source_type == "hub" and pinned_revision(entry) is None:
        raise ModelUnavailableError(_unpinned_message(entry))
    why = None if entry.sha256 else unverified_permitted(entry, allow_unverified)
    if not entry.sha256 and why is None:
        raise ModelUnavailableError(refuse_unverified_message(entry))
    path = cached_or_downloaded(entry)
    return accept_file(path, entry, allow_unverified=why is not None, why=why or BY_OPT_IN)


def cached_or_downloaded(entry: ModelEntry) -> Path:
    """The entry's file from its source (cache first), neither checked nor read (:func:`fetch_weights`
    checks it; ``latentshift weights pin`` records its sha256 and size)."""
    if entry.source_type == "hub":
        revision = pinned_revision(entry)
        if revision is None:
            raise ModelUnavailableError(_unpinned_message(entry))
        return cached_path(entry) or _download_from_hub(entry, revision)
    if entry.source_type == "url":
        return cached_path(entry) or _download_url(entry, url_cache_path(entry))
    raise WeightsError(f"model {entry.id!r}: {entry.source_type!r} is not a Hub or URL source")


# --------------------------------------------------------------------------- status (no download)

def source_status(entry: ModelEntry, check_network: bool = True,
                  allow_unverified: bool | None = None) -> ModelStatus:
    """Cheap status of a ``hub``/``url`` entry for dropdowns and ``weights list``."""
    if entry.source_type == "hub" and pinned_revision(entry) is None:
        return ModelStatus(False, False, None, "revision not pinned")
    why = None if entry.sha256 else unverified_permitted(entry, allow_unverified)
    path = cached_path(entry)
    if path is not None:
        verified, detail = check_file(path, entry)
        if verified is True:
            return ModelStatus(True, True, True, "cached, sha256 verified")
        if verified is False:
            return ModelStatus(False, True, False, f"cached file fails verification: {detail}")
        reason = (f"cached, hash unknown (loads unverified: {why})" if why
                  else "cached, hash unknown: refused without opt-in")
        return ModelStatus(why is not None, True, None, reason)
    if not entry.sha256 and why is None:
        return ModelStatus(False, False, None, "hash unknown, refused without opt-in")
    if is_offline():
        return ModelStatus(False, False, None, "offline (HF_HUB_OFFLINE) and not cached")
    target = source_url(entry)
    host = urllib.parse.urlsplit(target).netloc or target
    if not check_network:
        return ModelStatus(False, False, None, f"not cached; {host} not checked")
    if not is_reachable(target):
        return ModelStatus(False, False, None, f"{host} unreachable and not cached")
    suffix = "" if entry.sha256 else f" (unverified: {why})"
    return ModelStatus(True, False, None, f"downloadable from {host}{suffix}")
