"""Architectures of the embedded demo models (trained by :mod:`latentshift.training`).

Both follow the torchxrayvision conventions of :mod:`latentshift.models.conventions`: input
(N, 1, 224, 224) float32 in [-1024, 1024].

* :class:`DemoAutoencoder` -- a small convolutional autoencoder with a *spatial*
  latent (shipped: 4 channels at 28×28, i.e. 3,136 numbers for 50,176 pixels, a 16×
  compression). The bottleneck is a deliberate middle ground for Latent Shift: a much
  wider latent lets a gradient step in z act almost like a pixel-space adversarial
  perturbation, while a tiny global latent turns every frame into a blur at the size of
  model that trains on a CPU. For the same number of latent values, a finer grid with
  fewer channels (each cell covers an 8×8-pixel patch) reconstructs lung texture much
  better than a coarser one (16×14×14: SSIM 0.80 vs 0.89), and Latent Shift needs that
  texture to *remove* an opacity rather than only blur it. The decoder mixes
  neighbouring cells, so a step in z changes lung regions smoothly, not single pixels.
* :class:`DomainGuardNet` -- a tiny CNN of the same design (fewer channels) returning
  logits (N, 3) for :data:`GUARD_CLASSES` ("pediatric" / "adult" frontal chest X-ray,
  "not_cxr"); used by :mod:`latentshift.core.guard`, trained by :mod:`latentshift.training.guard`.
* :class:`DemoClassifier` -- a small CNN (five strided conv blocks with BatchNorm,
  global average pooling, linear) returning logits (N, 1) for "Pneumonia".
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .conventions import PIXEL_RANGE

SCALE = 1024.0


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class _ResBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (no normalisation)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv(channels, channels)
        self.conv2 = _conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class DemoAutoencoder(nn.Module):
    """Convolutional autoencoder with a spatial latent.

    Args:
        latent_channels: channels of z.
        widths: channels after each of the stride-2 stages (len = number of halvings;
            3 stages give a 28×28 latent for a 224×224 input, 4 stages 14×14).
        resolution: input side in pixels.
    Shapes: encode (N, 1, R, R) -> (N, latent_channels, R/2^k, R/2^k);
    decode back to (N, 1, R, R), both in [-1024, 1024] (the decoder output is not
    clamped).
    """

    def __init__(self, latent_channels: int = 4, widths: Sequence[int] = (16, 32, 64),
                 resolution: int = 224):
        super().__init__()
        widths = list(widths)
        self.latent_channels = latent_channels
        self.resolution = resolution
        self.input_range = PIXEL_RANGE
        enc: list[nn.Module] = []
        c_prev = 1
        for i, c in enumerate(widths):
            enc.append(_conv(c_prev, c, stride=2))
            if i > 0:  # no full block at the highest resolution (cost)
                enc.append(_ResBlock(c))
            c_prev = c
        enc.append(nn.SiLU())
        enc.append(nn.Conv2d(c_prev, latent_channels, 1))
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 1), _ResBlock(widths[-1])]
        rev = widths[::-1]
        outs = rev[1:] + [max(rev[-1] // 2, 8)]
        for i, (c_in, c_out) in enumerate(zip(rev, outs)):
            dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
            dec.append(_conv(c_in, c_out))
            if i < len(rev) - 2:  # residual blocks except at the two highest resolutions
                dec.append(_ResBlock(c_out))
            else:
                dec.append(nn.SiLU())
        dec.append(_conv(outs[-1], 1))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x / SCALE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) * SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class _ConvBlock(nn.Module):
    """conv3×3 (stride s) -> BN -> ReLU -> conv3×3 -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2, double: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        if double:
            layers += [nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DemoClassifier(nn.Module):
    """Small CNN for chest X-rays returning logits.

    Args:
        pathologies: output names (one per logit).
        thresholds: decision thresholds on the sigmoid output (NaN where unknown).
        widths: channels of the five stride-2 conv blocks (224 -> 7).
        dropout: dropout before the linear layer (training only).
    Shapes: (N, 1, R, R) in [-1024, 1024] -> (N, len(pathologies)) logits.
    ``gradcam_layer`` is the last conv block (7×7 feature map for R = 224).
    """

    def __init__(self, pathologies: Sequence[str] = ("Pneumonia",),
                 thresholds: Sequence[float] | None = None,
                 widths: Sequence[int] = (16, 32, 64, 96, 128), dropout: float = 0.2,
                 resolution: int = 224):
        super().__init__()
        widths = list(widths)
        self.pathologies = list(pathologies)
        self.thresholds = [math.nan if t is None else float(t)
                           for t in (thresholds or [math.nan] * len(self.pathologies))]
        self.resolution = resolution
        self.input_range = PIXEL_RANGE
        blocks = []
        c_prev = 1
        for i, c in enumerate(widths):
            blocks.append(_ConvBlock(c_prev, c, stride=2, double=i > 0))
            c_prev = c
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_prev, len(self.pathologies))

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last conv block (a property, so its weights are not listed twice)."""
        return self.features[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x / SCALE)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.classifier(self.dropout(h))


def _build_demo_classifier(*, labels=("Pneumonia",), thresholds=None, resolution=224,
                           widths=(16, 32, 64, 96, 128), dropout=0.2, **_):
    return DemoClassifier(labels, thresholds, widths=widths, dropout=dropout, resolution=resolution)


def _build_demo_autoencoder(*, resolution=224, latent_channels=4, widths=(16, 32, 64), **_):
    return DemoAutoencoder(latent_channels=latent_channels, widths=widths, resolution=resolution)


#: Output order of :class:`DomainGuardNet`.
GUARD_CLASSES = ("pediatric", "adult", "not_cxr")


class DomainGuardNet(nn.Module):
    """Tiny CNN telling pediatric from adult frontal chest X-rays and both from other images.

    Args:
        classes: output names (default :data:`GUARD_CLASSES`).
        widths: channels of the five stride-2 conv blocks (224 -> 7).
    Shapes: (N, 1, R, R) float32 in [-1024, 1024] -> (N, len(classes)) logits.
    :meth:`features` gives the (N, 2 * widths[-1]) pooled features before the linear
    layer: the mean *and* the standard deviation of the last block over space, so the model
    can see how uniform an image is (noise is uniform, a chest is not).
    :meth:`feature_distance` gives the squared Mahalanobis distance (N,) of those features
    to the nearer of the two chest X-ray class means (buffers ``feature_means`` (2, F) and
    ``feature_precision`` (F, F), fitted on training X-rays by
    :func:`latentshift.train_guard.fit_feature_stats`): a second, class-free novelty score.
    """

    def __init__(self, classes: Sequence[str] = GUARD_CLASSES,
                 widths: Sequence[int] = (8, 16, 32, 48, 64), resolution: int = 224):
        super().__init__()
        widths = list(widths)
        self.classes = list(classes)
        self.resolution = resolution
        self.input_range = PIXEL_RANGE
        blocks, c_prev = [], 1
        for i, c in enumerate(widths):
            blocks.append(_ConvBlock(c_prev, c, stride=2, double=i > 0))
            c_prev = c
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * c_prev, len(self.classes))
        self.register_buffer("feature_means", torch.zeros(2, 2 * c_prev))
        self.register_buffer("feature_precision", torch.eye(2 * c_prev))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x / SCALE)
        return torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], 1)

    def _distance(self, f: torch.Tensor) -> torch.Tensor:
        diff = f[:, None, :] - self.feature_means[None]  # (N, 2, F)
        return torch.einsum("ncf,fg,ncg->nc", diff, self.feature_precision, diff).min(dim=1).values

    def feature_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance (N,) of x's features to the nearer X-ray class mean."""
        return self._distance(self.features(x))

    def forward_with_distance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, C), feature distance (N,)) from one pass through the body."""
        f = self.features(x)
        return self.head(f), self._distance(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _build_domain_guard(*, classes=GUARD_CLASSES, resolution=224, widths=(8, 16, 32, 48, 64), **_):
    return DomainGuardNet(classes, widths=widths, resolution=resolution)


#: Architecture names of the demo models (listed in :mod:`latentshift.models.registry`).
BUILDERS = {
    "demo-classifier": _build_demo_classifier,
    "demo-autoencoder": _build_demo_autoencoder,
    "demo-domain-guard": _build_domain_guard,
}
