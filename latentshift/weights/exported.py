"""Models a person brings without code: ``torch.export`` programs (``.pt2``) plus a card.

A classifier is one exported program (``forward(x) -> logits``); an autoencoder is two, an
encoder and a decoder (``--autoencoder-file encoder.pt2,decoder.pt2``). The card (JSON or YAML)
says what the model is: ``labels``, ``thresholds``, ``resolution``, ``input_range``,
``population``, ``license``, ``sha256`` (hex digest of the ``.pt2``; for an autoencoder
``{"encoder": ..., "decoder": ...}``) and optionally ``gradcam_layer`` (a submodule name).
Without ``gradcam_layer``, Grad-CAM uses the output of the last convolution of the program's
graph (an identity "tap" module is inserted after it); a graph without a convolution gets no
Grad-CAM, and the classifier's ``gradcam_missing`` says why, naming the card field.

``torch.export.load`` would fall back to unrestricted unpickling for content it cannot read
as plain tensors; here every ``torch.load`` inside it is forced to ``weights_only=True``, so a
file that needs arbitrary objects is refused instead of run. The file's sha256 is checked by
the sources layer before this module reads a byte of it.
"""

from __future__ import annotations

import io
import logging
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from ..models.conventions import PIXEL_RANGE, RESOLUTION
from .manifest import ModelEntry, read_structured_file

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "torch-export"
#: Name of the identity module inserted after the last convolution of a program for Grad-CAM.
GRADCAM_TAP = "latentshift_gradcam_tap"
#: aten operators that are a 2-D convolution (their output is an (N, C, h, w) map).
CONVOLUTION_OPS = ("conv2d", "convolution", "_convolution")
_ORIGINAL_TORCH_LOAD = torch.load
_LOAD_LOCK = threading.Lock()


@contextmanager
def tensors_only_loading():
    """Within the block, every ``torch.load`` reads plain tensors only (``weights_only=True``)."""

    def tensors_only(f, map_location=None, pickle_module=None, *, weights_only=None, **kwargs):
        kwargs.pop("mmap", None)
        return _ORIGINAL_TORCH_LOAD(f, map_location=map_location, weights_only=True)

    with _LOAD_LOCK:
        torch.load = tensors_only
        try:
            yield
        finally:
            torch.load = _ORIGINAL_TORCH_LOAD


def load_program(path: Path, label: str) -> nn.Module:
    """The module of the exported program at ``path`` (already verified), unflattened so its
    submodules can be hooked (Grad-CAM)."""
    data = Path(path).read_bytes()
    try:
        with tensors_only_loading():
            program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # torch raises many types here; each becomes one message
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{label}: {path} is not a torch.export program this version can read with "
                           f"plain tensors only (files needing arbitrary unpickling are refused): {reason}") from None
    try:
        return torch.export.unflatten(program)
    except Exception:  # noqa: BLE001 - a flat module still runs; only Grad-CAM hooks need the tree
        return program.module()


def _is_convolution(node) -> bool:
    packet = getattr(node.target, "overloadpacket", None) if node.op == "call_function" else None
    return getattr(packet, "__name__", "") in CONVOLUTION_OPS


