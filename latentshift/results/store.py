"""Content-addressed store of finished explanations, with an SQLite index (WAL) for look-ups and expiry.

A result's id is :func:`result_key`: the sha256 of the input file's sha256, the model ids and the
options, so the same image, models and options name the same result. Layout under ``root``::

    index.sqlite3                   id, created, expires, state (ok | expired | deleted), bytes
    entries/<id[:2]>/<id>/          summary.json, the GIF, the PNGs, record.json (written last)
    tmp/                            results being written (emptied at start)

A result is written into ``tmp/``, every file and the folder fsynced, then renamed into
``entries/`` in one step and only then indexed, so a crash leaves either the whole result or
none that a link would open. ``record.json`` names every file with its size and sha256, so
:meth:`ResultStore.check` can tell a corrupt entry. Expired and deleted results keep their index row
(a tombstone), so a link to them says what happened instead of "unknown".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

logger = logging.getLogger("latentshift.results")

RECORD_NAME = "record.json"
SECONDS_PER_DAY = 86400.0
SCHEMA = """CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY, created REAL NOT NULL, expires REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'ok', bytes INTEGER NOT NULL DEFAULT 0)"""
#: How often a write also sweeps expired results (seconds).
SWEEP_EVERY_S = 600.0


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def result_key(input_sha256: str, model_ids: Mapping[str, str], options: Mapping[str, Any]) -> str:
    """The id of a result: sha256 of the input's sha256, the model ids and the options (canonical JSON)."""
    canonical = json.dumps({"input": input_sha256, "models": dict(model_ids), "options": dict(options)},
                           sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def valid_id(result_id: str | None) -> bool:
    return bool(result_id) and len(result_id) == 64 and all(c in "0123456789abcdef" for c in result_id)


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the regular files under ``folder`` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


@dataclass
class StoredResult:
    """A result in the store: its folder, its files by name, and the record written with it."""

    id: str
    folder: Path
    created: float
    expires: float
    record: dict = field(default_factory=dict)

    def file(self, name: str) -> Path | None:
        entry = self.record.get("files", {}).get(name)
        return None if entry is None else self.folder / entry["name"]


@dataclass
class Lookup:
    """What a link finds: ``state`` is ok, expired, deleted, missing (indexed, files gone) or unknown."""

    state: str
    result: StoredResult | None = None
    expires: float | None = None


class ResultStore:
    """The store under ``root``; results expire ``retention_days`` after they were written."""

    def __init__(self, root: str | os.PathLike, retention_days: float):
        if retention_days <= 0:
            raise ValueError(f"retention must be more than 0 days, got {retention_days}")
        self.root = Path(root)
        self.retention_s = retention_days * SECONDS_PER_DAY
        self.entries = self.root / "entries"
        self.tmp = self.root / "tmp"
        for folder in (self.entries, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._last_sweep = 0.0
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)
        self._clear_tmp()
        self.reindex()

    # ------------------------------------------------------------ index

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / "index.sqlite3", timeout=30, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _rows(self, query: str, *args) -> list[tuple]:
        db = self._connect()
        try:
            return db.execute(query, args).fetchall()
        finally:
            db.close()

    def _execute(self, query: str, *args) -> None:
        db = self._connect()
        try:
            db.execute(query, args)
        finally:
            db.close()

    def folder_of(self, result_id: str) -> Path:
        return self.entries / result_id[:2] / result_id

    def reindex(self) -> int:
        """Index complete entries the index lacks (a crash between rename and insert, a restore); how many."""
        known = {row[0] for row in self._rows("SELECT id FROM results")}
        added = 0
        for record_path in self.entries.glob(f"*/*/{RECORD_NAME}"):
            result_id = record_path.parent.name
            if result_id in known or not valid_id(result_id):
                continue
            try:
                record = json.loads(record_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            created = float(record.get("created", record_path.stat().st_mtime))
            self._execute("INSERT OR IGNORE INTO results VALUES (?, ?, ?, 'ok', ?)", result_id, created,
                          created + self.retention_s, int(record.get("bytes", 0)))
            added += 1
        return added

    # ------------------------------------------------------------ reading

    def lookup(self, result_id: str | None, now: float | None = None) -> Lookup:
        """What ``result_id`` names now (an expired one is swept on the way)."""
        if not valid_id(result_id):
            return Lookup("unknown")
        rows = self._rows("SELECT created, expires, state FROM results WHERE id = ?", result_id)
        if not rows:
            return Lookup("unknown")
        created, expires, state = rows[0]
        if state == "ok" and expires <= (time.time() if now is None else now):
            self._remove(result_id, "expired")
            state = "expired"
        if state != "ok":
            return Lookup(state, expires=expires)
        record_path = self.folder_of(result_id) / RECORD_NAME
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return Lookup("missing", expires=expires)
        return Lookup("ok", StoredResult(result_id, record_path.parent, created, expires, record), expires)

    def get(self, result_id: str | None) -> StoredResult | None:
        return self.lookup(result_id).result

    def list(self, states: Iterable[str] = ("ok",)) -> list[tuple[str, float, float, str, int]]:
        """(id, created, expires, state, bytes) of the results in ``states``, newest first."""
        wanted = list(states)
        marks = ",".join("?" * len(wanted))
        return self._rows(f"SELECT id, created, expires, state, bytes FROM results WHERE state IN ({marks}) "
                          "ORDER BY created DESC", *wanted)

    def size_bytes(self) -> int:
        return folder_bytes(self.root)

    # ------------------------------------------------------------ writing

    def put(self, result_id: str, files: Mapping[str, str | os.PathLike], record: Mapping[str, Any]) -> StoredResult:
        """Store ``files`` (name -> path; copied) with ``record`` under ``result_id``, atomically.

        A result already stored under this id is kept (the same inputs give the same result).
        """
        if not valid_id(result_id):
            raise ValueError(f"not a result id: {result_id!r}")
        existing = self.get(result_id)
        if existing is not None:
            return existing
        staging = Path(tempfile.mkdtemp(prefix=f"{result_id[:12]}-", dir=self.tmp))
        try:
            full_record = self._stage(staging, files, record)
            with self._write_lock:
                target = self.folder_of(result_id)
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():  # an expired or deleted result's leftovers, or one written meanwhile
                    shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
                _fsync_folder(target.parent)
                self._execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, 'ok', ?)", result_id,
                              full_record["created"], full_record["created"] + self.retention_s,
                              full_record["bytes"])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._maybe_sweep()
        return self.get(result_id)

    def _stage(self, staging: Path, files: Mapping[str, str | os.PathLike], record: Mapping[str, Any]) -> dict:
        """Copy and fsync the files into ``staging``, then write record.json last; the full record."""
        described, total = {}, 0
        for name, source in files.items():
            source = Path(source)
            copy_name = source.name  # the run's own file names, as the downloads show them
            if copy_name == RECORD_NAME or any(entry["name"] == copy_name for entry in described.values()):
                copy_name = f"{name}-{source.name}"
            shutil.copyfile(source, staging / copy_name)
            _fsync_file(staging / copy_name)
            size = (staging / copy_name).stat().st_size
            described[name] = {"name": copy_name, "bytes": size, "sha256": file_sha256(staging / copy_name)}
            total += size
        full = {**record, "files": described, "created": time.time(), "bytes": total}
        (staging / RECORD_NAME).write_text(json.dumps(full, indent=1, default=str), encoding="utf-8")
        _fsync_file(staging / RECORD_NAME)
        _fsync_folder(staging)
        return full

    def adopt(self, result_id: str, folder: Path) -> StoredResult | None:
        """Add a whole entry written elsewhere (a restore): copied into ``tmp/``, fsynced, renamed, indexed."""
        if self.get(result_id) is not None:
            return self.get(result_id)
        staging = Path(tempfile.mkdtemp(prefix=f"{result_id[:12]}-", dir=self.tmp))
        try:
            for source in Path(folder).iterdir():
                shutil.copyfile(source, staging / source.name)
                _fsync_file(staging / source.name)
            _fsync_folder(staging)
            with self._write_lock:
                target = self.folder_of(result_id)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
                _fsync_folder(target.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.reindex()
        return self.get(result_id)

    def delete(self, result_id: str) -> bool:
        """Delete a stored result (its link then says so); False if there was none."""
        if not self._rows("SELECT 1 FROM results WHERE id = ? AND state = 'ok'", result_id):
            return False
        self._remove(result_id, "deleted")
        return True

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove every result past its expiry (the index keeps a tombstone); their ids."""
        now = time.time() if now is None else now
        self._last_sweep = now
        expired = [row[0] for row in self._rows("SELECT id FROM results WHERE state = 'ok' AND expires <= ?", now)]
        for result_id in expired:
            self._remove(result_id, "expired")
        return expired

    def _maybe_sweep(self) -> None:
        if time.time() - self._last_sweep >= SWEEP_EVERY_S:
            self.sweep()

    def _remove(self, result_id: str, state: str) -> None:
        self._execute("UPDATE results SET state = ? WHERE id = ?", state, result_id)
        shutil.rmtree(self.folder_of(result_id), ignore_errors=True)

    def _clear_tmp(self) -> None:
        for leftover in self.tmp.iterdir():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)

    # ------------------------------------------------------------ checking

    def check(self) -> dict[str, list[str]]:
        """Every indexed result checked against its record: problem lists by kind (empty lists: all good)."""
        problems: dict[str, list[str]] = {"missing": [], "corrupt": [], "unindexed": []}
        for result_id, *_ in self.list():
            problem = self.verify(result_id)
            if problem:
                problems["missing" if problem == "missing" else "corrupt"].append(f"{result_id}: {problem}")
        known = {row[0] for row in self._rows("SELECT id FROM results")}
        problems["unindexed"] = sorted(p.parent.name for p in self.entries.glob(f"*/*/{RECORD_NAME}")
                                       if p.parent.name not in known)
        return problems

    def verify(self, result_id: str) -> str:
        """'' when the stored result is whole, else what is wrong ('missing' when its record is gone)."""
        found = self.lookup(result_id)
        if found.state == "missing":
            return "missing"
        if found.result is None:
            return found.state
        for name, entry in found.result.record.get("files", {}).items():
            path = found.result.folder / entry["name"]
            if not path.is_file():
                return f"{name}: file missing"
            if path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
                return f"{name}: contents differ from the record"
        return ""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
