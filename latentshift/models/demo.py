"""Architectures of the embedded demo models (trained by :mod:`latentshift_research.training`).

Both follow the torchxrayvision conventions of :mod:`latentshift.models.conventions`: input
(N, 1, 224, 224) float32 in [-1024, 1024].

* :class:`DemoAutoencoder` -- a small convolutional autoencoder with a *spatial* latent
  (shipped: 4 channels at 28×28, a 16× compression: wide enough to keep the lung texture
  Latent Shift needs to remove an opacity, narrow enough that a step in z is no pixel-space
  adversarial perturbation; see ``latentshift/embedded/demo-autoencoder.md``).
* :class:`DemoClassifier`, :class:`DemoEncoderClassifier`, :class:`DemoAEHeadClassifier` --
  small CNNs returning logits (N, len(pathologies)).
* :class:`DomainGuardNet` -- a tiny CNN returning logits (N, 3) for :data:`GUARD_CLASSES`
  (used by :mod:`latentshift.core.guard`).
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


def _set_outputs(model: nn.Module, pathologies: Sequence[str], thresholds: Sequence[float] | None,
                 resolution: int) -> None:
    """A classifier's output names, thresholds (NaN where unknown), input side and pixel range."""
    model.pathologies = list(pathologies)
    model.thresholds = [math.nan if t is None else float(t)
                        for t in (thresholds or [math.nan] * len(model.pathologies))]
    model.resolution, model.input_range = resolution, PIXEL_RANGE


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
        encoder, c_prev = autoencoder_encoder(widths)
        self.encoder = nn.Sequential(*encoder, nn.Conv2d(c_prev, latent_channels, 1))

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


def _conv_blocks(widths: Sequence[int]) -> tuple[nn.Sequential, int]:
    """Stride-2 :class:`_ConvBlock` s of ``widths`` (the first single) and their output channels."""
    blocks, c_prev = [], 1
    for i, c in enumerate(widths):
        blocks.append(_ConvBlock(c_prev, c, stride=2, double=i > 0))
        c_prev = c
    return nn.Sequential(*blocks), c_prev


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
        _set_outputs(self, pathologies, thresholds, resolution)
        self.features, c_prev = _conv_blocks(widths)
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


def autoencoder_encoder(encoder_widths: Sequence[int]) -> tuple[nn.Sequential, int]:
    """The convolutional part of :class:`DemoAutoencoder`'s encoder (same layers and names, so
    its weights can be copied in), and its output channels."""
    layers: list[nn.Module] = []
    c_prev = 1
    for i, c in enumerate(encoder_widths):
        layers.append(_conv(c_prev, c, stride=2))
        if i > 0:
            layers.append(_ResBlock(c))
        c_prev = c
    layers.append(nn.SiLU())
    return nn.Sequential(*layers), c_prev


class DemoEncoderClassifier(nn.Module):
    """Multi-label CNN whose stem is the demo autoencoder's encoder layout.

    Args:
        pathologies: output names (one logit each).
        thresholds: decision thresholds on the sigmoid outputs (NaN where unknown).
        encoder_widths: channels of the encoder's stride-2 stages (as ``DemoAutoencoder``'s
            ``widths``; 224 -> 28 with three stages).
        widths: channels of the stride-2 conv blocks after the encoder (28 -> 7 with two).
        dropout: dropout before the linear layer (training only).
    Shapes: (N, 1, R, R) in [-1024, 1024] -> (N, len(pathologies)) logits.
    ``encoder`` has the layer indices of ``DemoAutoencoder.encoder`` without its final
    1×1 latent convolution, so :meth:`init_from_autoencoder` copies those weights.
    ``gradcam_layer`` is the last conv block (7×7 feature map for R = 224).
    """

    def __init__(self, pathologies: Sequence[str] = ("Cardiomegaly",),
                 thresholds: Sequence[float] | None = None,
                 encoder_widths: Sequence[int] = (16, 32, 64), widths: Sequence[int] = (96, 128),
                 dropout: float = 0.2, resolution: int = 224):
        super().__init__()
        _set_outputs(self, pathologies, thresholds, resolution)
        self.encoder, c_prev = autoencoder_encoder(encoder_widths)
        self.features = nn.Sequential(*[_ConvBlock(a, b, stride=2) for a, b in
                                        zip([c_prev] + list(widths[:-1]), widths)])
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(list(widths)[-1], len(self.pathologies))

    def init_from_autoencoder(self, autoencoder: nn.Module) -> None:
        """Copy the encoder weights of a :class:`DemoAutoencoder` with the same widths."""
        own = self.encoder.state_dict()
        theirs = {k: v for k, v in autoencoder.encoder.state_dict().items() if k in own}
        if set(theirs) != set(own):
            raise ValueError("the autoencoder's encoder does not match encoder_widths")
        self.encoder.load_state_dict(theirs, strict=True)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.features[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.encoder(x / SCALE))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.classifier(self.dropout(h))


