"""Loading chest X-rays into the model's input convention (torchxrayvision style).

:func:`load_xray` turns a raster file (PNG/JPEG/TIFF/GIF/BMP/WebP) or a DICOM file, as a path
or bytes, into an :class:`XrayImage` whose ``pixels`` are float32 (R, R) in [-1024, 1024]:

1. The header is checked before any pixel is decoded: size (``max_pixels``), smallest side
   (``min_side``), aspect ratio (at most :data:`MAX_ASPECT_RATIO`).
2. The pixels become one grey float array, ``(img / maxval) * 2048 - 1024`` as in
   ``torchxrayvision.datasets.normalize``. Raster: ``maxval`` is the bit depth's maximum;
   colour is reduced to ITU-R 601-2 luma, transparency composited on black, EXIF orientation
   applied, 32-bit integer and float images rescaled from their own min/max, the first frame
   of animated files used. DICOM: modality LUT, then VOI LUT or the first window, rescaled from
   its own min/max; MONOCHROME1 inverted; first frame.
3. Centre crop to a square, then an antialiased bilinear resize in float ('F' mode).

Every unreadable or unsuitable input raises :class:`~latentshift.errors.ImageInputError` with a
message for a person that names the file by its base name only.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageInputError
from ..models.conventions import PIXEL_RANGE

logger = logging.getLogger(__name__)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

#: Largest accepted ratio of the longer to the shorter side.
MAX_ASPECT_RATIO = 4.0

#: File name endings treated as DICOM even without the 'DICM' preamble.
DICOM_SUFFIXES = (".dcm", ".dicom")

_PIXEL_MIN, _PIXEL_MAX = PIXEL_RANGE
_PIXEL_SPAN = _PIXEL_MAX - _PIXEL_MIN  # 2048

#: Leading bytes of the raster formats, to tell a truncated header from a non-image.
_RASTER_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
}

#: Pillow reports JPEG files with several embedded pictures (phones) as 'MPO'.
_FORMAT_ALIASES = {"MPO": "JPEG"}

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

#: What Pillow raises when a header claims more than ``Image.MAX_IMAGE_PIXELS`` pixels.
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


@dataclass(frozen=True, eq=False)
class XrayImage:
    """A chest X-ray ready for the models.

    Attributes:
        pixels: float32 array (R, R), values in [-1024, 1024].
        display: uint8 array (R, R), ``to_display_uint8(pixels)``, for showing.
        source_format: "PNG", "JPEG", "TIFF", "GIF", "DICOM", ...
        original_size: (width, height) of the upright input before crop and resize.
        bit_depth: bits per sample of the input (1, 8, 16, 32; DICOM: BitsStored).
        notes: what was done beyond the plain pipeline, for a person to read
            (e.g. "alpha channel dropped", "first of 5 frames used").
    """

    pixels: np.ndarray
    display: np.ndarray
    source_format: str
    original_size: tuple[int, int]
    bit_depth: int
    notes: list[str] = field(default_factory=list)

    @property
    def resolution(self) -> int:
        """Side R of the square ``pixels``."""
        return int(self.pixels.shape[0])

    def tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The pixels as a float32 tensor of shape (1, 1, R, R) in [-1024, 1024]."""
        return torch.from_numpy(np.array(self.pixels, dtype=np.float32)).reshape(
            1, 1, *self.pixels.shape).to(device)


