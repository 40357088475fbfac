"""The bad-input corpus: files a public demo receives from the internet, generated on demand.

``write_corpus(folder)`` writes every case into ``folder`` (all files are small; the
decompression bomb only *claims* a huge size in its header) and returns the list of
:class:`Case`. Nothing of this is stored in the repository.

Each case says what a person must see: ``expect == "ok"`` means a normal explanation
(possibly with a note such as "first of 3 frames used"); ``expect == "error"`` means a
refusal whose one-line message contains ``fragment`` (lower case).
``python tests/badinputs.py DIR`` writes the corpus into DIR for manual tries.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 64  # side of the ordinary test images: above imaging's min_side (32)


@dataclass(frozen=True)
class Case:
    """One corpus file and what the user must get for it."""

    name: str                 # short id, used as the pytest parameter id
    filename: str             # file name inside the corpus folder (may contain odd characters)
    expect: str               # "ok" or "error"
    fragment: str = ""        # for "error": lower-case text the message contains
    note: str = ""            # for "ok": lower-case text expected among the input notes ("" = any)
    what: str = ""            # one line for docs/limits.md
    via_app: bool = True      # also sent through the app (names with a newline are not)
    subdir: str = ""          # the file lives in this sub-folder of the corpus folder
    app_fragment: str = ""    # the app refuses this case although the CLI accepts it (message text)

    @property
    def app_expect(self) -> str:
        return "error" if self.app_fragment else self.expect

    @property
    def app_message_fragment(self) -> str:
        return self.app_fragment or self.fragment

    def path(self, folder: Path) -> Path:
        return Path(folder) / self.subdir / self.filename


def xray_like(side: int = SIDE, seed: int = 0) -> np.ndarray:
    """A smooth, non-constant uint8 image (not a real X-ray; enough for the pipeline)."""
    yy, xx = np.mgrid[0:side, 0:side]
    rng = np.random.default_rng(seed)
    pixels = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 7.0) + 20 * (xx > side // 2) + rng.normal(0, 3, (side, side))
    return pixels.clip(0, 255).astype(np.uint8)


def png_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking grayscale PNG whose header claims width x height; a few hundred bytes.

    The IDAT holds one compressed row of zeros only: whoever decodes before checking the
    header would allocate width*height bytes and then fail.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" * (width + 1), 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", row)
            + _png_chunk(b"IEND", b""))


def dicom_bytes(*, pixels: np.ndarray | None = None, photometric: str = "MONOCHROME2",
                float_pixels: np.ndarray | None = None, patient_name: str = "ANON^TEST") -> bytes:
    """An uncompressed Digital X-Ray DICOM (explicit VR little endian) in memory.

    ``pixels`` (uint16) -> PixelData; ``float_pixels`` (float32) -> FloatPixelData; neither
    -> a DICOM object with image attributes but no pixel data at all.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\x00" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.PatientName = patient_name
    dataset.PatientID = "ID-" + patient_name.split("^")[0]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    source = pixels if pixels is not None else float_pixels
    rows, columns = (SIDE, SIDE) if source is None else source.shape
    dataset.Rows, dataset.Columns = rows, columns
    if float_pixels is not None:
        dataset.BitsAllocated = 32
        dataset.FloatPixelData = np.ascontiguousarray(float_pixels, dtype="<f4").tobytes()
    else:
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
        dataset.PixelRepresentation = 0
        if pixels is not None:
            dataset.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.fromarray(np.roll(xray_like(), shift, axis=1), mode="L") for shift in (0, 8, 16)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _float_tiff_with_nan() -> bytes:
    values = xray_like().astype(np.float32)
    values[10:20, 10:20] = np.nan
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def corpus_cases() -> list[Case]:
    """Every case, without writing anything."""
    return [
        Case("empty", "empty.png", "error", "empty (0 bytes)", what="empty file (0 bytes)"),
        Case("text_as_png", "notes.png", "error", "not an image (it looks like text)",
             what="a text file renamed .png"),
        Case("truncated_png", "truncated.png", "error", "truncated", what="PNG cut after 60% of its bytes"),
        Case("truncated_jpeg", "truncated.jpg", "error", "truncated", what="JPEG cut after 60% of its bytes"),
        Case("one_pixel", "one_pixel.png", "error", "too small", what="1×1 PNG"),
        Case("ten_by_10000", "ten_by_10000.png", "error", "too elongated", what="10×10000 PNG"),
        Case("bomb_pillow", "bomb.png", "error", "too large",
             what="decompression bomb: 300-byte PNG whose header claims 100000×100000 pixels"),
        Case("bomb_limit", "big_header.png", "error", "too large",
             what="PNG header claiming 8000×8000 (64 M pixels, over the 50 M limit), 9 kB file"),
        Case("gray16", "gray16.png", "ok", what="16-bit grayscale PNG (kept at 16 bits)"),
        Case("rgba", "rgba.png", "ok", "transparent pixels composited on black", what="RGBA PNG with transparency"),
        Case("palette", "palette.png", "ok", "converted to grayscale", what="palette (P mode) PNG"),
        Case("cmyk_jpeg", "cmyk.jpg", "ok", "cmyk image converted to grayscale", what="CMYK JPEG"),
        Case("animated_gif", "animated.gif", "ok", "first of 3 frames used", what="animated GIF (3 frames)",
             app_fragment="invalid file type"),
        Case("dicom_no_pixels", "report.dcm", "error", "without pixel data",
             what="DICOM with image attributes but no pixel data"),
        Case("dicom_monochrome1", "mono1.dcm", "ok", "monochrome1 inverted", what="DICOM MONOCHROME1 (inverted)"),
        Case("constant", "constant.png", "error", "blank", what="constant image (every pixel 128)"),
        Case("nan_tiff", "nan.tiff", "error", "non-finite", what="32-bit float TIFF containing NaN"),
        Case("inf_dicom", "inf.dcm", "error", "non-finite", what="DICOM FloatPixelData containing +inf"),
        Case("unicode_name", "rö ntgen 胸部.png", "ok", what="good PNG named 'rö ntgen 胸部.png'"),
        Case("traversal_name", "passwd.png", "error", "not an image", subdir="etc",
             what="'../../etc/passwd.png' (text content, reached through ../..)"),
        Case("newline_name", "bad\nname\r.png", "error", "not an image", via_app=False,
             what="text file named 'bad\\nname\\r.png' (message stays one line)"),
        Case("escape_name", "x\x1b[2J.png", "error", "empty", via_app=False,
             what="empty file whose name holds a terminal escape sequence"),
    ]


