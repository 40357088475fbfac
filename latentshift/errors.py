"""Exception types of the project.

Every problem a user can cause (a bad upload, a missing model, a tampered weight
file) raises a subclass of :class:`LatentShiftError` whose message is written for a
person, so the CLI can print it as one line and the app can show it as is.
"""


class LatentShiftError(Exception):
    """Base class of every user-facing error raised by latentshift."""


class ImageInputError(LatentShiftError):
    """The input image is unreadable or unsuitable (empty, truncated, too small, ...)."""


class WeightsError(LatentShiftError):
    """A model's weights are unavailable, fail verification or cannot be loaded."""


class IntegrityError(WeightsError):
    """A weight file's sha256 or size does not match the manifest."""


class ModelUnavailableError(WeightsError):
    """A model cannot be obtained here (offline, unreachable, unknown hash without opt-in)."""


class OptionsError(LatentShiftError):
    """An explanation option is out of range or inconsistent (e.g. λ range without 0)."""


class NotAChestXrayError(ImageInputError):
    """The domain check says the image is not a chest X-ray, so it was held back, not explained
    (``allow_non_xray`` explains it anyway)."""
