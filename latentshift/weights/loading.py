"""Loading a model: deserialise its verified weights into its architecture.

Only a file whose sha256 matched the manifest is ever unpickled; anything else goes
through ``torch.load(weights_only=True)`` (plain tensors) or safetensors.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..errors import IntegrityError, WeightsError
from ..models import build_architecture
from ..models.placement import place_model
from .exported import EXPORT_FORMAT, ExportedAutoencoder, ExportedClassifier, load_program
from .integrity import same_sha256
from .manifest import Manifest, ModelEntry
from .sources import fetch_weights

logger = logging.getLogger(__name__)


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
        if not same_sha256(actual, expected_sha256):
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
                f"file (it needs arbitrary unpickling, which could run code; such a file loads only "
                f"with a pinned sha256: `latentshift weights pin`). Detail: {reason}") from None
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
                            allow_unverified: bool | None = None,
                            channels_last: bool = True) -> tuple[nn.Module, str | None]:
    """Like :func:`load_model`, also returning the warning to show (unverified weights) or None."""
    fetched = fetch_weights(entry, allow_unverified=allow_unverified)
    logger.info("loading %s %r from %s", entry.kind, entry.id, fetched.path)
    if entry.format == EXPORT_FORMAT:
        model, warnings = _build_exported(entry, fetched, allow_unverified)
        return model.to(device), "; ".join(warnings) or None  # a program keeps its own layout
    expected = entry.sha256 if fetched.verified else None
    model = build_model(entry, read_state_dict(fetched.path, entry.format, expected_sha256=expected))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return place_model(model, device, channels_last), fetched.warning


def _build_exported(entry: ModelEntry, fetched, allow_unverified: bool | None) -> tuple[nn.Module, list[str]]:
    """An exported classifier, or an autoencoder from its verified encoder and decoder files."""
    warnings = [fetched.warning] if fetched.warning else []
    if entry.kind == "autoencoder":
        decoder_source = entry.info.get("decoder_source")
        if not decoder_source:
            raise WeightsError(f"exported autoencoder {entry.id!r} needs a decoder_source (its decoder program)")
        decoder = fetch_weights(replace(entry, source=dict(decoder_source)), allow_unverified=allow_unverified)
        warnings += [decoder.warning] if decoder.warning else []
        model = ExportedAutoencoder(load_program(fetched.path, f"encoder of {entry.id!r}"),
                                    load_program(decoder.path, f"decoder of {entry.id!r}"), entry)
    elif entry.kind == "classifier":
        model = ExportedClassifier(load_program(fetched.path, f"classifier {entry.id!r}"), entry)
        if entry.thresholds is not None:
            model.thresholds = [float("nan") if t is None else float(t) for t in entry.thresholds]
    else:
        raise WeightsError(f"{entry.id!r}: only classifiers and autoencoders can be exported programs")
    model.model_id = entry.id
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval(), warnings


def load_model(entry: ModelEntry, device: str | torch.device = "cpu",
               allow_unverified: bool | None = None, channels_last: bool = True) -> nn.Module:
    """Fetch, verify, deserialise and build the model of ``entry`` on ``device`` (on the CPU
    channels_last unless ``channels_last`` is False: :mod:`latentshift.models.placement`)."""
    return load_model_with_warning(entry, device, allow_unverified, channels_last)[0]


def load_model_or_default(manifest: Manifest, model_id: str | None, kind: str,
                          device: str | torch.device = "cpu",
                          allow_unverified: bool | None = None) -> tuple[nn.Module, ModelEntry, str | None]:
    """Load ``model_id``, or the embedded default of ``kind`` when it cannot be loaded here.

    Returns ``(model, entry, warning)``; ``warning`` names the requested model and why
    it was replaced (or that weights are unverified), None when all went as asked.
    Errors of the default itself are raised.
    """
    requested = model_id or manifest.default(kind).id
    try:
        entry = manifest.get(requested, kind)
        model, warning = load_model_with_warning(entry, device, allow_unverified)
        return model, entry, warning
    except WeightsError as exc:
        default, warning = default_instead(manifest, kind, requested, exc)
    model, default_warning = load_model_with_warning(default, device, allow_unverified)
    return model, default, f"{warning}; {default_warning}" if default_warning else warning


def default_instead(manifest: Manifest, kind: str, requested: str, error: WeightsError) -> tuple[ModelEntry, str]:
    """The embedded default of ``kind`` to load instead of ``requested``, which failed with ``error``,
    and the warning that says so (logged). ``error`` is raised when the default is ``requested``
    itself or there is none."""
    try:
        default = manifest.default(kind)
    except WeightsError:
        raise error from None
    if default.id == requested:
        raise error
    reason = str(error).removeprefix(f"{requested!r} is unavailable: ")
    warning = (f"model {requested!r} is unavailable here ({reason}); "
               f"using the embedded default {default.id!r} instead")
    logger.warning("%s", warning)
    return default, warning
