"""The weights manifest, verified fetching and loading of models.

``weights_manifest.json`` lists every model the project offers. Each entry::

    {
      "id": "demo-pneumonia",                 # what users type (--classifier ID)
      "kind": "classifier" | "autoencoder",
      "architecture": "demo-classifier",      # key of latentshift.models.ARCHITECTURES
      "architecture_kwargs": {...},           # optional
      "labels": ["Pneumonia"],                # classifiers: output names ('' = unused)
      "thresholds": [0.5],                    # classifiers, optional: sigmoid operating points
      "resolution": 224, "input_range": [-1024, 1024],
      "format": "safetensors" | "torch-pickle",
      "source": {"type": "file", "path": "weights/x.safetensors", "sha256": "...", "size": 123}
             or {"type": "hub", "repo_id": "...", "filename": "...", "revision": "<40 hex>",
                 "sha256": "..." | null, "size": 123 | null}
             or {"type": "url", "url": "...", "sha256": null, "size": null},
      "embedded_default": true,               # shipped in the repo, used when nothing else is chosen
      "license": "...", "citation": "...", "description": "...", "model_card": "weights/x.md"
    }

The sha256 (and size) of a file is checked **before** it is deserialised; a mismatch
raises :class:`~latentshift.errors.IntegrityError` naming both hashes. An entry whose
hash is unknown loads only on request (``allow_unverified=True`` or
``LATENTSHIFT_ALLOW_UNVERIFIED=1``), and then only through ``torch.load(weights_only=True)``.
Hub and URL sources (download, cache, offline mode) live in :mod:`latentshift.hub`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import IntegrityError, ModelUnavailableError, WeightsError
from .models import build_architecture

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = REPO_ROOT / "weights_manifest.json"
MANIFEST_ENV = "LATENTSHIFT_MANIFEST"
ALLOW_UNVERIFIED_ENV = "LATENTSHIFT_ALLOW_UNVERIFIED"
KINDS = ("classifier", "autoencoder")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the manifest (see the module docstring for the fields)."""

    id: str
    kind: str
    architecture: str
    source: dict[str, Any]
    format: str = "safetensors"
    labels: tuple[str, ...] = ()
    thresholds: tuple[float | None, ...] | None = None
    resolution: int = 224
    input_range: tuple[float, float] = (-1024.0, 1024.0)
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    embedded_default: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = REPO_ROOT

    @property
    def source_type(self) -> str:
        return self.source.get("type", "")

    @property
    def sha256(self) -> str | None:
        return self.source.get("sha256")

    @property
    def size(self) -> int | None:
        return self.source.get("size")

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path) -> "ModelEntry":
        known = {"id", "kind", "architecture", "source", "format", "labels", "thresholds",
                 "resolution", "input_range", "architecture_kwargs", "embedded_default"}
        missing = [k for k in ("id", "kind", "architecture", "source") if k not in data]
        if missing:
            raise WeightsError(f"manifest entry {data.get('id', '?')!r} lacks {', '.join(missing)}")
        if data["kind"] not in KINDS:
            raise WeightsError(f"manifest entry {data['id']!r}: kind must be one of {KINDS}")
        thresholds = data.get("thresholds")
        return cls(
            id=data["id"],
            kind=data["kind"],
            architecture=data["architecture"],
            source=dict(data["source"]),
            format=data.get("format", "safetensors"),
            labels=tuple(data.get("labels", ())),
            thresholds=None if thresholds is None else tuple(thresholds),
            resolution=int(data.get("resolution", 224)),
            input_range=tuple(data.get("input_range", (-1024.0, 1024.0))),
            architecture_kwargs=dict(data.get("architecture_kwargs", {})),
            embedded_default=bool(data.get("embedded_default", False)),
            info={k: v for k, v in data.items() if k not in known},
            base_dir=base_dir,
        )


