"""The weights manifest: which models exist, where their files are, what they must hash to.

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

The top-level ``"serving"`` list ranks the model pairs the app answers with, best first::

    "serving": [{"classifier": "densenet121-res224-all", "autoencoder": "resnetae-101-elastic",
                 "label": "the Latent Shift paper's pair"}, ...]

(see :mod:`.preference`); the embedded default pair is always the last resort.

Integrity checks (sha256 and size, **before** anything is deserialised; unknown hashes) live
in :mod:`.integrity`, sources (file, Hub, URL) in :mod:`.sources`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from ..settings import Settings, variable_name

#: The package's own manifest (a link to the repository's top-level ``weights_manifest.json``,
#: a copy inside a built wheel). Its relative ``file`` paths start at the folder that holds
#: the ``latentshift`` package (the checkout, or ``site-packages``).
PACKAGE_ROOT = Path(str(resources.files("latentshift")))
DEFAULT_MANIFEST = PACKAGE_ROOT / "weights_manifest.json"
BUILTIN_BASE_DIR = PACKAGE_ROOT.parent
MANIFEST_ENV = variable_name("manifest")              # a manifest used *instead of* the package's
EXTRA_MANIFEST_ENV = variable_name("extra_manifest")  # a manifest merged *over* the package's
KINDS = ("classifier", "autoencoder", "guard")


@dataclass(frozen=True)
class ServingPair:
    """A classifier + autoencoder pair the app may answer with, and what to call it on the page."""

    classifier: str
    autoencoder: str
    label: str = ""

    def describe(self) -> str:
        """E.g. "the Latent Shift paper's pair (`densenet121-res224-all` + `resnetae-101-elastic`)"."""
        ids = f"`{self.classifier}` + `{self.autoencoder}`"
        return f"{self.label} ({ids})" if self.label else ids


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
    base_dir: Path = BUILTIN_BASE_DIR

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
        known = {f.name for f in fields(cls)} - {"info", "base_dir"}
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

    def __init__(self, entries: list[ModelEntry], path: Path | None = None,
                 serving: list[ServingPair] | None = None):
        self.path = path
        self.serving_ranked: list[ServingPair] = list(serving or [])
        self.entries: dict[str, ModelEntry] = {}
        for entry in entries:
            if entry.id in self.entries:
                raise WeightsError(f"manifest lists model id {entry.id!r} twice")
            self.entries[entry.id] = entry

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Manifest":
        """Read exactly the manifest at ``path``, or the package's own."""
        path = Path(path or DEFAULT_MANIFEST)
        builtin = path.resolve() == DEFAULT_MANIFEST.resolve()
        data = read_structured_file(path, "weights manifest")
        base_dir = BUILTIN_BASE_DIR if builtin else path.resolve().parent
        return cls([ModelEntry.from_dict(e, base_dir) for e in data.get("models", [])], path,
                   _serving_pairs(data.get("serving", []), path))

    @classmethod
    def for_user(cls, extra: str | os.PathLike | None = None, settings: Settings | None = None) -> "Manifest":
        """The manifest a person works with.

        ``extra`` (``--manifest``), else ``settings.extra_manifest`` (``$LATENTSHIFT_EXTRA_MANIFEST``), is
        merged over the package's manifest (or over ``settings.manifest``, ``$LATENTSHIFT_MANIFEST``,
        when that replaces it). Without ``settings``: ``Settings()``, the package's manifest alone.
        """
        settings = settings or Settings()
        base = cls.load(settings.manifest)
        extra = extra or settings.extra_manifest
        return base.merged(cls.load(extra)) if extra else base

    def merged(self, extra: "Manifest") -> "Manifest":
        """This manifest with ``extra``'s entries added (same id: extra wins).

        A kind for which ``extra`` marks an embedded default gets that default; otherwise this
        manifest's default stays the default.
        """
        extra_defaults = {e.kind for e in extra if e.embedded_default}
        kept = [replace(e, embedded_default=False) if e.kind in extra_defaults else e
                for e in self if e.id not in extra.entries]
        return Manifest(list(extra) + kept, extra.path, extra.serving_ranked or self.serving_ranked)

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

    def serving(self) -> list[ServingPair]:
        """The pairs to serve, best first: the ``"serving"`` ranking (pairs naming a model this
        manifest lacks are left out), then the embedded default pair if the ranking lacks it."""
        pairs = [p for p in self.serving_ranked if p.classifier in self.entries and p.autoencoder in self.entries]
        embedded = ServingPair(self.default("classifier").id, self.default("autoencoder").id, "the embedded demo pair")
        if all((p.classifier, p.autoencoder) != (embedded.classifier, embedded.autoencoder) for p in pairs):
            pairs.append(embedded)
        return pairs

    def default(self, kind: str) -> ModelEntry:
        """The embedded default of ``kind`` (the first entry marked ``embedded_default``)."""
        for entry in self.of_kind(kind):
            if entry.embedded_default:
                return entry
        raise WeightsError(f"the manifest marks no {kind} as embedded_default")


def _serving_pairs(items, path: Path) -> list[ServingPair]:
    """The manifest's ``"serving"`` list as pairs; a message naming the file when it is malformed."""
    if not isinstance(items, list):
        raise WeightsError(f"{path}: \"serving\" must be a list of {{classifier, autoencoder, label}}")
    pairs = []
    for item in items:
        if not isinstance(item, dict) or not item.get("classifier") or not item.get("autoencoder"):
            raise WeightsError(f"{path}: every \"serving\" item needs a classifier and an autoencoder id, "
                               f"got {item!r}")
        pairs.append(ServingPair(str(item["classifier"]), str(item["autoencoder"]), str(item.get("label", ""))))
    return pairs


def read_structured_file(path: Path, what: str) -> dict:
    """A JSON (or, with PyYAML installed, YAML) file as a dict; a message naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WeightsError(f"{what} not found: {path}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise WeightsError(f"{what} {path} is YAML, but PyYAML is not installed (pip install pyyaml), "
                               "or write it as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise WeightsError(f"{what} {path} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{what} {path} must hold an object (keys and values), not a {type(data).__name__}")
    return data