def case_bytes(case: Case) -> bytes:
    """The content of one case."""
    good = Image.fromarray(xray_like(), mode="L")
    good_png = png_bytes(good)
    if case.name == "empty" or case.name == "escape_name":
        return b""
    if case.name in ("text_as_png", "newline_name"):
        return b"root:x:0:0:root:/root:/bin/bash\nnot an image, just text\n"
    if case.name == "traversal_name":
        return b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"
    if case.name == "truncated_png":
        data = png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 255, (SIDE, SIDE), np.uint8), "L"))
        return data[: int(len(data) * 0.6)]
    if case.name == "truncated_jpeg":
        data = _jpeg(Image.fromarray(np.random.default_rng(2).integers(0, 255, (SIDE, SIDE), np.uint8), "L"))
        return data[: int(len(data) * 0.6)]
    if case.name == "one_pixel":
        return png_bytes(Image.new("L", (1, 1), 100))
    if case.name == "ten_by_10000":
        return png_bytes(Image.fromarray(np.random.default_rng(3).integers(0, 255, (10000, 10), np.uint8), "L"))
    if case.name == "bomb_pillow":
        return png_bomb(100_000, 100_000)
    if case.name == "bomb_limit":
        return png_bomb(8000, 8000)
    if case.name == "gray16":
        return png_bytes(Image.fromarray(xray_like().astype(np.uint16) * 257))
    if case.name == "rgba":
        rgba = good.convert("RGBA")
        alpha = np.full((SIDE, SIDE), 255, np.uint8)
        alpha[:, : SIDE // 4] = 0
        rgba.putalpha(Image.fromarray(alpha, "L"))
        return png_bytes(rgba)
    if case.name == "palette":
        return png_bytes(good.convert("RGB").quantize(64))
    if case.name == "cmyk_jpeg":
        return _jpeg(good.convert("CMYK"))
    if case.name == "animated_gif":
        return _animated_gif()
    if case.name == "dicom_no_pixels":
        return dicom_bytes()
    if case.name == "dicom_monochrome1":
        return dicom_bytes(pixels=xray_like().astype(np.uint16) * 16, photometric="MONOCHROME1")
    if case.name == "constant":
        return png_bytes(Image.new("L", (SIDE, SIDE), 128))
    if case.name == "nan_tiff":
        return _float_tiff_with_nan()
    if case.name == "inf_dicom":
        values = xray_like().astype(np.float32)
        values[5, 5] = np.inf
        return dicom_bytes(float_pixels=values)
    if case.name == "unicode_name":
        return good_png
    raise KeyError(case.name)


def write_corpus(folder: str | Path) -> list[Case]:
    """Write every case into ``folder`` (created) and return the cases."""
    folder = Path(folder)
    cases = corpus_cases()
    for case in cases:
        path = case.path(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case_bytes(case))
    return cases


def good_png(path: str | Path, seed: int = 0) -> Path:
    """Write an ordinary 64×64 grayscale PNG that every model accepts."""
    path = Path(path)
    path.write_bytes(png_bytes(Image.fromarray(xray_like(seed=seed), mode="L")))
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "bad-inputs")
    for written in write_corpus(target):
        print(f"{written.expect:5}  {written.path(target)!r}")
