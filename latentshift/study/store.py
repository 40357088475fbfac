"""The study's SQLite database: readers, their assignments (the order) and their ratings.

One connection per call (``sqlite3`` connections are not shared between threads), WAL
journal, ``synchronous=FULL`` and a busy timeout, so several readers can rate at once and a
killed server loses nothing that was committed. Every rating is its own transaction,
committed before the call returns. Refusals raise :class:`StudyError` with a message for
the reader.
"""

from __future__ import annotations

import re
import sqlite3
import time
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..errors import LatentShiftError
from .schedule import CONDITIONS, reader_schedule

DATABASE_NAME = "study.sqlite"
BUSY_TIMEOUT_MS = 10_000
READER_CODE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
RATINGS = range(1, 6)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readers (
    code TEXT PRIMARY KEY, idx INTEGER NOT NULL UNIQUE, registered_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    reader TEXT NOT NULL REFERENCES readers(code), position INTEGER NOT NULL,
    case_id TEXT NOT NULL, condition TEXT NOT NULL, served_at REAL,
    PRIMARY KEY (reader, position), UNIQUE (reader, case_id, condition));
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, reader TEXT NOT NULL REFERENCES readers(code),
    case_id TEXT NOT NULL, condition TEXT NOT NULL,
    rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5), seconds REAL, rated_at TEXT NOT NULL,
    UNIQUE (reader, case_id, condition));
"""


class StudyError(LatentShiftError):
    """A request the study refuses (bad reader code, rating out of range, not offered, twice)."""


class Store:
    """The database of one study folder; ``case_ids`` and ``seed`` come from study.json."""

    def __init__(self, path: str | Path, case_ids: list[str], seed: int):
        self.path, self.case_ids, self.seed = Path(path), list(case_ids), int(seed)

    @contextmanager
    def connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A fresh connection; with ``write`` one IMMEDIATE transaction, committed on exit."""
        with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)) as conn:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if not write:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def initialise(self) -> None:
        """Create the tables (idempotent) and switch the file to WAL mode."""
        with closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.executescript(SCHEMA)
        if mode.lower() != "wal":
            raise StudyError(f"{self.path} cannot use SQLite's WAL mode here (got {mode!r})")

    def register(self, code: str) -> int:
        """The reader's index, registering the code with its schedule on first use."""
        code = check_reader_code(code)
        with self.connect(write=True) as conn:
            row = conn.execute("SELECT idx FROM readers WHERE code = ?", (code,)).fetchone()
            if row:
                return row[0]
            index = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM readers").fetchone()[0]
            conn.execute("INSERT INTO readers VALUES (?, ?, ?)", (code, index, _now()))
            order = reader_schedule(self.case_ids, code, index, self.seed)
            conn.executemany("INSERT INTO assignments (reader, position, case_id, condition) VALUES (?, ?, ?, ?)",
                             [(code, i, case_id, condition) for i, (case_id, condition) in enumerate(order)])
            return index

    def next_assignment(self, code: str) -> dict:
        """The reader's next unrated assignment (marked as served now), or ``{"done": True, ...}``."""
        self.register(code)
        code = code.strip()
        with self.connect(write=True) as conn:
            total = conn.execute("SELECT COUNT(*) FROM assignments WHERE reader = ?", (code,)).fetchone()[0]
            row = conn.execute(
                "SELECT a.position, a.case_id, a.condition FROM assignments a LEFT JOIN ratings r "
                "ON r.reader = a.reader AND r.case_id = a.case_id AND r.condition = a.condition "
                "WHERE a.reader = ? AND r.id IS NULL ORDER BY a.position LIMIT 1", (code,)).fetchone()
            if row is None:
                return {"done": True, "rated": total, "total": total}
            conn.execute("UPDATE assignments SET served_at = ? WHERE reader = ? AND position = ?",
                         (time.time(), code, row[0]))
        return {"done": False, "position": row[0] + 1, "total": total, "case_id": row[1], "condition": row[2]}

    def rate(self, code: str, case_id: str, condition: str, rating) -> dict:
        """Commit one rating; refuse it (StudyError) if out of range, not offered, or a repeat."""
        code = check_reader_code(code)
        value = check_rating(rating)
        if condition not in CONDITIONS:
            raise StudyError(f"unknown condition {condition!r}; the conditions are {', '.join(CONDITIONS)}")
        with self.connect(write=True) as conn:
            offered = conn.execute("SELECT served_at FROM assignments WHERE reader = ? AND case_id = ? "
                                   "AND condition = ?", (code, case_id, condition)).fetchone()
            if offered is None or offered[0] is None:
                raise StudyError(f"case {case_id!r} in condition {condition!r} has not been shown to reader "
                                 f"{code!r}; rate the case the study shows you (ask /study_next)")
            if conn.execute("SELECT 1 FROM ratings WHERE reader = ? AND case_id = ? AND condition = ?",
                            (code, case_id, condition)).fetchone():
                raise StudyError(f"reader {code!r} has already rated case {case_id!r} in condition "
                                 f"{condition!r}; a rating cannot be changed")
            seconds = round(time.time() - offered[0], 3)
            conn.execute("INSERT INTO ratings (reader, case_id, condition, rating, seconds, rated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (code, case_id, condition, value, seconds, _now()))
        return {"reader": code, "case_id": case_id, "condition": condition, "rating": value, "seconds": seconds}

    def ratings(self) -> list[dict]:
        """Every rating, in the order they were committed."""
        with self.connect() as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT reader, case_id, condition, rating, seconds, rated_at FROM ratings "
                                "ORDER BY id").fetchall()
        return [dict(row) for row in rows]

    def assignments(self, code: str) -> list[tuple[str, str]]:
        """The reader's schedule [(case id, condition), ...] in order."""
        with self.connect() as conn:
            return [tuple(r) for r in conn.execute(
                "SELECT case_id, condition FROM assignments WHERE reader = ? ORDER BY position", (code,))]


def check_reader_code(code) -> str:
    """The stripped code; 1-40 letters, digits, '-' or '_'."""
    text = str(code or "").strip()
    if not READER_CODE.match(text):
        raise StudyError("enter your reader code: 1 to 40 letters, digits, '-' or '_' (no spaces)")
    return text


def check_rating(rating) -> int:
    """The rating as an int in 1-5."""
    try:
        value = int(rating)
        whole = float(rating) == value
    except (TypeError, ValueError):
        raise StudyError(f"a rating is a whole number from 1 to 5, not {rating!r}") from None
    if not whole or value not in RATINGS:
        raise StudyError(f"a rating is a whole number from 1 to 5, not {rating!r}")
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
