"""Admission: a bounded line in front of the heavy work (explanations, comparisons).

At most ``slots`` runs compute at once and at most ``waiting`` more wait, first come first
served. A request that finds the line full is refused at once with :func:`busy_text`
("Busy: N ahead of you, try again in a minute"), never queued without a word.

The line is the only shared state and holds no tensors: a :class:`Ticket` is a number. Page
runs wait for their turn with ``await ticket.turn()`` (polling, so a closed tab's run is
cancelled while it waits, and its ticket is given back by the ``finally`` of its generator);
API calls, which run in Gradio's worker threads, wait with :meth:`Ticket.wait_turn`.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Iterator

#: How often a waiting run checks whether its turn has come (seconds).
POLL_S = 0.1


def busy_text(ahead: int) -> str:
    """The refusal when the line is full (``ahead``: runs before this one, computing or waiting)."""
    return f"Busy: {ahead} ahead of you, try again in a minute."


def waiting_text(ahead: int) -> str:
    """What an admitted run says while it waits for its turn."""
    return f"Waiting in line: {ahead} ahead of you. Your explanation starts when they are done."


class LineFull(Exception):
    """The line is full; ``ahead`` runs are before the refused one."""

    def __init__(self, ahead: int):
        super().__init__(busy_text(ahead))


class Line:
    """``slots`` runs at once, ``waiting`` more in line (FIFO); the rest refused."""

    def __init__(self, slots: int, waiting: int):
        if slots < 1 or waiting < 0:
            raise ValueError(f"a line needs at least one slot and no negative waiting places, got {slots}, {waiting}")
        self.slots, self.waiting = slots, waiting
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._queue: deque[int] = deque()
        self._numbers = itertools.count()
        self.refused = 0

    @property
    def capacity(self) -> int:
        return self.slots + self.waiting

    def admit(self) -> "Ticket":
        """A place in line, or :class:`LineFull` at once."""
        with self._lock:
            ahead = len(self._running) + len(self._queue)
            if ahead >= self.capacity:
                self.refused += 1
                raise LineFull(ahead)
            number = next(self._numbers)
            self._queue.append(number)
        return Ticket(self, number)

    def counts(self) -> dict[str, int]:
        """Runs computing and waiting now, and refusals so far."""
        with self._lock:
            return {"running": len(self._running), "waiting": len(self._queue), "refused": self.refused}

    def _try_start(self, number: int) -> int:
        """0 when ``number`` may compute now (and is moved to running), else how many are ahead of it."""
        with self._lock:
            position = self._queue.index(number)
            if position == 0 and len(self._running) < self.slots:
                self._queue.popleft()
                self._running.add(number)
                return 0
            return len(self._running) + position

    def _leave(self, number: int) -> None:
        with self._lock:
            self._running.discard(number)
            if number in self._queue:
                self._queue.remove(number)


class Ticket:
    """One admitted run; :meth:`release` (or leaving ``with ticket``) gives its place back."""

    def __init__(self, line: Line, number: int):
        self._line, self.number, self.released = line, number, False

    async def turn(self, report_every_s: float = 2.0):
        """Async iterator: yields how many are ahead (at once, on each change and every
        ``report_every_s``) until this run may compute, then stops."""
        last_ahead, last_report = None, 0.0
        while (ahead := self._line._try_start(self.number)) > 0:
            now = time.monotonic()
            if ahead != last_ahead or now - last_report >= report_every_s:
                last_ahead, last_report = ahead, now
                yield ahead
            await asyncio.sleep(POLL_S)

    def wait_turn(self, timeout_s: float | None = None) -> None:
        """Block (a worker thread) until this run may compute; TimeoutError after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._line._try_start(self.number) > 0:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no turn within {timeout_s:g} s")
            time.sleep(POLL_S)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._line._leave(self.number)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def computing(line: Line, timeout_s: float | None = None) -> Iterator[Ticket]:
    """Admit, wait for the turn (blocking), compute inside the ``with``, then give the place back."""
    with line.admit() as ticket:
        ticket.wait_turn(timeout_s)
        yield ticket