def _convolutions_in_order(module: nn.Module):
    """(module holding it, node) of every convolution in the order the program runs them: each
    graph in node order, descending into the submodules it calls."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return
    for node in graph.nodes:
        if _is_convolution(node):
            yield module, node
        elif node.op == "call_module":
            yield from _convolutions_in_order(module.get_submodule(node.target))


def tap_last_convolution(program: nn.Module) -> nn.Module | None:
    """Insert an ``nn.Identity`` after the last convolution of ``program``'s graph and return it
    (hooking it hooks that convolution's output); None when the graph has no convolution.

    Works on the unflattened module of :func:`load_program` (the convolution may sit in any
    submodule, or in the top-level graph as a functional call) and on a flat ``GraphModule``.
    The program computes exactly what it did (the tap returns its input).
    """
    found = list(_convolutions_in_order(program))
    if not found:
        return None
    holder, node = found[-1]
    tap = nn.Identity()
    holder.add_module(GRADCAM_TAP, tap)
    with holder.graph.inserting_after(node):
        tapped = holder.graph.create_node("call_module", GRADCAM_TAP, (node,))
    node.replace_all_uses_with(tapped, delete_user_cb=lambda user: user is not tapped)
    if hasattr(holder, "finalize"):       # torch.export's InterpreterModule / UnflattenedModule
        holder.finalize()
    elif hasattr(holder, "recompile"):    # a plain torch.fx.GraphModule
        holder.recompile()
    logger.debug("Grad-CAM tap after %s in %s", node.name, type(holder).__name__)
    return tap


class _Batched(nn.Module):
    """Runs a program exported for a fixed batch size on any batch, in chunks of that size."""

    def __init__(self, program: nn.Module, batch: int):
        super().__init__()
        self.program, self.batch = program, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.batch:
            return self.program(x)
        chunks = list(x.split(self.batch))
        pad = self.batch - chunks[-1].shape[0]
        if pad:
            chunks[-1] = torch.cat([chunks[-1], chunks[-1][-1:].expand(pad, *x.shape[1:])])
        outputs = torch.cat([self.program(chunk) for chunk in chunks])
        return outputs[:x.shape[0]]


def any_batch(program: nn.Module, sample: torch.Tensor) -> nn.Module:
    """``program`` itself if it takes a batch of 2 like ``sample`` (1, ...), else a chunking wrapper."""
    try:
        with torch.no_grad():
            program(sample.expand(2, *sample.shape[1:]).contiguous())
        return program
    except Exception:  # noqa: BLE001 - exported with a static batch size
        with torch.no_grad():
            for batch in (1, 2, 4, 8, 16):
                try:
                    program(sample.expand(batch, *sample.shape[1:]).contiguous())
                    return _Batched(program, batch)
                except Exception:  # noqa: BLE001
                    continue
    raise WeightsError("the exported program runs on no batch of 1-16 images of shape "
                       f"{tuple(sample.shape[1:])}; export it for (N, 1, R, R) inputs")


class ExportedClassifier(nn.Module):
    """An exported classifier with the model conventions: (N, 1, R, R) in [-1024, 1024] -> logits (N, C)."""

    def __init__(self, program: nn.Module, entry: ModelEntry):
        super().__init__()
        sample = torch.zeros(1, 1, entry.resolution, entry.resolution)
        self._gradcam_name = entry.info.get("gradcam_layer")
        self._gradcam_tap = None if self._gradcam_name else tap_last_convolution(program)
        #: Why Grad-CAM has no layer here (None when it has one).
        self.gradcam_missing = None if self._gradcam_name or self._gradcam_tap is not None else (
            f"Grad-CAM skipped: the exported classifier {entry.id!r} has no convolution in its graph, and its "
            "card names no `gradcam_layer` (the card field naming the submodule whose activations Grad-CAM "
            "uses); Latent Shift and Integrated Gradients still run")
        self.net = any_batch(program, sample)
        self.pathologies = list(entry.labels)
        self.resolution, self.input_range = entry.resolution, tuple(entry.input_range)
        with torch.no_grad():
            outputs = self.net(sample).shape
        if len(outputs) != 2 or outputs[1] != len(self.pathologies):
            raise WeightsError(f"classifier {entry.id!r} returns shape {tuple(outputs)} but its card names "
                               f"{len(self.pathologies)} labels; they must match (N, C)")

    @property
    def gradcam_layer(self) -> nn.Module | None:
        """The submodule named by the card's ``gradcam_layer``, else the tap after the graph's last
        convolution; None when there is neither."""
        if not self._gradcam_name:
            return self._gradcam_tap
        program = self.net.program if isinstance(self.net, _Batched) else self.net
        try:
            return program.get_submodule(self._gradcam_name)
        except AttributeError:
            raise WeightsError(f"the card's gradcam_layer {self._gradcam_name!r} names no submodule of the "
                               "exported program") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ExportedAutoencoder(nn.Module):
    """Two exported programs as one autoencoder: ``encode(x) -> z``, ``decode(z) -> x̂`` (x's shape and range)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, entry: ModelEntry):
        super().__init__()
        sample = torch.zeros(1, 1, entry.resolution, entry.resolution)
        self.encoder = any_batch(encoder, sample)
        with torch.no_grad():
            z = self.encoder(sample)
        self.decoder = any_batch(decoder, z)
        self.resolution, self.input_range = entry.resolution, tuple(entry.input_range)
        with torch.no_grad():
            shape = tuple(self.decoder(z).shape)
        if shape != tuple(sample.shape):
            raise WeightsError(f"autoencoder {entry.id!r}: decode(encode(x)) has shape {shape}, "
                               f"not the input's {tuple(sample.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def entry_from_card(kind: str, files: list[str], card_path: str | None, model_id: str | None = None) -> ModelEntry:
    """A manifest entry for a user's exported model (``files``: [model] or [encoder, decoder]).

    The card is optional for an autoencoder; a classifier needs one for its labels.
    """
    card = read_structured_file(Path(card_path), "model card") if card_path else {}
    base = Path(card_path).resolve().parent if card_path else Path.cwd()
    if kind == "classifier" and not card.get("labels"):
        raise WeightsError("a classifier file needs a card with its labels: --card card.json with "
                           '{"labels": ["Effusion", ...]} (see README, "Use your own model")')
    if kind == "autoencoder" and len(files) != 2:
        raise WeightsError("an exported autoencoder is two files: --autoencoder-file encoder.pt2,decoder.pt2")
    hashes = card.get("sha256")
    hashes = hashes if isinstance(hashes, dict) else {"model": hashes, "encoder": None}
    sources = [{"type": "file", "path": str(Path(f).resolve()), "sha256": hashes.get(role) or None}
               for f, role in zip(files, ["model"] if kind == "classifier" else ["encoder", "decoder"])]
    data = {k: v for k, v in card.items() if k not in ("sha256", "id", "kind", "source", "format")}
    data.update(id=model_id or card.get("id") or f"user-{Path(files[0]).stem}", kind=kind,
                architecture="exported", format=EXPORT_FORMAT, source=sources[0],
                resolution=card.get("resolution", RESOLUTION), input_range=card.get("input_range", list(PIXEL_RANGE)))
    if kind == "autoencoder":
        data["decoder_source"] = sources[1]
    return ModelEntry.from_dict(data, base)
