"""Held-out non-chest-X-ray cases for testing the domain guard.

Plain functions of a seed returning uint8 arrays, (H, W) grey or (H, W, 3) RGB. They
are built *differently* from the training negatives of
:mod:`latentshift_research.training.guard` (other noise spectra, other fonts and page layouts,
polygon-built anatomy), so a guard that passes them has not only memorised its own
generators. ``skimage_photos`` adds the real photographs, scans and micrographs that
scikit-image bundles (never used in training).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

#: Fonts of the held-out documents (training renders DejaVu fonts).
TEST_FONTS = ("LiberationSerif-Regular.ttf", "LiberationSans-Regular.ttf", "LiberationMono-Regular.ttf",
              "LiberationSerif-Bold.ttf", "LiberationSansNarrow-Regular.ttf")
WORDS = ("patient name date report findings impression the of and to in is was with for on as by "
         "chest radiograph lungs clear heart size normal no acute disease history cough fever "
         "signature department hospital invoice total amount page section table figure results").split()


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(10_000 + seed)


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8)


def uniform_noise(seed: int, size=(256, 256)) -> np.ndarray:
    """Grey uniform noise on 0..255; uint8 (H, W)."""
    return _rng(seed).integers(0, 256, size, dtype=np.uint8)


def gaussian_noise(seed: int, size=(300, 300)) -> np.ndarray:
    """Grey Gaussian noise (mean 128, σ 50 grey levels); uint8 (H, W)."""
    return _u8(_rng(seed).normal(128, 50, size))


def rgb_noise(seed: int, size=(320, 320)) -> np.ndarray:
    """Uniform RGB noise (load_xray converts it to luma); uint8 (H, W, 3)."""
    return _rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def pink_noise(seed: int, size=(256, 256)) -> np.ndarray:
    """1/f ('pink') noise made in the Fourier domain; uint8 (H, W)."""
    rng = _rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(size[0]), np.fft.fftfreq(size[1]), indexing="ij")
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(size))
    spectrum = amplitude * np.exp(2j * math.pi * rng.random(size))
    field = np.real(np.fft.ifft2(spectrum))
    return _u8(128 + 45 * (field - field.mean()) / field.std())


def block_noise(seed: int, size=(256, 256), block: int = 8) -> np.ndarray:
    """Random grey blocks of ``block`` px (nearest upsampling); uint8 (H, W)."""
    rng = _rng(seed)
    small = rng.integers(0, 256, (size[0] // block, size[1] // block), dtype=np.uint8)
    return np.kron(small, np.ones((block, block), dtype=np.uint8))


def rgb_gaussian_noise(seed: int, size=(288, 384)) -> np.ndarray:
    """Per-channel Gaussian RGB noise around a random colour; uint8 (H, W, 3)."""
    rng = _rng(seed)
    return _u8(rng.normal(rng.uniform(60, 200, 3), 40, (*size, 3)))


NOISE_CASES = {"uniform": uniform_noise, "gaussian": gaussian_noise, "rgb_uniform": rgb_noise,
               "pink": pink_noise, "blocks": block_noise, "rgb_gaussian": rgb_gaussian_noise}


def _font(name: str, size: int):
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size=size)


def _sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


def document(seed: int) -> np.ndarray:
    """A scanned-looking page in Liberation fonts: one or two columns, a table or a form.

    Grey paper, slight rotation and scanner noise; uint8 (H, W).
    """
    rng = _rng(seed)
    w, h = int(rng.integers(500, 900)), int(rng.integers(600, 1100))
    page = Image.new("L", (w, h), int(rng.integers(225, 256)))
    draw = ImageDraw.Draw(page)
    font = _font(TEST_FONTS[seed % len(TEST_FONTS)], int(rng.integers(11, 22)))
    layout = seed % 3
    columns = [(30, w - 30)] if layout == 0 else [(30, w // 2 - 15), (w // 2 + 15, w - 30)]
    draw.text((30, 20), _sentence(rng, 3).upper(), fill=0, font=_font(TEST_FONTS[0], 30))
    for left, right in columns:
        y = 70
        while y < h - 40:
            chars = max(5, (right - left) // max(font.size // 2, 1))
            draw.text((left, y), _sentence(rng, 12)[:chars], fill=int(rng.integers(0, 60)), font=font)
            y += int(font.size * 1.5)
    if layout == 2:  # a form: boxes and table rules over the text
        for row in range(6):
            top = h // 2 + row * 30
            draw.rectangle((40, top, w - 40, top + 30), outline=0, width=2)
        draw.line((w // 3, h // 2, w // 3, h // 2 + 180), fill=0, width=2)
    page = page.rotate(float(rng.uniform(-2, 2)), fillcolor=255, resample=Image.Resampling.BILINEAR)
    return _u8(np.asarray(page, dtype=np.float32) + rng.normal(0, 4, (h, w)))


def photo_like(seed: int) -> np.ndarray:
    """A colour picture of soft shaded discs ('bokeh') over oriented stripes; uint8 (H, W, 3)."""
    rng = _rng(seed)
    h, w = 360, 480
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    stripes = 0.5 + 0.5 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / rng.uniform(8, 40))
    img = stripes[..., None] * rng.uniform(40, 200, 3)
    for _ in range(int(rng.integers(4, 12))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(15, 90)
        shade = np.clip(1 - np.hypot(yy - cy, xx - cx) / r, 0, 1) ** 0.5
        img = img * (1 - shade[..., None]) + shade[..., None] * rng.uniform(0, 255, 3)
    return _u8(img + rng.normal(0, 3, img.shape))


def _polygon_mask(size: tuple[int, int], points, blur: float = 0.0) -> np.ndarray:
    mask = Image.new("L", (size[1], size[0]), 0)
    ImageDraw.Draw(mask).polygon([(float(x), float(y)) for x, y in points], fill=255)
    arr = np.asarray(mask, dtype=np.float32) / 255.0
    return gaussian_filter(arr, blur) if blur else arr


def lateral_chest(seed: int) -> np.ndarray:
    """A lateral chest view drawn with polygons: torso outline, lung field, vertebrae along
    a curve, a heart shadow and the arms raised in front; uint8 (H, W)."""
    rng = _rng(seed)
    h, w = 420, 380
    img = np.full((h, w), rng.uniform(5, 30), dtype=np.float32)
    torso = [(60, 0), (330, 0), (350, 200), (340, h), (40, h), (30, 220)]
    img += _polygon_mask((h, w), torso, 6) * rng.uniform(90, 130)
    lung = [(90, 40), (300, 50), (320, 300), (250, 330), (120, 300), (70, 200)]
    img -= _polygon_mask((h, w), lung, 10) * rng.uniform(40, 70)
    curve = 270 + 15 * np.sin(np.linspace(0, math.pi, 12))
    for i, cx in enumerate(curve):  # vertebral bodies, top to bottom
        top = 20 + i * 34
        img += _polygon_mask((h, w), [(cx - 22, top), (cx + 22, top), (cx + 24, top + 28), (cx - 20, top + 28)],
                             1.5) * rng.uniform(60, 90)
    img += _polygon_mask((h, w), [(80, 180), (200, 170), (230, 330), (60, 340)], 15) * rng.uniform(30, 60)
    img += _polygon_mask((h, w), [(40, 0), (120, 0), (90, 90), (30, 80)], 5) * rng.uniform(40, 70)  # arm
    img = img[:, ::-1] if seed % 2 else img
    return _u8(gaussian_filter(img, 1.5) + rng.normal(0, 5, img.shape))


def ct_slice(seed: int) -> np.ndarray:
    """An axial CT-like slice; even seeds: thorax (blob-shaped lungs, ribs, spine), odd
    seeds: abdomen (liver, kidneys, no lungs); soft-tissue window; uint8 (H, W)."""
    rng = _rng(seed)
    s = 400
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    body = ((yy - 200) / 130) ** 2 + ((xx - 200) / 175) ** 2 <= 1
    img = np.where(body, rng.uniform(100, 130), 0.0).astype(np.float32)
    for a in np.linspace(0, 2 * math.pi, 18, endpoint=False):  # ribs near the body wall
        ry, rx = 200 + 112 * math.sin(a), 200 + 152 * math.cos(a)
        img[np.hypot(yy - ry, xx - rx) < 6] = 230
    if seed % 2 == 0:
        field = gaussian_filter(rng.normal(0, 1, (s, s)), 12)
        for cx in (125, 275):
            lobe = (((yy - 190) / 95) ** 2 + ((xx - cx) / 60) ** 2 <= 1) & (field > -0.02)
            img[lobe] = rng.uniform(0, 25)
        img[np.hypot(yy - 170, xx - 210) < 45] = 140  # heart
    else:
        img[((yy - 190) / 70) ** 2 + ((xx - 140) / 90) ** 2 <= 1] = 150  # liver
        for cx in (140, 260):
            img[((yy - 265) / 25) ** 2 + ((xx - cx) / 18) ** 2 <= 1] = 160  # kidneys
    img[np.hypot(yy - 290, xx - 200) < 22] = 240  # vertebra
    img[np.hypot(yy - 318, xx - 200) < 9] = 60
    return _u8(gaussian_filter(img, 1.0) + rng.normal(0, 6, img.shape))


GENERATED_CASES = {"document": document, "photo_like": photo_like, "lateral_like": lateral_chest,
                   "ct_like": ct_slice}


def skimage_photos() -> dict[str, tuple[str, np.ndarray]]:
    """scikit-image's bundled images: name -> (kind, uint8 (H, W) or (H, W, 3)).

    kind: "photograph", "document" (real scans of text), "texture", "microscopy",
    "graphic" or "ct_like" (the Shepp-Logan head phantom).
    """
    from skimage import data

    kinds = {"astronaut": "photograph", "coffee": "photograph", "chelsea": "photograph",
             "camera": "photograph", "rocket": "photograph", "coins": "photograph", "moon": "photograph",
             "clock": "photograph", "hubble_deep_field": "photograph", "page": "document",
             "text": "document", "brick": "texture", "grass": "texture", "gravel": "texture",
             "immunohistochemistry": "microscopy", "cell": "microscopy", "retina": "microscopy",
             "colorwheel": "graphic", "logo": "graphic", "checkerboard": "graphic",
             "horse": "graphic", "shepp_logan_phantom": "ct_like"}
    out = {}
    for name, kind in kinds.items():
        img = np.asarray(getattr(data, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        elif img.dtype != np.uint8:
            img = _u8(255 * (img - img.min()) / max(float(img.max() - img.min()), 1e-9))
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        out[name] = (kind, np.ascontiguousarray(img))
    return out
