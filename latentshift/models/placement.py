"""Where a loaded model lives: its device and, on the CPU, the channels_last memory format.

Convolutions on the CPU run faster on NHWC (channels_last) weights and activations: 1.58×
for the torchxrayvision-size pair's decode + classify and 1.46× for the demo pair on 2
cores (``docs/benchmark.md``). The answers stay the same up to float rounding: on 60
test-split images (40 pediatric with the demo pneumonia classifier, 20 adult with the
cardiomegaly classifier) every search stopped at the same λ for the same reason, and the
predictions of the sweep frames differed by at most 4.3e-5. ``channels_last=False`` (from
``Settings.channels_last``: ``LATENTSHIFT_CHANNELS_LAST=0``) keeps the default (contiguous) layout.
Other devices keep the layout they load with.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def channels_last_wanted(device: str | torch.device, channels_last: bool = True) -> bool:
    """Whether models on ``device`` are converted to channels_last (CPU, unless ``channels_last`` is False)."""
    return torch.device(device).type == "cpu" and channels_last


def place_model(model: nn.Module, device: str | torch.device, channels_last: bool = True) -> nn.Module:
    """Move ``model`` to ``device`` (in place, returned); on the CPU its 4-D weights become
    channels_last unless ``channels_last`` is False (see the module doc). Models without such
    weights are only moved."""
    model = model.to(device)
    if channels_last_wanted(device, channels_last):
        model.to(memory_format=torch.channels_last)
    return model


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """The memory format of ``model``'s convolution weights: channels_last or contiguous (read
    off the first weight whose layout is unambiguous: more than one input channel, k > 1)."""
    for parameter in model.parameters():
        if parameter.dim() == 4 and parameter.shape[1] > 1 and parameter.shape[2] > 1:
            return (torch.channels_last if parameter.is_contiguous(memory_format=torch.channels_last)
                    and not parameter.is_contiguous() else torch.contiguous_format)
    return torch.contiguous_format
