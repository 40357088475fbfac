"""Models: the conventions (pixel range, resolution), the architectures and their registry.

Architectures are built *without* weights from a name in :data:`ARCHITECTURES`;
:mod:`latentshift.weights` then loads a verified state dict into them.
"""

from .conventions import PIXEL_RANGE, RESOLUTION
from .registry import ARCHITECTURES, build_architecture, register_architecture
from .xrv import XRVDenseNetClassifier, XRVResNetAE

__all__ = ["PIXEL_RANGE", "RESOLUTION", "ARCHITECTURES", "build_architecture", "register_architecture",
           "XRVDenseNetClassifier", "XRVResNetAE"]
