"""What a batch explains: the items of an input folder (recursive) or of a CSV.

A folder gives every image and DICOM file under it (hidden files and the output folder left
out), in sorted order. A CSV needs a ``path`` column (relative paths are read from the CSV's
folder) and may have ``target``, ``label`` and ``classifier`` columns. Every item gets a
``name`` (its relative path with ``/`` as ``__`` and without the suffix) that is unique in
the batch and names its output folder, so a rerun finds the same folders again.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionsError

logger = logging.getLogger(__name__)

#: File name endings read as images (the DICOM ones also without a suffix, by their preamble).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".dicom")
CSV_COLUMNS = ("path", "target", "label", "classifier")


@dataclass(frozen=True)
class Item:
    """One image of the batch, with what its CSV row asks for (empty: the batch's choice)."""

    path: str
    name: str
    target: str = ""
    label: str = ""
    classifier: str = ""


def read_items(source: str | Path, exclude: str | Path | None = None) -> list[Item]:
    """The items of a folder or a CSV file; raises :class:`OptionsError` for a bad INPUT."""
    source = Path(source)
    if source.is_dir():
        items = _folder_items(source, Path(exclude).resolve() if exclude else None)
    elif source.is_file() and source.suffix.lower() == ".csv":
        items = _csv_items(source)
    elif source.exists():
        raise OptionsError(f"{source.name!r} is neither a folder nor a .csv file")
    else:
        raise OptionsError(f"{str(source)!r} does not exist")
    if not items:
        raise OptionsError(f"no image or DICOM files in {str(source)!r}")
    logger.info("%d items from %s", len(items), source)
    return items


def _folder_items(folder: Path, exclude: Path | None) -> list[Item]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES or (not path.suffix and _has_dicom_preamble(path)):
            found.append((str(path), relative.with_suffix("").as_posix()))
    return _named([Item(path, stem) for path, stem in found])


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _csv_items(path: Path) -> list[Item]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "path" not in columns:
            raise OptionsError(f"{path.name!r} needs a 'path' column (it has: {', '.join(columns) or 'none'}); "
                               f"optional columns: {', '.join(CSV_COLUMNS[1:])}")
        items = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("path"):
                raise OptionsError(f"{path.name!r} line {line}: the 'path' cell is empty")
            image = Path(row["path"])
            image = image if image.is_absolute() else path.parent / image
            stem = Path(row["path"]).with_suffix("").as_posix().lstrip("/").replace("../", "")
            items.append(Item(str(image), stem, row.get("target", ""), row.get("label", ""),
                              row.get("classifier", "")))
    return _named(items)


def _named(items: list[Item]) -> list[Item]:
    """Items with file-system-safe names, unique in the batch (a repeat gets -2, -3, ...)."""
    used: set[str] = set()
    named = []
    for item in items:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", item.name.replace("/", "__")).strip("._") or "image"
        name, count = base, 1
        while name.lower() in used:
            count += 1
            name = f"{base}-{count}"
        used.add(name.lower())
        named.append(Item(item.path, name, item.target, item.label, item.classifier))
    return named


def content_hash(path: str | Path) -> str | None:
    """sha256 of the file's bytes (None when it cannot be read: the task reports why)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
