"""latentshift: Latent Shift explanations of chest X-ray classifiers.

Cohen et al., "Gifsplanation via Latent Shift", MIDL 2021. Research and teaching demo,
not for clinical use.
"""

from .errors import ImageInputError, LatentShiftError, WeightsError
from .shift import LatentShift, ShiftResult

__all__ = ["LatentShift", "ShiftResult", "LatentShiftError", "ImageInputError", "WeightsError"]
__version__ = "0.1.0"
