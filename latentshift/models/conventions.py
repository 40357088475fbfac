"""The model conventions every model here follows (torchxrayvision's).

* input: a float tensor of shape (N, 1, R, R), R = ``model.resolution`` (224), pixel
  range [-1024, 1024] (``model.input_range``); 8-bit pixel p becomes p / 255 · 2048 − 1024;
* a **classifier** maps it to *logits* of shape (N, C) and carries ``pathologies``
  (C names; an empty string marks an unused output), optional ``thresholds`` (C decision
  thresholds on the sigmoid output, NaN where unknown) and ``gradcam_layer`` (the module
  whose activations Grad-CAM uses — a property, so its parameters are not registered twice);
* an **autoencoder** has ``encode(x) -> z`` and ``decode(z) -> x̂`` with x̂ of the input's
  shape and range.
"""

from __future__ import annotations

#: Pixel range of model inputs and outputs (torchxrayvision's ``normalize``).
PIXEL_RANGE = (-1024.0, 1024.0)
#: Input side in pixels of every embedded and Hub model.
RESOLUTION = 224