def to_display_uint8(pixels: np.ndarray) -> np.ndarray:
    """Model pixels in [-1024, 1024] (any shape) to uint8 [0, 255], rounded and clipped."""
    scaled = (np.asarray(pixels, dtype=np.float32) - _PIXEL_MIN) * (255.0 / _PIXEL_SPAN)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def load_xray(source: ImageSource, *, resolution: int = 224, max_pixels: int = 50_000_000,
              min_side: int = 32) -> XrayImage:
    """Load a chest X-ray (path or bytes) as an :class:`XrayImage` of side ``resolution``.

    ``max_pixels`` (width × height, from the header; Pillow's own bomb limit applies too) and
    ``min_side`` bound the input before resizing. ImageInputError when the input is missing,
    empty, not an image, truncated, corrupt, too small, too large, too elongated, blank or
    non-finite.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    try:
        data, label, suffix = _read_source(source)
        limits = _Limits(label, max_pixels=max_pixels, min_side=min_side)
        if _looks_like_dicom(data, suffix):
            decoded = _decode_dicom(data, limits)
        else:
            decoded = _decode_raster(data, limits, suffix)
        full = decoded.pixels
        _check_content(full, label)
    except ImageInputError as error:
        logger.info("image refused: %s", error)
        raise

    pixels = _resize_float(_centre_crop(full), resolution)
    height, width = full.shape
    logger.debug("loaded %s: %s %dx%d, %d bit -> %dx%d; notes: %s", label,
                 decoded.source_format, width, height, decoded.bit_depth, resolution,
                 resolution, decoded.notes)
    return XrayImage(pixels=pixels, display=to_display_uint8(pixels),
                     source_format=decoded.source_format, original_size=(width, height),
                     bit_depth=decoded.bit_depth, notes=decoded.notes)


# --------------------------------------------------------------------------- helpers


def _check_content(pixels: np.ndarray, label: str) -> None:
    """Refuse non-finite or constant decoded pixels."""
    if not np.isfinite(pixels).all():
        raise ImageInputError(f"{label} contains non-finite pixel values (NaN or infinity)")
    if pixels.min() == pixels.max():
        raise ImageInputError(f"{label} is blank: every pixel has the same value, "
                              f"so there is nothing to explain")


@dataclass
class _Decoded:
    """Full-size grayscale float32 array (H, W) in [-1024, 1024] plus metadata."""

    pixels: np.ndarray
    source_format: str
    bit_depth: int
    notes: list[str]


@dataclass(frozen=True)
class _Limits:
    label: str
    max_pixels: int
    min_side: int

    def check_size(self, width: int, height: int) -> None:
        """Refuse sizes out of bounds; called with header values before decoding."""
        if width * height > self.max_pixels:
            raise ImageInputError(
                f"{self.label} is too large: {width}x{height} = {width * height:,} pixels "
                f"exceeds the limit of {self.max_pixels:,} pixels")
        ratio = max(width, height) / max(min(width, height), 1)
        if ratio > MAX_ASPECT_RATIO:
            raise ImageInputError(
                f"{self.label} is too elongated: {width}x{height} pixels (aspect ratio "
                f"{ratio:.1f}:1, at most {MAX_ASPECT_RATIO:g}:1 accepted), a centre crop "
                f"would not contain the chest")
        if min(width, height) < self.min_side:
            raise ImageInputError(
                f"{self.label} is too small: {width}x{height} pixels; width and height "
                f"must each be at least {self.min_side} pixels")


def _read_source(source: ImageSource) -> tuple[bytes, str, str]:
    """Return (data, label for messages, lower-case suffix) of a path or bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label, suffix = bytes(source), "the uploaded file", ""
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label, suffix = repr(path.name), path.suffix.lower()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageInputError(f"{label} does not exist") from None
        except IsADirectoryError:
            raise ImageInputError(f"{label} is a folder, not an image file") from None
        except OSError as error:
            raise ImageInputError(f"could not read {label}: {error.strerror or error}") from None
    else:
        raise TypeError(f"source must be a path or bytes, not {type(source).__name__}")
    if not data:
        raise ImageInputError(f"{label} is empty (0 bytes)")
    return data, label, suffix


def _looks_like_dicom(data: bytes, suffix: str) -> bool:
    """'DICM' preamble, or a DICOM file name on data that is not a known raster format."""
    if data[128:132] == b"DICM":
        return True
    return suffix in DICOM_SUFFIXES and _raster_signature(data) is None


def _normalize(img: np.ndarray, maxval: float) -> np.ndarray:
    """torchxrayvision's normalize: [0, maxval] -> [-1024, 1024], float32."""
    return ((img.astype(np.float32) / np.float32(maxval)) * np.float32(_PIXEL_SPAN)
            + np.float32(_PIXEL_MIN)).astype(np.float32)


def _normalize_min_max(img: np.ndarray) -> np.ndarray:
    """Rescale from the array's own min/max to [-1024, 1024] (constant stays constant)."""
    img = img.astype(np.float64)
    low, high = img.min(), img.max()
    if not (np.isfinite(low) and np.isfinite(high)) or high == low:
        return img.astype(np.float32)  # refused later as non-finite or blank
    return _normalize(img - low, high - low)


def _centre_crop(pixels: np.ndarray) -> np.ndarray:
    """Central square of side min(H, W) of an (H, W) array."""
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top:top + side, left:left + side]


def _resize_float(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """Resize a square float array to (resolution, resolution), antialiased bilinear."""
    if pixels.shape[0] != resolution:
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
        resized = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32)
    return np.clip(pixels, _PIXEL_MIN, _PIXEL_MAX).astype(np.float32)


