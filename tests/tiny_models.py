"""Tiny models with known answers, shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


class LinearAutoencoder(nn.Module):
    """z = W_e·x (k values), x̂ = W_d·z; images (N, 1, S, S)."""

    def __init__(self, side: int = 8, latent: int = 4, seed: int = 0, gain: float = 1.0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.side = side
        self.encoder = nn.Linear(side * side, latent, bias=False)
        self.decoder = nn.Linear(latent, side * side, bias=False)
        with torch.no_grad():
            self.encoder.weight.copy_(torch.randn(latent, side * side, generator=generator) / (1024 * side))
            self.decoder.weight.copy_(gain * torch.randn(side * side, latent, generator=generator) * 300)
        self.resolution = side
        self.input_range = (-1024.0, 1024.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, 1, self.side, self.side)


class LinearClassifier(nn.Module):
    """logit_c = w_c·x / scale + b_c, C outputs."""

    def __init__(self, side: int = 8, outputs: int = 2, seed: int = 1, scale: float = 20000.0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(side * side, outputs)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(outputs, side * side, generator=generator) / scale)
            self.linear.bias.zero_()
        self.pathologies = [f"finding{i}" for i in range(outputs)]
        self.resolution = side
        self.input_range = (-1024.0, 1024.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class SineClassifier(nn.Module):
    """logit = 4·sin(mean(x) / period): not monotone, so a long step overshoots the peak."""

    def __init__(self, period: float = 50.0):
        super().__init__()
        self.period = period
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (4 * torch.sin(x.flatten(1).mean(1, keepdim=True) / self.period)) + self.dummy


class ConstantClassifier(nn.Module):
    """Ignores its input: the latent gradient is zero."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 1) + 0 * x.flatten(1)[:, :1]


class TinyConvClassifier(nn.Module):
    """Two conv blocks, global average pool, linear head; logits (N, C)."""

    def __init__(self, labels=("Pneumonia", "Effusion"), thresholds=None, resolution: int = 32, **_):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(8, len(labels))
        self.pathologies = list(labels)
        self.thresholds = list(thresholds) if thresholds else [float("nan")] * len(labels)
        self.resolution = resolution
        self.input_range = (-1024.0, 1024.0)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.features[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x / 1024).mean((2, 3)))


class TinyConvAutoencoder(nn.Module):
    """Strided conv encoder (2 × S/4 × S/4 latent) and transposed-conv decoder."""

    def __init__(self, resolution: int = 32, **_):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 4, 2, 1), nn.ReLU(), nn.Conv2d(4, 2, 4, 2, 1))
        self.decoder = nn.Sequential(nn.ConvTranspose2d(2, 4, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(4, 1, 4, 2, 1))
        self.resolution = resolution
        self.input_range = (-1024.0, 1024.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x / 1024)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(z)) * 1024


def register_tiny_architectures() -> None:
    """Register the tiny conv architectures (also the setup hook of batch workers: tiny_models:register_tiny_architectures)."""
    from latentshift.models import ARCHITECTURES, register_architecture

    if "test-tiny-classifier" not in ARCHITECTURES:
        register_architecture("test-tiny-classifier")(TinyConvClassifier)
        register_architecture("test-tiny-autoencoder")(TinyConvAutoencoder)


def write_tiny_manifest(folder, seed: int = 0):
    """Save tiny conv models as safetensors plus a manifest naming them; returns its path."""
    import json

    from safetensors.torch import save_file

    from latentshift.weights import sha256_of

    register_tiny_architectures()
    torch.manual_seed(seed)
    entries = []
    for model_id, kind, model in (("tiny-classifier", "classifier", TinyConvClassifier()),
                                  ("tiny-autoencoder", "autoencoder", TinyConvAutoencoder())):
        path = folder / f"{model_id}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        entry = {"id": model_id, "kind": kind, "architecture": f"test-{model_id}",
                 "resolution": 32, "format": "safetensors", "embedded_default": True,
                 "source": {"type": "file", "path": path.name, "sha256": sha256_of(path),
                            "size": path.stat().st_size}}
        if kind == "classifier":
            entry.update(labels=["Pneumonia", "Effusion"], thresholds=[0.5, None])
        entries.append(entry)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"format_version": 1, "models": entries}, indent=2))
    return manifest