def _build_demo_encoder_classifier(*, labels=("Cardiomegaly",), thresholds=None, resolution=224,
                                   encoder_widths=(16, 32, 64), widths=(96, 128), dropout=0.2, **_):
    return DemoEncoderClassifier(labels, thresholds, encoder_widths=encoder_widths, widths=widths,
                                 dropout=dropout, resolution=resolution)


class _HeadEnsemble(nn.Module):
    """``n_heads`` independent small conv heads on a shared feature map.

    Per head: conv3×3 (stride 1) -> BN -> ReLU -> conv3×3 (stride 2) -> BN -> ReLU ->
    conv3×3 (dilation 2) -> BN -> ReLU -> dropout -> conv1×1 to one logit map per output.
    The heads are stored as grouped convolutions (head m owns channel block m), so an
    ensemble of separately trained heads is one module (see :meth:`DemoAEHeadClassifier.merge`).
    Shapes: (N, c_in, H, W) -> (N, n_heads · n_out, H/2, W/2), head m's maps in channels
    m·n_out … (m+1)·n_out − 1 (one head: the n_out logit maps); :meth:`per_head` gives them
    as (N, n_heads, n_out, H/2, W/2).
    """

    def __init__(self, c_in: int, width: int, n_out: int, n_heads: int = 1, dropout: float = 0.2):
        super().__init__()
        w, m = width * n_heads, n_heads
        self.n_heads, self.n_out = n_heads, n_out
        self.body = nn.Sequential(
            nn.Conv2d(c_in, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, 2, 1, groups=m, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, 1, 2, dilation=2, groups=m, bias=False), nn.BatchNorm2d(w),
            nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.out = nn.Conv2d(w, n_out * m, 1, groups=m)

    def per_head(self, h: torch.Tensor) -> torch.Tensor:
        maps = self(h)
        return maps.view(maps.shape[0], self.n_heads, self.n_out, *maps.shape[-2:])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(h))