def _short_reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- raster


def _decode_raster(data: bytes, limits: _Limits, suffix: str) -> _Decoded:
    """Decode a Pillow-readable file; Pillow's bomb warning is an error here only."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled elsewhere in this "
                       "process; truncated images cannot be detected")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode_raster_checked(data, limits, suffix)
        except _BOMB_ERRORS:
            raise ImageInputError(
                f"{limits.label} is too large: its header claims more than "
                f"{Image.MAX_IMAGE_PIXELS:,} pixels (refused as a possible decompression "
                f"bomb)") from None


def _decode_raster_checked(data: bytes, limits: _Limits, suffix: str) -> _Decoded:
    label = limits.label
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _unidentified_error(data, label, suffix) from None
    except _BOMB_ERRORS:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure is the input's fault
        if _raster_signature(data):
            raise _unidentified_error(data, label, suffix) from None
        raise _decode_error(label, "", error) from None

    source_format = _FORMAT_ALIASES.get(image.format, image.format or "image")
    with image:
        width, height = image.size
        limits.check_size(width, height)  # header only: nothing decoded yet
        notes: list[str] = []
        try:
            if getattr(image, "is_animated", False):
                notes.append(f"first of {image.n_frames} frames used")
                image.seek(0)
            image.load()
            upright = _apply_exif_orientation(image, notes)
            pixels, bit_depth = _raster_to_model_range(upright, notes)
        except _BOMB_ERRORS:
            raise
        except Exception as error:  # noqa: BLE001
            raise _decode_error(label, source_format, error) from None
    return _Decoded(pixels, source_format, bit_depth, notes)


def _raster_signature(data: bytes) -> str | None:
    """Format name whose magic bytes start ``data``, if any."""
    return next((name for signature, name in _RASTER_SIGNATURES.items()
                 if data.startswith(signature)), None)


def _unidentified_error(data: bytes, label: str, suffix: str) -> ImageInputError:
    format_name = _raster_signature(data)
    if format_name:
        return ImageInputError(f"{label} starts like a {format_name} file but its header "
                               f"is truncated or corrupt")
    kind = " (it looks like text)" if _looks_like_text(data) else ""
    claimed = f", despite its '{suffix}' name" if suffix else ""
    return ImageInputError(f"{label} is not an image{kind}{claimed}: expected PNG, JPEG, "
                           f"TIFF, GIF, BMP, WebP or DICOM")


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\r\n\t" for char in text)


def _decode_error(label: str, source_format: str, error: BaseException) -> ImageInputError:
    reason = _short_reason(error)
    what = f"{source_format} " if source_format else ""
    if "truncated" in reason.lower() or isinstance(error, EOFError):
        return ImageInputError(f"{label} is a truncated {what}file: its pixel data ends early "
                               f"(incomplete download or upload?)")
    return ImageInputError(f"could not decode {label} ({what or 'image '}data is corrupt or "
                           f"unsupported): {reason}")


def _apply_exif_orientation(image: Image.Image, notes: list[str]) -> Image.Image:
    """The image turned upright per its EXIF orientation tag (unreadable EXIF: as stored)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        upright = ImageOps.exif_transpose(image)
    except Exception as error:  # noqa: BLE001 - bad metadata must not refuse good pixels
        logger.info("ignoring unreadable EXIF data: %s", _short_reason(error))
        notes.append("EXIF data unreadable: orientation not applied")
        return image
    if orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation} applied")
    return upright


