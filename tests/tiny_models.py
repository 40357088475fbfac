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
        self.gradcam_layer = None

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
