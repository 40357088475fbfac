"""Pinning a model: download its file once and record its sha256 and size in a manifest.

``latentshift weights pin MODEL_ID`` writes them into the manifest that lists the model (in a
checkout: ``weights_manifest.json``, to commit); ``--to FILE`` writes the whole entry, pinned,
into a manifest of your own instead (merged over the built-in one with ``--manifest FILE`` or
``$LATENTSHIFT_EXTRA_MANIFEST``). Nothing is deserialised here: the file is only hashed.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import IntegrityError, WeightsError
from ..settings import Settings
from . import hub
from .integrity import same_sha256, sha256_of
from .manifest import DEFAULT_MANIFEST, ModelEntry
from .sources import resolve_local_file


@dataclass(frozen=True)
class Pinned:
    """What :func:`pin_model` did: the model, its file, hash and size, the manifest written,
    and whether the manifest already held the same hash."""

    model_id: str
    path: Path
    sha256: str
    size: int
    manifest: Path
    unchanged: bool


def entry_dict(entry: ModelEntry) -> dict:
    """The manifest JSON of an entry (the fields of ``weights_manifest.json``)."""
    data = {"id": entry.id, "kind": entry.kind, "architecture": entry.architecture}
    if entry.architecture_kwargs:
        data["architecture_kwargs"] = dict(entry.architecture_kwargs)
    if entry.labels:
        data["labels"] = list(entry.labels)
    if entry.thresholds is not None:
        data["thresholds"] = list(entry.thresholds)
    data.update(resolution=entry.resolution, input_range=list(entry.input_range), format=entry.format,
                source=dict(entry.source))
    if entry.embedded_default:
        data["embedded_default"] = True
    data.update(entry.info)
    return data


def local_or_downloaded(entry: ModelEntry) -> Path:
    """The entry's file: a repository file, or its Hub/URL download (cache first), unread."""
    return resolve_local_file(entry) if entry.source_type == "file" else hub.cached_or_downloaded(entry)


def defining_manifest(model_id: str, extra: str | os.PathLike | None, settings: Settings | None = None) -> Path:
    """The manifest file that lists ``model_id``: ``extra`` (or ``settings.extra_manifest``,
    ``$LATENTSHIFT_EXTRA_MANIFEST``) when it does, else ``settings.manifest`` (``$LATENTSHIFT_MANIFEST``)
    or the package's own."""
    settings = settings or Settings()
    candidates = [extra or settings.extra_manifest, settings.manifest or DEFAULT_MANIFEST]
    for candidate in candidates:
        if candidate and model_id in _ids(Path(candidate)):
            return Path(candidate).resolve()
    raise WeightsError(f"no manifest file lists {model_id!r}")


def pin_model(entry: ModelEntry, target: Path, whole_entry: bool) -> Pinned:
    """Download (or find) the entry's file, hash it and write sha256 and size into ``target``.

    ``whole_entry``: write the full entry (an override in your own manifest, created if missing);
    otherwise update only the source of the entry already in ``target``. A file whose hash
    differs from one the manifest already pins is refused (nothing is written).
    """
    if target.suffix.lower() not in (".json", ""):
        raise WeightsError(f"{target} is not JSON; pin into a .json manifest (--to my_models.json)")
    path = local_or_downloaded(entry)
    digest, size = sha256_of(path), path.stat().st_size
    if entry.sha256 and not same_sha256(digest, entry.sha256):
        raise IntegrityError(f"{entry.id!r}: the manifest pins sha256 {entry.sha256} but {path} has {digest}; "
                             "refusing to overwrite the pin (edit the manifest if the file was replaced on purpose)")
    source = dict(entry.source, sha256=digest, size=size, note=_note(entry))
    if entry.source_type == "file" and whole_entry:
        source["path"] = str(path.resolve())
    data = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {"format_version": 1,
                                                                                       "models": []}
    models = data.setdefault("models", [])
    if whole_entry:
        data["models"] = [m for m in models if m.get("id") != entry.id] + [dict(entry_dict(entry), source=source)]
    else:
        matching = [m for m in models if m.get("id") == entry.id]
        if not matching:
            raise WeightsError(f"{target} does not list {entry.id!r}")
        matching[0]["source"] = dict(matching[0]["source"], sha256=digest, size=size, note=source["note"])
    target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Pinned(entry.id, path, digest, size, target, unchanged=bool(entry.sha256) and entry.size == size)


def _note(entry: ModelEntry) -> str:
    where = {"hub": lambda s: f"{s.get('repo_id')}@{str(s.get('revision'))[:12]}/{s.get('filename')}",
             "url": lambda s: s.get("url"), "file": lambda s: s.get("path")}[entry.source_type](entry.source)
    return f"sha256 and size recorded by `latentshift weights pin` from {where} on {datetime.date.today()}"


def _ids(path: Path) -> set[str]:
    if not path.is_file() or path.suffix.lower() in (".yaml", ".yml"):
        return set()
    try:
        return {m.get("id") for m in json.loads(path.read_text(encoding="utf-8")).get("models", [])}
    except (json.JSONDecodeError, AttributeError):
        return set()