def _raster_to_model_range(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, int]:
    """Grayscale float32 (H, W) in [-1024, 1024] and the bit depth of a loaded image."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _normalize(np.asarray(image), 65535.0), 16
    if mode == "I":
        values = np.asarray(image)
        if values.min() >= 0 and values.max() <= 65535:
            return _normalize(values, 65535.0), 16
        notes.append("32-bit integer values rescaled from their min/max")
        return _normalize_min_max(values), 32
    if mode == "F":
        notes.append("floating-point values rescaled from their min/max")
        return _normalize_min_max(np.asarray(image)), 32
    if mode == "1":
        return _normalize(np.asarray(image.convert("L")), 255.0), 1
    if mode == "L":
        return _normalize(np.asarray(image), 255.0), 8
    gray = _to_luma(image, notes)
    return _normalize(np.asarray(gray), 255.0), 8


def _to_luma(image: Image.Image, notes: list[str]) -> Image.Image:
    """8-bit luma ('L') of a colour, palette or transparent image; alpha over black."""
    original_mode = image.mode
    if "A" in image.getbands() or original_mode == "PA" or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha_low, _ = rgba.getchannel("A").getextrema()
        if alpha_low == 255:
            notes.append("alpha channel dropped (image fully opaque)")
        else:
            notes.append("transparent pixels composited on black")
            rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        image = rgba
    if original_mode not in ("LA", "La"):
        notes.append(f"{original_mode} image converted to grayscale (ITU-R 601-2 luma)")
    return image.convert("L")


# --------------------------------------------------------------------------- DICOM


#: Where a DICOM object keeps its pixels.
_DICOM_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: At least one of these is in any real DICOM object; random bytes parse to none of them.
_DICOM_IMAGE_KEYWORDS = ("SOPClassUID", "Modality", "Rows", *_DICOM_PIXEL_KEYWORDS)


def _read_dicom(data: bytes, label: str, has_preamble: bool):
    """The pydicom dataset of ``data``, or an ImageInputError naming ``label``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except InvalidDicomError:
        raise ImageInputError(f"{label} is not a DICOM file or image") from None
    except Exception as error:  # noqa: BLE001
        raise ImageInputError(f"could not decode {label} (DICOM): "
                              f"{_short_reason(error)}") from None


def _decode_dicom(data: bytes, limits: _Limits) -> _Decoded:
    from pydicom.pixels import get_decoder

    label = limits.label
    has_preamble = data[128:132] == b"DICM"
    dataset = _read_dicom(data, label, has_preamble)
    if not any(keyword in dataset for keyword in _DICOM_IMAGE_KEYWORDS):
        if has_preamble:
            raise ImageInputError(f"{label} starts like a DICOM file but its content is "
                                  f"empty or corrupt")
        raise ImageInputError(f"{label} is not a DICOM file or image")
    if not any(keyword in dataset for keyword in _DICOM_PIXEL_KEYWORDS):
        raise ImageInputError(f"{label} is a DICOM file without pixel data (not an image: "
                              f"perhaps a report or a structured document)")

    try:
        width, height = int(dataset.Columns), int(dataset.Rows)
        frames = int(dataset.get("NumberOfFrames") or 1)
        bit_depth = int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 0)
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    except (AttributeError, TypeError, ValueError) as error:
        raise ImageInputError(f"could not decode {label} (DICOM): image attributes missing "
                              f"or invalid ({_short_reason(error)})") from None
    limits.check_size(width, height)
    _check_dicom_decoder(dataset, label, get_decoder)

    notes: list[str] = []
    if frames > 1:
        notes.append(f"first of {frames} frames used")
    try:
        values = _dicom_grey_values(dataset, frames, photometric, notes)
    except ImageInputError:
        raise
    except Exception as error:  # noqa: BLE001
        raise ImageInputError(f"could not decode {label} (DICOM): "
                              f"{_short_reason(error)}") from None

    pixels = _normalize_min_max(np.asarray(values))
    if photometric == "MONOCHROME1":
        pixels = -pixels  # 1 - x on [0, 1] is -y on [-1024, 1024]
        notes.append("MONOCHROME1 inverted")
    return _Decoded(pixels.astype(np.float32), "DICOM", bit_depth, notes)


def _dicom_grey_values(dataset, frames: int, photometric: str, notes: list[str]) -> np.ndarray:
    """The first frame as grey values: colour converted to luma, else modality and VOI LUT applied."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    values = pixel_array(dataset, index=0 if frames > 1 else None)
    if photometric == "PALETTE COLOR":
        values = apply_color_lut(values, dataset)
    if values.ndim == 3:  # colour: pixel_array returns RGB (YBR converted)
        notes.append(f"{photometric} image converted to grayscale (ITU-R 601-2 luma)")
        return values[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    values = apply_modality_lut(values, dataset)
    windowed = apply_voi_lut(values, dataset)
    if dataset.get("VOILUTSequence"):
        notes.append("VOI LUT applied")
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        notes.append("window (centre/width) applied")
    else:
        notes.append("no VOI window in the file: full data range used")
    return windowed


def _check_dicom_decoder(dataset, label: str, get_decoder) -> None:
    """Refuse compressed pixel data that no installed plugin can decode."""
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if transfer_syntax is None or not transfer_syntax.is_compressed:
        return
    try:
        available = get_decoder(transfer_syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise ImageInputError(
            f"{label} is a DICOM file compressed as '{transfer_syntax.name}', which cannot "
            f"be decoded here; convert it to uncompressed DICOM or PNG")
