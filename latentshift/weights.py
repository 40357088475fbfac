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
raises :class:`~latentshift.errors.IntegrityError` naming both hashes.
"""

from __future__ import annotations

import hashlib
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


def resolve_local_file(entry: ModelEntry) -> Path:
    """Path of a ``file`` source, relative paths taken from the manifest's folder."""
    path = Path(entry.source["path"])
    if not path.is_absolute():
        path = entry.base_dir / path
    if not path.is_file():
        raise ModelUnavailableError(f"weights file of {entry.id!r} is missing: {path}")
    return path


def fetch(entry: ModelEntry) -> Path:
    """Return a local, *verified* path to the entry's weight file.

    ``file`` sources are read from the repository; other sources are handled by
    :mod:`latentshift.hub`.
    """
    if entry.source_type == "file":
        path = resolve_local_file(entry)
        verify_file(path, entry)
        return path
    if entry.source_type in ("hub", "url"):
        from . import hub

        return hub.fetch(entry)
    raise WeightsError(f"model {entry.id!r} has an unknown source type {entry.source_type!r}")


def read_state_dict(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    """Deserialise a state dict from an already verified file.

    ``safetensors`` files hold tensors only. ``torch-pickle`` files are whole pickled
    models (torchxrayvision's ``model.pt``); they are only read after the sha256
    matched the manifest, and only their state dict is kept.
    """
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if fmt == "torch-pickle":
        obj = torch.load(str(path), map_location="cpu", weights_only=False)  # verified above
        state = obj.state_dict() if isinstance(obj, nn.Module) else obj
        if not isinstance(state, dict):
            raise WeightsError(f"{path} holds neither a model nor a state dict")
        return dict(state)
    raise WeightsError(f"unknown weights format {fmt!r}")


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


def load_model(entry: ModelEntry, device: str | torch.device = "cpu") -> nn.Module:
    """Fetch, verify, deserialise and build the model of ``entry`` on ``device``."""
    path = fetch(entry)
    logger.info("loading %s %r from %s", entry.kind, entry.id, path)
    model = build_model(entry, read_state_dict(path, entry.format))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(device)