class DemoAEHeadClassifier(nn.Module):
    """Multi-label classifier: the demo autoencoder's encoder (frozen in training) plus
    an ensemble of small conv heads that each output one *spatial* logit map per finding.

    Args:
        pathologies: output names (one logit each).
        thresholds: decision thresholds on the sigmoid outputs (NaN where unknown).
        encoder_widths: as ``DemoAutoencoder``'s ``widths`` (224 -> 28 with three stages); the
            encoder stops before the autoencoder's 1×1 latent convolution (64 channels, 28×28).
        head_width: channels per head.
        n_heads: heads averaged (an ensemble of seeds).
        ensemble: "logits" (each head's map pooled, the pooled logits averaged) or "maps" (the
            maps averaged, then pooled; the first shipped version, kept to read its weights).
        lse_r: sharpness of the log-mean-exp pooling of each logit map (→ 0: mean, large: max).
        dropout: spatial dropout before the 1×1 output convolution (training only).
    Shapes: (N, 1, R, R) in [-1024, 1024] -> (N, len(pathologies)) logits; ``logit_maps``
    (N, len(pathologies), R/16, R/16). ``gradcam_layer`` is the head ensemble.
    """

    def __init__(self, pathologies: Sequence[str] = ("Cardiomegaly",),
                 thresholds: Sequence[float] | None = None,
                 encoder_widths: Sequence[int] = (16, 32, 64), head_width: int = 48, n_heads: int = 1,
                 lse_r: float = 2.0, dropout: float = 0.2, resolution: int = 224, ensemble: str = "logits"):
        super().__init__()
        if ensemble not in ("logits", "maps"):
            raise ValueError(f"ensemble must be 'logits' or 'maps', got {ensemble!r}")
        self.ensemble, self.lse_r = ensemble, float(lse_r)
        _set_outputs(self, pathologies, thresholds, resolution)
        self.encoder, c_prev = autoencoder_encoder(encoder_widths)
        self.heads = _HeadEnsemble(c_prev, head_width, len(self.pathologies), n_heads, dropout)

    init_from_autoencoder = DemoEncoderClassifier.init_from_autoencoder

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.heads

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Log-mean-exp over the last two axes: (..., h, w) -> (...)."""
        flat = maps.flatten(-2) * self.lse_r
        return (torch.logsumexp(flat, -1) - math.log(flat.shape[-1])) / self.lse_r

    def logit_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, R/16, R/16): the heads' mean logit maps."""
        return self.heads.per_head(self.encoder(x / SCALE)).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.heads.per_head(self.encoder(x / SCALE))  # (N, heads, K, h, w)
        if self.ensemble == "maps":
            return self.pool(maps.mean(1))
        return self.pool(maps).mean(1)

    @classmethod
    def merge(cls, models: Sequence["DemoAEHeadClassifier"], keep: Sequence[int] | None = None,
              thresholds: Sequence[float] | None = None, ensemble: str = "logits") -> "DemoAEHeadClassifier":
        """One model whose heads are the (single-head) ``models``' heads, keeping outputs ``keep``,
        averaged as ``ensemble`` says.

        All models must share the encoder weights, ``head_width`` and ``lse_r``.
        """
        first = models[0]
        keep = list(range(len(first.pathologies))) if keep is None else list(keep)
        width = first.heads.body[0].out_channels // first.heads.n_heads
        merged = cls([first.pathologies[k] for k in keep], thresholds, head_width=width, n_heads=len(models),
                     lse_r=first.lse_r, dropout=first.heads.body[-1].p, resolution=first.resolution,
                     ensemble=ensemble)
        merged.encoder.load_state_dict(first.encoder.state_dict())
        state = {}
        for name, _ in merged.heads.state_dict().items():
            parts = [m.heads.state_dict()[name] for m in models]
            if name.startswith("out."):
                n_out = len(first.pathologies)
                parts = [p.view(n_out, *p.shape[1:])[keep] for p in parts]
            state[name] = parts[0] if parts[0].dim() == 0 else torch.cat(parts, 0)
        merged.heads.load_state_dict(state)
        return merged.eval()


def _build_demo_ae_head_classifier(*, labels=("Cardiomegaly",), thresholds=None, resolution=224,
                                   encoder_widths=(16, 32, 64), head_width=48, n_heads=1, lse_r=2.0,
                                   dropout=0.2, ensemble="maps", **_):
    """Built from a weights file's metadata: files without an ``ensemble`` entry were saved
    by the first recipe, which averaged the maps."""
    return DemoAEHeadClassifier(labels, thresholds, encoder_widths=encoder_widths, head_width=head_width,
                                n_heads=n_heads, lse_r=lse_r, dropout=dropout, resolution=resolution,
                                ensemble=ensemble)


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
    :func:`latentshift_research.training.guard.fit_feature_stats`): a second, class-free novelty score.
    """

    def __init__(self, classes: Sequence[str] = GUARD_CLASSES,
                 widths: Sequence[int] = (8, 16, 32, 48, 64), resolution: int = 224):
        super().__init__()
        self.classes = list(classes)
        self.resolution = resolution
        self.input_range = PIXEL_RANGE
        self.body, c_prev = _conv_blocks(widths)
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
    "demo-encoder-classifier": _build_demo_encoder_classifier,
    "demo-ae-head-classifier": _build_demo_ae_head_classifier,
}
