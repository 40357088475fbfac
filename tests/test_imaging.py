"""Tests of latentshift.io.imaging: formats, intensity mapping, geometry and refusals."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from latentshift.errors import ImageInputError
from latentshift.io.imaging import XrayImage, _normalize, load_xray, to_display_uint8

REAL_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr" / "images" / "kermany"


# --------------------------------------------------------------------------- helpers


def diagonal_gradient(height: int = 64, width: int = 64) -> np.ndarray:
    """uint8 (H, W) with value (x + y) % 256: covers 0 and 255 when H + W > 256."""
    rows, cols = np.indices((height, width))
    return ((rows + cols) % 256).astype(np.uint8)


def save(tmp_path: Path, image: Image.Image, name: str, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def expected_from_8bit(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32) / 255 * 2048 - 1024


def png_header_only(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of zeros; a few KB even for huge sizes."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    compressed = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed)
            + chunk(b"IEND", b""))


def refuse_decoding(monkeypatch) -> None:
    """Make any pixel decoding fail loudly, to prove a refusal came from the header."""
    def fail(*_args, **_kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)


def error_message(source, **kwargs) -> str:
    with pytest.raises(ImageInputError) as caught:
        load_xray(source, **kwargs)
    return str(caught.value)


# --------------------------------------------------------------------------- raster


def test_8bit_png_gradient_maps_to_model_range(tmp_path):
    values = diagonal_gradient(224, 224)
    result = load_xray(save(tmp_path, Image.fromarray(values), "gradient.png"))
    assert isinstance(result, XrayImage)
    assert result.pixels.dtype == np.float32 and result.pixels.shape == (224, 224)
    np.testing.assert_allclose(result.pixels, expected_from_8bit(values), atol=1e-3)
    assert result.pixels.min() == -1024 and result.pixels.max() == 1024
    np.testing.assert_array_equal(result.display, values)
    assert (result.source_format, result.original_size, result.bit_depth) == ("PNG", (224, 224), 8)
    assert result.notes == []
    tensor = result.tensor()
    assert tensor.shape == (1, 1, 224, 224) and tensor.dtype == torch.float32


def test_display_helpers_are_inverse_and_clip():
    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(to_display_uint8(_normalize(values, 255.0)), values)
    assert _normalize(values, 255.0).dtype == np.float32
    assert (_normalize(values, 255.0)[[0, -1]] == [-1024, 1024]).all()
    np.testing.assert_array_equal(to_display_uint8(np.array([-5000.0, 0.0, 5000.0])),
                                  [0, 128, 255])


def test_16bit_png_keeps_full_precision(tmp_path):
    values = np.linspace(0, 65535, 224 * 224).round().astype(np.uint16).reshape(224, 224)
    result = load_xray(save(tmp_path, Image.fromarray(values), "deep.png"))
    assert result.bit_depth == 16
    np.testing.assert_allclose(result.pixels, values / 65535 * 2048 - 1024, atol=1e-3)
    assert result.pixels.min() == -1024 and result.pixels.max() == 1024
    assert len(np.unique(result.pixels)) > 10_000  # not quantised to 8 bits


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_16bit_tiff_modes(tmp_path, mode):
    values = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    if mode == "I":
        image = Image.fromarray(values.astype(np.int32))
    else:
        image = Image.frombytes("I;16B", (64, 64), values.astype(">u2").tobytes())
    result = load_xray(save(tmp_path, image, "deep.tif"), resolution=64)
    assert (result.source_format, result.bit_depth) == ("TIFF", 16)
    np.testing.assert_allclose(result.pixels, values / 65535 * 2048 - 1024, atol=1e-3)


def colour_variants(gray: Image.Image) -> dict[str, tuple[Image.Image, str]]:
    opaque = Image.new("L", gray.size, 255)
    palette = Image.frombytes("P", gray.size, gray.tobytes())  # indices = gray levels
    palette.putpalette([level for level in range(256) for _ in range(3)])
    return {
        "RGB": (Image.merge("RGB", (gray, gray, gray)), "RGB image converted to grayscale"),
        "RGBA": (Image.merge("RGBA", (gray, gray, gray, opaque)),
                 "alpha channel dropped (image fully opaque)"),
        "P": (palette, "P image converted to grayscale"),
        "LA": (Image.merge("LA", (gray, opaque)), "alpha channel dropped (image fully opaque)"),
    }


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_modes_become_exact_luma(tmp_path, mode):
    values = diagonal_gradient()
    image, expected_note = colour_variants(Image.fromarray(values))[mode]
    assert image.mode == mode
    result = load_xray(save(tmp_path, image, f"{mode}.png"), resolution=64)
    np.testing.assert_allclose(result.pixels, expected_from_8bit(values), atol=1e-3)
    assert any(note.startswith(expected_note) for note in result.notes), result.notes


def test_transparent_pixels_are_composited_on_black(tmp_path):
    values = np.full((64, 64), 200, np.uint8)
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :32] = 0
    image = Image.merge("LA", (Image.fromarray(values), Image.fromarray(alpha)))
    result = load_xray(save(tmp_path, image, "la.png"), resolution=64)
    assert (result.pixels[:, :32] == -1024).all()
    np.testing.assert_allclose(result.pixels[:, 32:], expected_from_8bit(values[:, 32:]),
                               atol=1e-3)
    assert "transparent pixels composited on black" in result.notes


def smooth_gradient(size: int = 64) -> np.ndarray:
    return np.tile(np.linspace(20, 235, size), (size, 1)).round().astype(np.uint8)


def test_jpeg_gray(tmp_path):
    values = smooth_gradient()
    result = load_xray(save(tmp_path, Image.fromarray(values), "x.jpg", quality=95),
                       resolution=64)
    assert (result.source_format, result.bit_depth) == ("JPEG", 8)
    np.testing.assert_allclose(result.pixels, expected_from_8bit(values), atol=30)


def test_cmyk_jpeg(tmp_path):
    values = smooth_gradient()
    image = Image.fromarray(values).convert("CMYK")
    result = load_xray(save(tmp_path, image, "cmyk.jpg", quality=95), resolution=64)
    assert result.source_format == "JPEG"
    np.testing.assert_allclose(result.pixels, expected_from_8bit(values), atol=40)
    assert any(note.startswith("CMYK image converted") for note in result.notes)


@pytest.mark.parametrize("orientation, rotations", [(6, 1), (8, -1)])
def test_exif_orientation_ends_upright(tmp_path, orientation, rotations):
    upright = np.full((64, 48), 30, np.uint8)  # height 64, width 48
    upright[:24, :16] = 220  # bright block at the top left
    stored = np.rot90(upright, k=rotations)  # 6: stored turned 90° anticlockwise
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path, Image.fromarray(np.ascontiguousarray(stored)), "turned.png",
                exif=exif)
    result = load_xray(path, resolution=48)
    assert result.original_size == (48, 64)
    crop = upright[8:56]  # centre 48x48 of the upright image
    np.testing.assert_allclose(result.pixels, expected_from_8bit(crop), atol=1e-3)
    assert f"EXIF orientation {orientation} applied" in result.notes


@pytest.mark.parametrize("width, height", [(100, 60), (60, 100)])
def test_non_square_is_centre_cropped(tmp_path, width, height):
    rows, cols = np.indices((height, width))
    values = (cols if width > height else rows).astype(np.uint8)
    result = load_xray(save(tmp_path, Image.fromarray(values), "wide.png"), resolution=60)
    assert result.original_size == (width, height)
    kept = np.arange(20, 80, dtype=np.uint8)
    expected = np.tile(kept, (60, 1)) if width > height else np.tile(kept[:, None], (1, 60))
    np.testing.assert_allclose(result.pixels, expected_from_8bit(expected), atol=1e-3)


def test_resolution_parameter_resizes_float_pixels(tmp_path):
    values = np.linspace(0, 65535, 128 * 128).round().astype(np.uint16).reshape(128, 128)
    result = load_xray(save(tmp_path, Image.fromarray(values), "deep.png"), resolution=32)
    assert result.pixels.shape == (32, 32) and result.display.shape == (32, 32)
    assert result.tensor().shape == (1, 1, 32, 32)
    assert -1024 <= result.pixels.min() < result.pixels.max() <= 1024
    assert np.all(np.diff(result.pixels.ravel()[::33]) > 0)  # still increasing, row-major
    assert not np.allclose(result.pixels, np.round(result.pixels))  # float, not 8-bit steps


def test_animated_gif_uses_first_frame(tmp_path):
    first = smooth_gradient()
    frames = [Image.fromarray(first), Image.fromarray(255 - first), Image.fromarray(first // 2)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    result = load_xray(path, resolution=64)
    assert result.source_format == "GIF"
    assert "first of 3 frames used" in result.notes
    np.testing.assert_allclose(result.pixels, expected_from_8bit(first), atol=1e-3)


def test_bytes_input(tmp_path):
    values = diagonal_gradient()
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PNG")
    result = load_xray(buffer.getvalue(), resolution=64)
    np.testing.assert_allclose(result.pixels, expected_from_8bit(values), atol=1e-3)
    assert error_message(b"") == "the uploaded file is empty (0 bytes)"


@pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="example X-rays not available")
def test_real_chest_xray():
    path = sorted(REAL_IMAGES.glob("*.png"))[0]
    result = load_xray(path)
    assert result.pixels.shape == (224, 224) and result.pixels.dtype == np.float32
    assert -1024 <= result.pixels.min() and result.pixels.max() <= 1024
    assert result.pixels.max() - result.pixels.min() > 1000  # real contrast
    assert result.source_format == "PNG" and result.bit_depth == 8


# --------------------------------------------------------------------------- DICOM


def write_dicom(path: Path, values: np.ndarray, *, photometric: str = "MONOCHROME2",
                window: tuple[float, float] | None = None, rescale_intercept: float | None = None,
                with_pixels: bool = True, transfer_syntax=None) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    frames = values.shape[0] if values.ndim == 3 else 1
    dataset.Rows, dataset.Columns = values.shape[-2:]
    if frames > 1:
        dataset.NumberOfFrames = frames
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    if window:
        dataset.WindowCenter, dataset.WindowWidth = window
    if rescale_intercept is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = 1, rescale_intercept
    if with_pixels and transfer_syntax is None:
        dataset.PixelData = values.astype("<u2").tobytes()
    elif with_pixels:
        from pydicom.encaps import encapsulate

        dataset.PixelData = encapsulate([b"\xff\xd8 not really compressed data \xff\xd9"])
        dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def dicom_ramp(size: int = 64) -> np.ndarray:
    """uint16 (size, size), 0..4095 in row-major order."""
    return np.linspace(0, 4095, size * size).round().astype(np.uint16).reshape(size, size)


def test_dicom_monochrome2_without_window_uses_min_max(tmp_path):
    values = dicom_ramp()
    result = load_xray(write_dicom(tmp_path / "a.dcm", values), resolution=64)
    assert (result.source_format, result.bit_depth, result.original_size) == ("DICOM", 12,
                                                                               (64, 64))
    np.testing.assert_allclose(result.pixels, values / 4095 * 2048 - 1024, atol=1e-2)
    assert "no VOI window in the file: full data range used" in result.notes


def test_dicom_monochrome1_is_inverted(tmp_path):
    values = dicom_ramp()
    normal = load_xray(write_dicom(tmp_path / "m2.dcm", values), resolution=64)
    inverted = load_xray(write_dicom(tmp_path / "m1.dcm", values, photometric="MONOCHROME1"),
                         resolution=64)
    np.testing.assert_allclose(inverted.pixels, -normal.pixels, atol=1e-3)
    assert "MONOCHROME1 inverted" in inverted.notes


def test_dicom_window_is_applied_after_rescale(tmp_path):
    values = dicom_ramp()
    # Raw 0..4095 -> -1000..3095 after the intercept; window 548..1548 = raw 1548..2548.
    path = write_dicom(tmp_path / "w.dcm", values, window=(1048, 1000), rescale_intercept=-1000)
    result = load_xray(path, resolution=64)
    pixels = result.pixels.ravel()
    raw = values.ravel()
    assert (pixels[raw < 1500] == -1024).all()  # raw 1000 would be inside without rescale
    assert (pixels[raw > 2600] == 1024).all()
    inside = (raw > 1600) & (raw < 2500)
    assert np.all(np.diff(pixels[inside]) >= 0) and np.ptp(pixels[inside]) > 1500
    assert "window (centre/width) applied" in result.notes


def test_dicom_multiframe_uses_first_frame(tmp_path):
    values = np.stack([dicom_ramp(), 4095 - dicom_ramp()])
    result = load_xray(write_dicom(tmp_path / "mf.dcm", values), resolution=64)
    np.testing.assert_allclose(result.pixels, values[0] / 4095 * 2048 - 1024, atol=1e-2)
    assert "first of 2 frames used" in result.notes


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "report.dcm", dicom_ramp(), with_pixels=False)
    assert "'report.dcm' is a DICOM file without pixel data" in error_message(path)


def test_dicom_compressed_without_decoder(tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = write_dicom(tmp_path / "ls.dcm", dicom_ramp(), transfer_syntax=JPEGLSLossless)
    message = error_message(path)
    assert "compressed as 'JPEG-LS Lossless Image Compression'" in message
    assert "cannot be decoded here" in message


def test_dicom_constant_is_refused(tmp_path):
    path = write_dicom(tmp_path / "flat.dcm", np.full((64, 64), 700, np.uint16))
    assert "is blank" in error_message(path)


def test_dicom_float_pixels_with_nan_are_refused(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.Rows = dataset.Columns = 64
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 32
    dataset.HighBit = 31
    dataset.PixelRepresentation = 0
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32)
    values[5] = np.nan
    dataset.FloatPixelData = values.tobytes()
    path = tmp_path / "float.dcm"
    dataset.save_as(path, enforce_file_format=True)
    assert "contains non-finite pixel values" in error_message(path)


def test_corrupt_dicom_after_preamble():
    data = bytes(128) + b"DICM" + b"garbage!" * 20
    message = error_message(data)
    assert message.startswith("the uploaded file starts like a DICOM file") or \
        message.startswith("could not decode the uploaded file (DICOM)")


def test_png_named_dcm_is_read_as_png(tmp_path):
    values = diagonal_gradient()
    result = load_xray(save(tmp_path, Image.fromarray(values), "x.dcm", format="PNG"),
                       resolution=64)
    assert result.source_format == "PNG"


def test_text_named_dcm_is_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("patient notes, not an image\n" * 20)
    assert "not a DICOM file or image" in error_message(path)


# --------------------------------------------------------------------------- refusals


def test_missing_and_empty_files(tmp_path):
    assert error_message(tmp_path / "absent.png") == "'absent.png' does not exist"
    (tmp_path / "empty.png").write_bytes(b"")
    assert error_message(tmp_path / "empty.png") == "'empty.png' is empty (0 bytes)"


def test_text_renamed_png(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("this is a note, not a radiograph\n")
    message = error_message(path)
    assert message.startswith("'fake.png' is not an image (it looks like text)")
    assert str(tmp_path) not in message


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_files(tmp_path, fmt, suffix):
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, fmt)
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    message = error_message(path)
    assert message.startswith(f"'cut.{suffix}' is a truncated {fmt} file"), message


def test_truncated_png_header(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(diagonal_gradient()).save(buffer, "PNG")
    path = tmp_path / "stub.png"
    path.write_bytes(buffer.getvalue()[:20])
    assert "starts like a PNG file but its header is truncated" in error_message(path)


def test_load_truncated_images_stays_disabled():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_data(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(diagonal_gradient()).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    idat = data.index(b"IDAT")
    data[idat + 6: idat + 40] = bytes(34)  # wipe the zlib stream's start
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))
    message = error_message(path)
    assert message.startswith("could not decode 'broken.png'") or "truncated" in message


def test_too_small(tmp_path):
    path = save(tmp_path, Image.new("L", (1, 1)), "dot.png")
    assert error_message(path) == ("'dot.png' is too small: 1x1 pixels; width and height must "
                                   "each be at least 32 pixels")


@pytest.mark.parametrize("width, height", [(10, 10000), (200, 40)])
def test_extreme_aspect_ratio(tmp_path, width, height):
    path = save(tmp_path, Image.new("L", (width, height)), "strip.png")
    assert "is too elongated" in error_message(path)


def test_decompression_bomb_refused_from_header(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 20000))  # 400 M pixels in ~50 KB
    assert path.stat().st_size < 200_000
    refuse_decoding(monkeypatch)
    started = time.perf_counter()
    message = error_message(path)
    assert time.perf_counter() - started < 2
    assert message.startswith("'bomb.png' is too large")


def test_pixel_limit_checked_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(8000, 8000))  # below Pillow's limit, above ours
    refuse_decoding(monkeypatch)
    assert error_message(path) == ("'big.png' is too large: 8000x8000 = 64,000,000 pixels "
                                   "exceeds the limit of 50,000,000 pixels")
    assert "exceeds the limit of 1,000 pixels" in error_message(path, max_pixels=1000)


def test_constant_image(tmp_path):
    path = save(tmp_path, Image.new("L", (64, 64), 90), "flat.png")
    assert error_message(path).startswith("'flat.png' is blank")


def test_non_finite_float_tiff(tmp_path):
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    values[3, 5] = np.nan
    path = save(tmp_path, Image.fromarray(values), "nan.tif")
    assert error_message(path) == "'nan.tif' contains non-finite pixel values (NaN or infinity)"
