"""The model store: every loaded model by id, loaded once whatever it is paired with.

A classifier explained with three autoencoders is one model in memory, not three. The
store holds at most ``max_models`` models (least recently used ones are dropped first;
``Settings.max_models``: ``$LATENTSHIFT_MAX_MODELS``, default 6) and gives each model its own lock: a computation
that hooks or runs a model holds that model's lock, so requests for different models run
side by side and requests for the same model queue.
"""

from __future__ import annotations

import logging
import resource
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import WeightsError
from ..settings import Settings
from .integrity import FetchedWeights, ModelStatus
from .loading import default_instead, load_model_with_warning
from .manifest import Manifest, ModelEntry
from .sources import fetch_weights, model_status

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model in memory with its manifest entry, the warning of its loading, and its lock.

    ``warning``: why this model stands in for the one asked for, or that its weights are
    unverified; None when all went as asked.
    """

    model: nn.Module
    entry: ModelEntry
    warning: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    warning_code: str = "unverified_weights"  # or "model_fallback"

    @property
    def id(self) -> str:
        return self.entry.id


class ModelStore:
    """Loaded models of one manifest on one device, keyed by model id, LRU-bounded.

    ``get(model_id, kind)`` loads on first use; an id that cannot be loaded here falls back
    to the manifest's embedded default of that kind (the returned :class:`LoadedModel`
    then carries a warning naming the requested model and why). Thread-safe.

    ``settings`` (default ``Settings()``) gives the bound, the opt-in to unverified weights and the
    CPU memory layout; ``max_models`` and ``allow_unverified``, when given, override its values.
    """

    def __init__(self, manifest: Manifest, device: str | torch.device = "cpu",
                 max_models: int | None = None, allow_unverified: bool | None = None,
                 settings: Settings | None = None):
        self.settings = (settings or Settings()).with_flags(max_models=max_models or None,
                                                            allow_unverified=allow_unverified)
        self.manifest = manifest
        self.device = torch.device(device)
        self.max_models = self.settings.max_models
        self.allow_unverified = self.settings.allow_unverified
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # one lock per model id while it is read
        self.loads = 0  # how many times a model was read from disk (for tests and the memory check)

    def __len__(self) -> int:
        return len(self._models)

    def status(self, entry: ModelEntry, check_network: bool = True) -> ModelStatus:
        """Whether ``entry`` can be loaded here, with this store's opt-in to unverified weights."""
        return model_status(entry, check_network=check_network, allow_unverified=self.allow_unverified)

    def fetch(self, entry: ModelEntry) -> FetchedWeights:
        """``entry``'s weight file, downloaded if need be, with this store's opt-in (not loaded)."""
        return fetch_weights(entry, allow_unverified=self.allow_unverified)

    def loaded_ids(self) -> list[str]:
        """Ids in memory, least recently used first."""
        with self._lock:
            return list(self._models)

    def get(self, model_id: str | None, kind: str) -> LoadedModel:
        """The loaded model ``model_id`` (None: the embedded default of ``kind``)."""
        requested = model_id or self.manifest.default(kind).id
        try:
            return self._cached_or_load(self.manifest.get(requested, kind))
        except WeightsError as exc:
            default, warning = default_instead(self.manifest, kind, requested, exc)
        loaded = self._cached_or_load(default)
        joined = warning if not loaded.warning else f"{warning}; {loaded.warning}"
        return LoadedModel(loaded.model, loaded.entry, joined, loaded.lock, warning_code="model_fallback")

    def load(self, model_id: str, kind: str) -> LoadedModel:
        """The loaded model ``model_id`` exactly: errors are raised, nothing stands in for it."""
        return self._cached_or_load(self.manifest.get(model_id, kind))

    def _cached_or_load(self, entry: ModelEntry) -> LoadedModel:
        """The entry's model from memory, else read from disk. Reading holds only this model's
        loading lock, so models already in memory keep answering meanwhile (a large model
        loaded in the background does not stall requests for the others)."""
        with self._lock:
            if entry.id in self._models:
                self._models.move_to_end(entry.id)
                return self._models[entry.id]
            loading = self._loading.setdefault(entry.id, threading.Lock())
        with loading:
            with self._lock:
                if entry.id in self._models:
                    return self._models[entry.id]
            model, warning = load_model_with_warning(entry, self.device, self.allow_unverified,
                                                     channels_last=self.settings.channels_last)
            loaded = LoadedModel(model, entry, warning)
            with self._lock:
                self.loads += 1
                self._models[entry.id] = loaded
                while len(self._models) > self.max_models:
                    evicted, _ = self._models.popitem(last=False)
                    logger.info("model store full (%d): dropped %r", self.max_models, evicted)
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


def cycle_through_models(store: ModelStore, rounds: int = 2) -> dict:
    """Load every model of the store's manifest that can be loaded here, ``rounds`` times over.

    Returns what a person needs to judge the bound: models tried and loaded, disk reads,
    models in memory at the end, and the process's peak resident memory (MiB, from
    ``getrusage``: the high-water mark of the whole process, imports included).
    """
    loadable = [e for e in store.manifest if store.status(e, check_network=False).available]
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded, failed = [], {}
    for _ in range(rounds):
        for entry in loadable:
            try:
                store._cached_or_load(entry)
                loaded.append(entry.id)
            except WeightsError as exc:
                failed[entry.id] = str(exc)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"models": [e.id for e in loadable], "max_models": store.max_models, "rounds": rounds,
            "loads_from_disk": store.loads, "in_memory": store.loaded_ids(), "failed": failed,
            "peak_rss_before_mib": round(before_kib / 1024, 1), "peak_rss_mib": round(peak_kib / 1024, 1)}
