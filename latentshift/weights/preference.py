"""The pair the app answers with: the manifest's ranking, the weights at hand, a fetch in the background.

:meth:`ServingDefault.start` never touches the network: it takes the first ranked pair
(:meth:`~.manifest.Manifest.serving`) whose weights are already here (repository files, the Hub
cache that ``preload_from_hub`` fills, the URL cache) and loads it, else the embedded pair.
Pairs ranked higher whose files are only missing, not refused, are then fetched **in a background
thread** (one reachability probe per host, then the downloads) and loaded into the model store;
the first that succeeds becomes the answering pair. Visitors meanwhile get the pair already
loaded, and the page says which pair answers and, after a fall-back, why
(:meth:`ServingState.line`). Large weights are therefore downloaded before anyone waits on them,
and a Hub that cannot be reached costs the start nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ..errors import WeightsError
from .manifest import ServingPair
from .store import ModelStore

logger = logging.getLogger(__name__)

#: Reasons of :func:`model_status` that a download may cure (anything else is a refusal).
FETCHABLE_REASONS = ("not checked",)


@dataclass(frozen=True)
class ServingState:
    """Which pair answers now and why not a better one.

    ``pair``: answers now. ``preferred``: the first of the ranking. ``note``: why ``preferred``
    does not answer (None when it does). ``fetching``: the pair being downloaded in the
    background, if any, and ``fetch_started`` (``time.monotonic()``). ``unverified``: ids of the
    answering pair's models whose weights loaded without hash verification.
    """

    pair: ServingPair
    preferred: ServingPair
    note: str | None = None
    fetching: ServingPair | None = None
    fetch_started: float | None = None
    unverified: tuple[str, ...] = ()

    def line(self) -> str:
        """One line for the page: the pair that answers and, after a fall-back, why."""
        text = f"Answering with {self.pair.describe()}"
        if self.pair != self.preferred:
            if self.fetching is not None:
                seconds = time.monotonic() - (self.fetch_started or time.monotonic())
                why = (f"{self.fetching.describe()} is being fetched in the background (for {seconds:.0f} s "
                       "so far); reload the page in a minute to use it")
            else:
                why = f"{self.preferred.describe()} is unavailable here: {self.note}"
            text += f", because {why}"
        if self.unverified:
            text += (f". Weights of {', '.join(f'`{i}`' for i in self.unverified)} were loaded without hash "
                     "verification (unverified_weights: plain tensors only)")
        return text + "."


class ServingDefault:
    """Chooses and, in the background, improves the pair the app answers with (thread-safe)."""

    def __init__(self, store: ModelStore):
        self.store = store
        self.pairs = store.manifest.serving()
        self._lock = threading.Lock()
        self._state: ServingState | None = None
        self._done = threading.Event()
        self._done.set()

    def start(self) -> ServingState:
        """Choose the answering pair from the weights at hand (no network) and start fetching
        any better-ranked pair whose weights are only missing. Returns the state at once."""
        chosen, notes, fetchable = None, {}, []
        for pair in self.pairs:
            reason = self._local_reason(pair)
            if reason is None:
                reason = self._load(pair)
                if reason is None:
                    chosen = pair
                    break
            notes[pair] = reason
            if reason.endswith(FETCHABLE_REASONS):
                fetchable.append(pair)
        if chosen is None:
            raise WeightsError(f"no model pair can be loaded here: {notes}")
        better = [p for p in fetchable if self.pairs.index(p) < self.pairs.index(chosen)]
        with self._lock:
            self._state = self._state_for(chosen, notes.get(self.pairs[0]), better[0] if better else None)
        if better:
            self._done.clear()
            threading.Thread(target=self._fetch_better, args=(better, chosen), name="latentshift-serving-fetch",
                             daemon=True).start()
        logger.info("%s", self._state.line())
        return self._state

    def state(self) -> ServingState:
        """The current state (:meth:`start` is called on first use)."""
        with self._lock:
            state = self._state
        return state if state is not None else self.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no background fetch runs; True when none does."""
        return self._done.wait(timeout)

    # ------------------------------------------------------------------ internals

    def _local_reason(self, pair: ServingPair) -> str | None:
        """None when both models of ``pair`` can load from local files, else the first reason why not."""
        for model_id, kind in ((pair.classifier, "classifier"), (pair.autoencoder, "autoencoder")):
            status = self.store.status(self.store.manifest.get(model_id, kind), check_network=False)
            if not status.available:
                return f"{model_id}: {status.reason}"
        return None

    def _load(self, pair: ServingPair) -> str | None:
        """Load both models into the store; None on success, else why not."""
        try:
            self.store.load(pair.classifier, "classifier")
            self.store.load(pair.autoencoder, "autoencoder")
        except WeightsError as exc:
            logger.warning("cannot serve %s: %s", pair.describe(), exc)
            return str(exc)
        return None

    def _state_for(self, pair: ServingPair, note: str | None, fetching: ServingPair | None) -> ServingState:
        unverified = tuple(model_id for model_id, kind in ((pair.classifier, "classifier"),
                                                            (pair.autoencoder, "autoencoder"))
                           if self.store.load(model_id, kind).warning)
        return ServingState(pair, self.pairs[0], None if pair == self.pairs[0] else note, fetching,
                            time.monotonic() if fetching else None, unverified)

    def _fetch_better(self, candidates: list[ServingPair], current: ServingPair) -> None:
        """Background: fetch and load the best candidate that can be had; switch to it."""
        try:
            for pair in candidates:
                self._set(current, self._note(), fetching=pair)
                reason = self._fetch(pair) or self._load(pair)
                if reason is None:
                    self._set(pair, None, fetching=None)
                    logger.info("%s", self.state().line())
                    return
                logger.warning("cannot serve %s: %s", pair.describe(), reason)
                if pair == self.pairs[0]:
                    self._set(current, reason, fetching=None)
            self._set(current, self._note(), fetching=None)
            logger.info("%s", self.state().line())
        finally:
            self._done.set()

    def _fetch(self, pair: ServingPair) -> str | None:
        """Download both models' files (those not here yet); None on success, else why not."""
        for model_id, kind in ((pair.classifier, "classifier"), (pair.autoencoder, "autoencoder")):
            entry = self.store.manifest.get(model_id, kind)
            status = self.store.status(entry, check_network=True)
            if not status.available:
                return f"{model_id}: {status.reason}"
            try:
                self.store.fetch(entry)
            except WeightsError as exc:
                return str(exc)
        return None

    def _note(self) -> str | None:
        with self._lock:
            return self._state.note if self._state else None

    def _set(self, pair: ServingPair, note: str | None, fetching: ServingPair | None) -> None:
        state = self._state_for(pair, note, fetching)
        with self._lock:
            if fetching is not None and self._state is not None and self._state.fetching == fetching:
                state = ServingState(state.pair, state.preferred, state.note, fetching, self._state.fetch_started,
                                     state.unverified)
            self._state = state