class Manifest:
    """The parsed manifest: entries by id, plus the embedded defaults per kind."""

    def __init__(self, entries: list[ModelEntry], path: Path | None = None):
        self.path = path
        self.entries: dict[str, ModelEntry] = {}
        for entry in entries:
            if entry.id in self.entries:
                raise WeightsError(f"manifest lists model id {entry.id!r} twice")
            self.entries[entry.id] = entry

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Manifest":
        """Read the manifest at ``path``, ``$LATENTSHIFT_MANIFEST`` or the repo's default."""
        path = Path(path or os.environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WeightsError(f"weights manifest not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise WeightsError(f"weights manifest {path} is not valid JSON: {exc}") from None
        base_dir = path.resolve().parent
        return cls([ModelEntry.from_dict(e, base_dir) for e in data.get("models", [])], path)

    def __iter__(self):
        return iter(self.entries.values())

    def get(self, model_id: str, kind: str | None = None) -> ModelEntry:
        try:
            entry = self.entries[model_id]
        except KeyError:
            ids = ", ".join(e.id for e in self if kind is None or e.kind == kind)
            raise WeightsError(f"unknown model id {model_id!r}; the manifest lists: {ids}") from None
        if kind is not None and entry.kind != kind:
            raise WeightsError(f"model {model_id!r} is a {entry.kind}, not a {kind}")
        return entry

    def of_kind(self, kind: str) -> list[ModelEntry]:
        return [e for e in self if e.kind == kind]

    def default(self, kind: str) -> ModelEntry:
        """The embedded default of ``kind`` (the first entry marked ``embedded_default``)."""
        for entry in self.of_kind(kind):
            if entry.embedded_default:
                return entry
        raise WeightsError(f"the manifest marks no {kind} as embedded_default")


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def allow_unverified_requested(allow_unverified: bool | None = None) -> bool:
    """Whether weights without a known hash may load: the argument, else ``$LATENTSHIFT_ALLOW_UNVERIFIED``."""
    if allow_unverified is not None:
        return bool(allow_unverified)
    return os.environ.get(ALLOW_UNVERIFIED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def unverified_warning(entry: ModelEntry) -> str:
    """The message shown (log and UI) when weights load without hash verification."""
    return (f"the weights of {entry.id!r} were loaded WITHOUT hash verification (the manifest has "
            f"no sha256 for them; allowed by opt-in). Only tensors were read from the file.")


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
    if actual != entry.sha256.lower():
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
    if actual != entry.sha256.lower():
        return False, f"expected sha256 {entry.sha256}, got {actual}"
    return True, "sha256 verified"


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


def accept_file(path: Path, entry: ModelEntry, allow_unverified: bool | None = None) -> FetchedWeights:
    """Verify ``path`` against the entry (size, sha256), or accept it unverified when allowed.

    Raises :class:`IntegrityError` on a mismatch and :class:`ModelUnavailableError` for an
    unknown hash without opt-in. Nothing is deleted.
    """
    if entry.sha256:
        verify_file(path, entry)
        return FetchedWeights(path, verified=True)
    if not allow_unverified_requested(allow_unverified):
        raise ModelUnavailableError(refuse_unverified_message(entry))
    verified, detail = check_file(path, entry)
    if verified is False:
        raise IntegrityError(f"weights of {entry.id!r} at {path}: {detail}; refusing to load them")
    warning = unverified_warning(entry)
    logger.warning("%s", warning)
    return FetchedWeights(path, verified=False, warning=warning)


def fetch_weights(entry: ModelEntry, allow_unverified: bool | None = None) -> FetchedWeights:
    """Return the entry's local weight file, verified (or explicitly allowed unverified).

    ``file`` sources are read from the repository; ``hub`` and ``url`` sources are
    handled by :mod:`latentshift.hub` (cache first, no network when cached).
    """
    if entry.source_type == "file":
        if not entry.sha256 and not allow_unverified_requested(allow_unverified):
            raise ModelUnavailableError(refuse_unverified_message(entry))
        return accept_file(resolve_local_file(entry), entry, allow_unverified)
    if entry.source_type in ("hub", "url"):
        from . import hub

        return hub.fetch_weights(entry, allow_unverified=allow_unverified)
    raise WeightsError(f"model {entry.id!r} has an unknown source type {entry.source_type!r}")


def fetch(entry: ModelEntry, allow_unverified: bool | None = None) -> Path:
    """Return a local, *verified* path to the entry's weight file (see :func:`fetch_weights`)."""
    return fetch_weights(entry, allow_unverified=allow_unverified).path


def model_status(entry: ModelEntry, check_network: bool = True,
                 allow_unverified: bool | None = None) -> ModelStatus:
    """Whether ``entry`` can be loaded here and why not; never downloads.

    With ``check_network`` a Hub/URL entry that is not cached costs at most one quick
    reachability probe per host and process (see :func:`latentshift.hub.is_reachable`).
    """
    if entry.source_type == "file":
        path = local_file_path(entry)
        if not path.is_file():
            return ModelStatus(False, False, None, f"weights file missing: {path}")
        verified, detail = check_file(path, entry)
        if verified is None:
            allowed = allow_unverified_requested(allow_unverified)
            reason = ("in the repository, hash unknown (loads unverified by opt-in)" if allowed
                      else f"in the repository, hash unknown (set {ALLOW_UNVERIFIED_ENV}=1 to load it)")
            return ModelStatus(allowed, True, None, reason)
        if verified:
            return ModelStatus(True, True, True, "in the repository, sha256 verified")
        return ModelStatus(False, True, False, f"repository file fails verification: {detail}")
    if entry.source_type in ("hub", "url"):
        from . import hub

        return hub.source_status(entry, check_network=check_network, allow_unverified=allow_unverified)
    return ModelStatus(False, False, None, f"unknown source type {entry.source_type!r}")


def read_state_dict(path: Path, fmt: str, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Deserialise a state dict from a weight file.

    ``safetensors`` files hold tensors only and are always safe to read.
    ``torch-pickle`` files (torchxrayvision's ``model.pt`` are whole pickled models)
    are read into memory once; only when ``expected_sha256`` is given *and* matches
    those very bytes are they fully unpickled (then only the state dict is kept).
    Otherwise they go through ``torch.load(weights_only=True)``, which reads plain
    tensors and refuses any pickle that would run code.
    """
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if fmt != "torch-pickle":
        raise WeightsError(f"unknown weights format {fmt!r}")
    data = Path(path).read_bytes()
    if expected_sha256:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            raise IntegrityError(f"weights at {path} failed verification: expected sha256 "
                                 f"{expected_sha256}, got {actual}; refusing to load them")
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)  # hash matched above
    else:
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError or RuntimeError, depending on the content
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(
                f"refusing to unpickle {path}: its hash is not verified and it is not a plain tensor "
                f"file (it needs arbitrary unpickling, which could run code). Detail: {reason}") from None
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds neither a model nor a state dict")
    return dict(state)


def build_model(entry: ModelEntry, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Build the entry's architecture and load ``state_dict`` into it (strict)."""
    kwargs = dict(entry.architecture_kwargs)
    kwargs.setdefault("resolution", entry.resolution)
    if entry.kind == "classifier":
        kwargs.setdefault("labels", list(entry.labels))
        kwargs.setdefault("thresholds", None if entry.thresholds is None else list(entry.thresholds))
    model = build_architecture(entry.architecture, **kwargs)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            first_line = str(exc).splitlines()[0]
            raise WeightsError(f"weights of {entry.id!r} do not fit architecture "
                               f"{entry.architecture!r}: {first_line}") from None
    model.model_id = entry.id
    if entry.kind == "classifier":
        model.pathologies = list(entry.labels)
        if entry.thresholds is not None:
            model.thresholds = [float("nan") if t is None else float(t) for t in entry.thresholds]
    return model.eval()


def load_model_with_warning(entry: ModelEntry, device: str | torch.device = "cpu",
                            allow_unverified: bool | None = None) -> tuple[nn.Module, str | None]:
    """Like :func:`load_model`, also returning the warning to show (unverified weights) or None."""
    fetched = fetch_weights(entry, allow_unverified=allow_unverified)
    logger.info("loading %s %r from %s", entry.kind, entry.id, fetched.path)
    expected = entry.sha256 if fetched.verified else None
    model = build_model(entry, read_state_dict(fetched.path, entry.format, expected_sha256=expected))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(device), fetched.warning


def load_model(entry: ModelEntry, device: str | torch.device = "cpu",
               allow_unverified: bool | None = None) -> nn.Module:
    """Fetch, verify, deserialise and build the model of ``entry`` on ``device``."""
    return load_model_with_warning(entry, device, allow_unverified)[0]


def load_model_or_default(manifest: Manifest, model_id: str | None, kind: str,
                          device: str | torch.device = "cpu",
                          allow_unverified: bool | None = None) -> tuple[nn.Module, ModelEntry, str | None]:
    """Load ``model_id``, or the embedded default of ``kind`` when it cannot be loaded here.

    Returns ``(model, entry, warning)``; ``warning`` names the requested model and why
    it was replaced (or that weights are unverified), None when all went as asked.
    Errors of the default itself are raised.
    """
    if model_id is None:
        entry = manifest.default(kind)
        model, warning = load_model_with_warning(entry, device, allow_unverified)
        return model, entry, warning
    try:
        entry = manifest.get(model_id, kind)
        model, warning = load_model_with_warning(entry, device, allow_unverified)
        return model, entry, warning
    except WeightsError as exc:
        try:
            default = manifest.default(kind)
        except WeightsError:
            raise exc from None
        if default.id == model_id:
            raise
        reason = str(exc).removeprefix(f"{model_id!r} is unavailable: ")
        warning = (f"model {model_id!r} is unavailable here ({reason}); "
                   f"using the embedded default {default.id!r} instead")
        logger.warning("%s", warning)
        model, default_warning = load_model_with_warning(default, device, allow_unverified)
        if default_warning:
            warning = f"{warning}; {default_warning}"
        return model, default, warning
