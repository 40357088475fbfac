"""Rendering of explanations to files: the Latent Shift GIF, attribution overlays, the
prediction-vs-λ plots and single PNG frames.

Images are float arrays or tensors in [-1024, 1024], shown as 8-bit grey
(:func:`~latentshift.io.imaging.to_display_uint8`). Every writer checks its inputs
(``ValueError`` naming the argument), creates the parent folder and returns the path. The GIF
is built with Pillow only, every frame mapped onto one fixed palette, so nothing flickers.
"""

from __future__ import annotations

import functools
import logging
import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.maps import normalize_map
from .imaging import to_display_uint8

logger = logging.getLogger(__name__)

__all__ = ["write_gif", "gif_frame_count", "write_overlay", "overlay_array", "write_prediction_plot",
           "write_curves_plot", "write_png"]

# ---------------------------------------------------------------------------- helpers

_BG = (17, 17, 17)
_TEXT = (236, 236, 236)
_MUTED = (150, 150, 150)
_TRACK = (58, 58, 58)
_BAR = (66, 146, 198)          # prediction below threshold (or no threshold given)
_BAR_HIGH = (228, 96, 48)      # prediction at or above threshold
_TICK = (255, 205, 40)         # threshold tick
_COLOURS = (_BAR, _BAR_HIGH, _TICK)
_N_GRAYS = 240                 # palette: 240 gray levels + colours and their blends
_TRANSPARENT = 255             # the palette entry of "unchanged since the previous frame"


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor, sequence) as a float64 numpy array."""
    if x is None:
        raise ValueError(f"{name} is required, got None")
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric (array or tensor): {exc}") from None


def _as_image(x: Any, name: str) -> np.ndarray:
    """One image as (H, W); leading singleton axes ((1, H, W), (1, 1, H, W)) are dropped."""
    arr = _to_numpy(x, name)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be one image of shape (H, W), got shape {_to_numpy(x, name).shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _as_vector(x: Any, name: str, length: int | None = None) -> np.ndarray:
    """A 1-d vector; (N, 1) is accepted and flattened."""
    arr = _to_numpy(x, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-d vector, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} has {arr.shape[0]} values but there are {length} frames")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_probability(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not np.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return value


def _check_scale(scale: Any) -> int:
    """``scale`` as an int ≥ 1 (ValueError otherwise)."""
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    return scale


def _prepare_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


#: Colour-bar labels and footer of a map overlay, in px per unit of its ``scale``.
OVERLAY_TEXT_PX = 13


@functools.lru_cache(maxsize=32)
def text_font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans as bundled with matplotlib (it has Greek λ)."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name), size)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom


@functools.lru_cache(maxsize=1)
def _gif_palette() -> np.ndarray:
    """The one palette of every GIF frame, (256, 3) uint8: a gray ramp, then the bar
    colours and their blends with the background (antialiased edges)."""
    grays = [round(i * 255 / (_N_GRAYS - 1)) for i in range(_N_GRAYS)]
    entries = [(g, g, g) for g in grays]
    for colour in _COLOURS:
        for t in (1.0, 0.66, 0.33):
            entries.append(tuple(round(t * c + (1 - t) * b) for c, b in zip(colour, _BG)))
    if len(entries) > _TRANSPARENT:
        raise RuntimeError("the GIF palette needs a spare last entry for transparency")
    entries += [entries[-1]] * (256 - len(entries))  # never the nearest entry: argmin takes the first
    return np.array(entries, dtype=np.uint8)


_NEAREST_ENTRY: dict[int, int] = {}  # packed 0xRRGGBB -> palette index, shared by every frame


def _nearest_palette_entries(codes: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Palette index (uint8) of each packed RGB code: the entry at the least squared distance.

    A frame holds a few dozen distinct colours (the bar, the threshold tick, antialiased text),
    so each is looked up once per process instead of once per pixel and frame.
    """
    result = np.array([_NEAREST_ENTRY.get(int(code), -1) for code in codes], dtype=np.int64)
    missing = result < 0
    if missing.any():
        new = codes[missing].astype(np.int64)
        rgb = np.stack([(new >> 16) & 255, (new >> 8) & 255, new & 255], 1)
        dist = ((rgb[:, None, :] - palette[None, :, :].astype(np.int64)) ** 2).sum(-1)
        found = dist.argmin(1)
        result[missing] = found
        if len(_NEAREST_ENTRY) < 1 << 16:
            _NEAREST_ENTRY.update(zip((int(c) for c in new), (int(f) for f in found)))
    return result.astype(np.uint8)


def _to_palette_image(rgb: Image.Image) -> Image.Image:
    """Map an RGB frame onto the fixed GIF palette (exact nearest entry; Pillow's own
    palette conversion uses a coarse colour cache that shifts grays by a few levels)."""
    palette = _gif_palette()
    arr = np.asarray(rgb, dtype=np.int32)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    gray_lut = np.round(np.arange(256) * (_N_GRAYS - 1) / 255).astype(np.uint8)
    index = gray_lut[r]
    colour = (r != g) | (g != b)
    if colour.any():
        pix = arr[colour]
        codes = (pix[:, 0] << 16) | (pix[:, 1] << 8) | pix[:, 2]
        unique, inverse = np.unique(codes, return_inverse=True)
        index[colour] = _nearest_palette_entries(unique, palette)[inverse.reshape(-1)]
    out = Image.frombytes("P", (index.shape[1], index.shape[0]), np.ascontiguousarray(index).tobytes())
    out.putpalette(palette.reshape(-1).tolist())
    return out


# ---------------------------------------------------------------------------- GIF


#: The small line every image this project writes carries (GIF frames, overlays, plots, frames).
FOOTER = "Research demo, not for clinical use"


def _draw_footer(canvas: Image.Image, y: int, size: int = 11) -> None:
    """The footer, centred at height ``y`` of ``canvas``, in small muted type (``size`` px)."""
    draw = ImageDraw.Draw(canvas)
    font = text_font(size)
    width, _ = _text_size(draw, FOOTER, font)
    fill = 140 if canvas.mode == "L" else (140, 140, 140)
    draw.text(((canvas.width - width) // 2, y), FOOTER, font=font, fill=fill)


def _gif_layout(height: int, width: int, scale: int = 1) -> dict[str, Any]:
    """Geometry of one GIF frame: canvas size and the boxes (x0, y0, x1, y1) of its parts."""
    pad, gap = 14, 12
    ph, pw = height * scale, width * scale
    content_w = max(2 * pw + gap, 380)
    x_left = pad + (content_w - (2 * pw + gap)) // 2
    label_h = 22
    y_panels = pad + label_h
    y = y_panels + ph + 12
    layout = {
        "pad": pad,
        "input_box": (x_left, y_panels, x_left + pw, y_panels + ph),
        "frame_box": (x_left + pw + gap, y_panels, x_left + 2 * pw + gap, y_panels + ph),
        "label_y": pad,
        "pred_text_y": y,
        "bar_box": (pad, y + 24, pad + content_w, y + 24 + 14),
        "scrub_y": y + 24 + 14 + 16,
        "lambda_text_y": y + 24 + 14 + 24,
    }
    layout["footer_y"] = layout["lambda_text_y"] + 20
    layout["size"] = (content_w + 2 * pad, layout["footer_y"] + 14 + pad)
    return layout


def _compose_gif_frame(layout: dict[str, Any], input_img: Image.Image, frame_img: Image.Image,
                       pred: float, lam: float, index: int, n_frames: int, zero_index: int | None,
                       target_name: str, threshold: float | None) -> Image.Image:
    """One GIF frame: the input and the shifted frame side by side, the prediction bar, the λ scrubber."""
    canvas = Image.new("RGB", layout["size"], _BG)
    canvas.paste(input_img, layout["input_box"][:2])
    canvas.paste(frame_img, layout["frame_box"][:2])
    draw = ImageDraw.Draw(canvas)
    f_label = text_font(14)
    for text, box in (("input", layout["input_box"]), ("latent shift", layout["frame_box"])):
        tw, _ = _text_size(draw, text, f_label)
        draw.text(((box[0] + box[2] - tw) // 2, layout["label_y"]), text, font=f_label, fill=_MUTED)
    _draw_prediction_bar(draw, layout, pred, target_name, threshold)
    _draw_lambda_scrubber(draw, layout, lam, index, n_frames, zero_index)
    _draw_footer(canvas, layout["footer_y"])
    return canvas


def _draw_prediction_bar(draw: ImageDraw.ImageDraw, layout: dict[str, Any], pred: float, target_name: str,
                         threshold: float | None) -> None:
    """The target's name and prediction over a bar filled to it (coloured past the threshold, whose tick it shows)."""
    f_pred, f_small = text_font(15, bold=True), text_font(12)
    x0, y0, x1, y1 = layout["bar_box"]
    room = x1 - x0
    if threshold is not None:
        ttext = f"threshold {threshold:.2f}"
        tw, _ = _text_size(draw, ttext, f_small)
        draw.text((x1 - tw, layout["pred_text_y"] + 3), ttext, font=f_small, fill=_TICK)
        room -= tw + 16
    name = target_name
    while len(name) > 1 and _text_size(draw, f"{name} {pred:.2f}", f_pred)[0] > room:
        name = name[:-2].rstrip() + "…"
    draw.text((x0, layout["pred_text_y"]), f"{name} {pred:.2f}", font=f_pred, fill=_TEXT)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=_TRACK)
    fill_w = int(round(pred * (x1 - x0)))
    colour = _BAR_HIGH if threshold is not None and pred >= threshold else _BAR
    if fill_w > 0:
        draw.rectangle((x0, y0, x0 + fill_w - 1, y1 - 1), fill=colour)
    if threshold is not None:
        tx = x0 + int(round(threshold * (x1 - x0 - 1)))
        draw.rectangle((tx - 1, y0 - 4, tx + 1, y1 + 3), fill=_TICK)


def _draw_lambda_scrubber(draw: ImageDraw.ImageDraw, layout: dict[str, Any], lam: float, index: int,
                          n_frames: int, zero_index: int | None) -> None:
    """Where this frame sits in the sweep (curtail ... reconstruction ... exaggerate) and its λ."""
    f_small = text_font(12)
    x0, _, x1, _ = layout["bar_box"]
    sy = layout["scrub_y"]
    draw.line((x0, sy, x1 - 1, sy), fill=_TRACK, width=2)
    span = max(n_frames - 1, 1)
    if zero_index is not None:
        zx = x0 + round(zero_index / span * (x1 - x0 - 1))
        draw.line((zx, sy - 4, zx, sy + 4), fill=_MUTED, width=1)
    mx = x0 + round(index / span * (x1 - x0 - 1))
    draw.ellipse((mx - 4, sy - 4, mx + 4, sy + 4), fill=_TEXT)
    ty = layout["lambda_text_y"]
    draw.text((x0, ty), "← curtail", font=f_small, fill=_MUTED)
    rtext = "exaggerate →"
    rw, _ = _text_size(draw, rtext, f_small)
    draw.text((x1 - rw, ty), rtext, font=f_small, fill=_MUTED)
    ltext = f"λ = {lam:.1f}" + ("  (reconstruction)" if lam == 0 else "")
    lw, _ = _text_size(draw, ltext, f_small)
    draw.text(((x0 + x1 - lw) // 2, ty), ltext, font=f_small, fill=_TEXT)


def write_gif(path: str | os.PathLike, frames: Any, preds: Any, lambdas: Any, *, input_image: Any,
              target_name: str, threshold: float | None = None, frame_duration_ms: int = 100,
              palindrome: bool = True, scale: int = 1, optimize: bool = True) -> Path:
    """Write the Latent Shift animation as a looping GIF: per frame the input beside the frame,
    the prediction bar (with the threshold's tick) and λ with the frame's place in the sweep.

    Args:
        frames: (F, 1, H, W) or (F, H, W) float in [-1024, 1024].
        preds: (F,) target probability in [0, 1] of each frame.
        lambdas: (F,) the λ of each frame, sorted ascending.
        input_image: (H, W) the input, float in [-1024, 1024].
        threshold: optional decision threshold in [0, 1].
        frame_duration_ms: display time of each frame (GIF stores 10 ms units).
        palindrome: play curtail end → exaggerate end → back (2F-2 frames for F > 2).
        scale: integer upscaling of the two image panels (nearest neighbour).
        optimize: pixels equal to the previous frame's written as transparent (about 4× smaller
            files, same decoded frames).
    """
    frames_np, preds_np, lambdas_np, input_np, threshold, scale = _checked_gif_inputs(
        frames, preds, lambdas, input_image, target_name, threshold, frame_duration_ms, scale)
    layout = _gif_layout(*frames_np.shape[1:], scale)
    rendered = _render_gif_frames(layout, frames_np, preds_np, lambdas_np, input_np, target_name.strip(),
                                  threshold, scale)
    n = len(rendered)
    order = list(range(n))
    if palindrome and n > 2:
        order += list(range(n - 2, 0, -1))
    sequence = [rendered[i] for i in order]

    if optimize:
        sequence = _unchanged_as_transparent(sequence)
    path = _prepare_path(path)
    sequence[0].save(path, format="GIF", save_all=True, append_images=sequence[1:],
                     duration=int(frame_duration_ms), loop=0, optimize=False, disposal=1)
    logger.info("wrote GIF %s: %d frames (%d distinct), %dx%d px, %.1f kB", path, len(sequence), n,
                layout["size"][0], layout["size"][1], path.stat().st_size / 1024)
    return path


def _checked_gif_inputs(frames, preds, lambdas, input_image, target_name, threshold, frame_duration_ms, scale):
    """The GIF's inputs as arrays (frames (F, H, W)), each checked with a message naming it."""
    frames_np = _to_numpy(frames, "frames")
    if frames_np.ndim == 4 and frames_np.shape[1] == 1:
        frames_np = frames_np[:, 0]
    if frames_np.ndim != 3 or frames_np.shape[0] < 1:
        raise ValueError(f"frames must have shape (F, 1, H, W) or (F, H, W), got {_to_numpy(frames, 'frames').shape}")
    if not np.all(np.isfinite(frames_np)):
        raise ValueError("frames contain NaN or infinite values")
    n, h, w = frames_np.shape
    preds_np = _as_vector(preds, "preds", n)
    if np.any(preds_np < -1e-6) or np.any(preds_np > 1 + 1e-6):
        raise ValueError(f"preds must be probabilities in [0, 1], got range "
                         f"[{preds_np.min():.4g}, {preds_np.max():.4g}]")
    preds_np = np.clip(preds_np, 0.0, 1.0)
    lambdas_np = _as_vector(lambdas, "lambdas", n)
    if np.any(np.diff(lambdas_np) < 0):
        raise ValueError("lambdas must be sorted ascending (curtail < 0 < exaggerate)")
    input_np = _as_image(input_image, "input_image")
    if input_np.shape != (h, w):
        raise ValueError(f"input_image has shape {input_np.shape} but frames are {(h, w)}")
    threshold = _check_probability(threshold, "threshold")
    if not isinstance(target_name, str) or not target_name.strip():
        raise ValueError("target_name must be a non-empty string")
    if int(frame_duration_ms) <= 0:
        raise ValueError(f"frame_duration_ms must be positive, got {frame_duration_ms}")
    return frames_np, preds_np, lambdas_np, input_np, threshold, _check_scale(scale)


def _render_gif_frames(layout: dict, frames_np: np.ndarray, preds_np: np.ndarray, lambdas_np: np.ndarray,
                       input_np: np.ndarray, target_name: str, threshold: float | None,
                       scale: int) -> list[Image.Image]:
    """One palette image per frame: the input beside the frame, the prediction bar and λ."""
    n, h, w = frames_np.shape

    def panel(img: np.ndarray) -> Image.Image:
        im = Image.fromarray(to_display_uint8(img))
        if scale > 1:
            im = im.resize((w * scale, h * scale), Image.Resampling.NEAREST)
        return im.convert("RGB")

    zero = np.flatnonzero(lambdas_np == 0)
    zero_index = int(zero[0]) if zero.size else None
    input_panel = panel(input_np)
    rendered = []
    for i in range(n):
        rgb = _compose_gif_frame(layout, input_panel, panel(frames_np[i]), float(preds_np[i]),
                                 float(lambdas_np[i]), i, n, zero_index, target_name, threshold)
        rendered.append(_to_palette_image(rgb))
    return rendered


def _unchanged_as_transparent(sequence: list[Image.Image]) -> list[Image.Image]:
    """The palette frames with every pixel equal to the previous frame's set to the palette's
    transparent entry (:data:`_TRANSPARENT`); with disposal 1 ("do not dispose") a viewer keeps
    showing the previous frame there, so the decoded frames are unchanged. This is what Pillow's
    ``optimize`` does per frame through Python-level pixel lists (0.15-0.3 s for a 30-frame GIF);
    in numpy it costs milliseconds."""
    result, previous = [sequence[0]], np.asarray(sequence[0])
    for image in sequence[1:]:
        current = np.asarray(image)
        index = np.where(current == previous, np.uint8(_TRANSPARENT), current).astype(np.uint8)
        frame = Image.frombytes("P", image.size, np.ascontiguousarray(index).tobytes())
        frame.putpalette(image.getpalette())
        frame.info["transparency"] = _TRANSPARENT
        result.append(frame)
        previous = current
    return result


def gif_frame_count(path: str | os.PathLike) -> int:
    """Number of frames stored in the GIF at ``path`` (Pillow's ``n_frames``)."""
    with Image.open(path) as im:
        return int(getattr(im, "n_frames", 1))


# ---------------------------------------------------------------------------- overlays


def _colormap_lut(cmap: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r} (try 'jet' or 'inferno')") from None
    return (colormap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def _normalise_map(attribution_map: Any, shape: tuple[int, int], *, absolute: bool,
                   smooth_sigma: float, clip_percentile: float) -> np.ndarray:
    """The map checked against the image's ``shape``, optionally smoothed, then :func:`normalize_map`-ed."""
    m = _as_image(attribution_map, "attribution_map")
    if m.shape != shape:
        raise ValueError(f"attribution_map has shape {m.shape} but the image is {shape}; "
                         "upsample the map to the image size first")
    if not 0 < float(clip_percentile) <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    if smooth_sigma < 0:
        raise ValueError(f"smooth_sigma must be >= 0, got {smooth_sigma}")
    if smooth_sigma > 0:  # the rectified map is smoothed (normalize_map's rectification is then a no-op)
        from scipy import ndimage

        m = ndimage.gaussian_filter(np.abs(m) if absolute else np.maximum(m, 0.0), sigma=float(smooth_sigma),
                                    mode="nearest")
    normalised = normalize_map(m, absolute=absolute, percentile=clip_percentile)
    if not normalised.any():
        logger.warning("attribution map is zero everywhere%s", "" if absolute else " (no positive part)")
    return normalised


def overlay_array(image: Any, attribution_map: Any, *, cmap: str = "jet", alpha: float = 0.5,
                  absolute: bool = False, smooth_sigma: float = 0.0,
                  clip_percentile: float = 99.5) -> np.ndarray:
    """Blend an attribution map over a grayscale image; returns (H, W, 3) uint8 RGB.

    Args:
        image: (H, W) float in [-1024, 1024].
        attribution_map: (H, W) any float. ``absolute`` uses |map|, otherwise only the
            positive part; optionally gaussian-smoothed (``smooth_sigma`` pixels);
            normalised to [0, 1] by its ``clip_percentile`` percentile.
        cmap: matplotlib colormap name ("jet", "inferno", ...).
        alpha: weight of the colour layer in [0, 1].
    """
    img = _as_image(image, "image")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    m = _normalise_map(attribution_map, img.shape, absolute=absolute, smooth_sigma=smooth_sigma,
                       clip_percentile=clip_percentile)
    lut = _colormap_lut(cmap)
    colour = lut[np.round(m * 255).astype(np.int64)].astype(np.float64)
    gray = to_display_uint8(img).astype(np.float64)[..., None]
    out = (1.0 - alpha) * gray + alpha * colour
    return np.clip(out, 0, 255).round().astype(np.uint8)


def write_overlay(path: str | os.PathLike, image: Any, attribution_map: Any, *, title: str,
                  cmap: str = "jet", alpha: float = 0.5, absolute: bool = False,
                  smooth_sigma: float = 0.0, clip_percentile: float = 99.5, scale: int = 2) -> Path:
    """Write an attribution overlay as PNG: title, the overlay (upscaled ``scale``× with
    bilinear filtering) and a colour scale labelled "low"/"high". Same options as
    :func:`overlay_array`; used for the latent-shift heatmap, Grad-CAM and Integrated
    Gradients alike."""
    if not isinstance(title, str):
        raise ValueError("title must be a string")
    scale = _check_scale(scale)
    rgb = overlay_array(image, attribution_map, cmap=cmap, alpha=alpha, absolute=absolute,
                        smooth_sigma=smooth_sigma, clip_percentile=clip_percentile)
    h, w = rgb.shape[:2]
    overlay = Image.fromarray(rgb)
    if scale > 1:
        overlay = overlay.resize((w * scale, h * scale), Image.Resampling.BILINEAR)
    ow, oh = overlay.size

    # Type sizes for the size the app shows a map at (about 0.37×, 186 of 502 px, on a 1400 px desktop):
    # OVERLAY_TEXT_PX × scale × 0.39 ≥ 9 px there.
    pad, title_h, bar_h = 14, 34 * scale // 2, 16
    label_size = footer_size = OVERLAY_TEXT_PX * scale
    width = max(ow, 240) + 2 * pad
    height = pad + title_h + oh + 12 + bar_h + 2 * (label_size + 6) + 10 + footer_size + 8 + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    f_title, f_small = text_font(13 * scale, bold=True), text_font(label_size)
    tw, _ = _text_size(draw, title, f_title)
    draw.text(((width - tw) // 2, pad), title, font=f_title, fill=(20, 20, 20))
    ox = (width - ow) // 2
    oy = pad + title_h
    canvas.paste(overlay, (ox, oy))

    by = oy + oh + 12
    _draw_colour_scale(canvas, draw, cmap, min(max(ow, 240), 320), by, bar_h, f_small, absolute)
    _draw_footer(canvas, by + bar_h + 2 * (label_size + 6) + 10, footer_size)

    path = _prepare_path(path)
    canvas.save(path, format="PNG", compress_level=6)  # optimize=True costs ~0.3 s per map
    logger.info("wrote overlay %s (%s, %dx%d)", path, title, width, height)
    return path


def _draw_colour_scale(canvas: Image.Image, draw: ImageDraw.ImageDraw, cmap: str, bar_w: int, by: int, bar_h: int,
                       font, absolute: bool) -> None:
    """The colour scale under a map, centred at height ``by``: the colormap pure (blended over mid-grey
    it would mislead), "low"/"high" under its ends and what it measures on the line below."""
    width = canvas.width
    bx = (width - bar_w) // 2
    strip = _colormap_lut(cmap)[np.linspace(0, 255, bar_w).round().astype(np.int64)]
    canvas.paste(Image.fromarray(np.repeat(strip[None], bar_h, axis=0)), (bx, by))
    draw.rectangle((bx - 1, by - 1, bx + bar_w, by + bar_h), outline=(120, 120, 120))
    draw.text((bx, by + bar_h + 4), "low", font=font, fill=(60, 60, 60))
    hw, _ = _text_size(draw, "high", font)
    draw.text((bx + bar_w - hw, by + bar_h + 4), "high", font=font, fill=(60, 60, 60))
    kind = "|attribution|" if absolute else "positive attribution"
    kw, _ = _text_size(draw, kind, font)
    draw.text(((width - kw) // 2, by + bar_h + font.size + 10), kind, font=font, fill=(110, 110, 110))


# ---------------------------------------------------------------------------- plot & PNG


def _checked_plot_inputs(lambdas, preds, target_name, threshold, initial_pred) -> tuple:
    """(λs, predictions, threshold, initial prediction) of :func:`write_prediction_plot`, checked."""
    lam = _as_vector(lambdas, "lambdas")
    if lam.shape[0] < 1:
        raise ValueError("lambdas must not be empty")
    p = _as_vector(preds, "preds", lam.shape[0])
    if np.any(np.diff(lam) < 0):
        raise ValueError("lambdas must be sorted ascending")
    if not isinstance(target_name, str) or not target_name.strip():
        raise ValueError("target_name must be a non-empty string")
    return lam, p, _check_probability(threshold, "threshold"), _check_probability(initial_pred, "initial_pred")


def _figure(size: tuple[float, float]):
    """A matplotlib figure of ``size`` inches at 100 dpi on the Agg canvas (no pyplot state) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """The figure with the footer, tightly laid out, saved as PNG at ``path``."""
    fig.text(0.99, 0.005, FOOTER, ha="right", va="bottom", fontsize=10, color="0.45")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = _prepare_path(path)
    fig.savefig(path, format="png")
    fig.clear()
    return path


def write_prediction_plot(path: str | os.PathLike, lambdas: Any, preds: Any, *, target_name: str,
                          threshold: float | None = None, initial_pred: float | None = None) -> Path:
    """Plot the target probability against λ and save it as PNG (5×3.5 in, 100 dpi).

    Args:
        lambdas: (F,) λ values, sorted ascending.
        preds: (F,) target probability in [0, 1] at each λ.
        target_name: class name for the title/axis.
        threshold: optional decision threshold (dashed line).
        initial_pred: optional prediction on the original input (shown at λ = 0).
    """
    lam, p, threshold, initial_pred = _checked_plot_inputs(lambdas, preds, target_name, threshold, initial_pred)
    fig, ax = _figure((5, 3.5))
    lo, hi = float(lam.min()), float(lam.max())
    margin = 0.03 * (hi - lo) if hi > lo else 1.0
    if lo < 0:
        ax.axvspan(lo - margin, 0, color="tab:blue", alpha=0.08, lw=0, label="curtail (λ < 0)")
    if hi > 0:
        ax.axvspan(0, hi + margin, color="tab:red", alpha=0.08, lw=0, label="exaggerate (λ > 0)")
    ax.plot(lam, p, "-o", color="black", ms=3, lw=1.5, label=f"P({target_name})")
    if lo <= 0 <= hi:
        ax.plot([0.0], [float(np.interp(0.0, lam, p))], "o", ms=7, mfc="white", mec="black",
                mew=1.5, label="reconstruction (λ = 0)", zorder=5)
    if initial_pred is not None:
        ax.plot([0.0], [initial_pred], "*", ms=10, color="tab:green", label="input", zorder=6)
    if threshold is not None:
        ax.axhline(threshold, ls="--", lw=1, color="tab:orange", label=f"threshold {threshold:.2f}")
    ax.set_xlim(lo - margin, hi + margin)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("λ (latent step)")
    ax.set_ylabel("P(target)")
    ax.set_title(f"{target_name}: prediction along the latent shift", fontsize=10)
    ax.grid(True, alpha=0.3, lw=0.5)
    ax.legend(fontsize=9, loc="best", framealpha=0.85)
    path = _save_figure(fig, path)
    logger.info("wrote prediction plot %s", path)
    return path


def write_curves_plot(path: str | os.PathLike, curves: Sequence[tuple[str, Any, Any]], *, title: str,
                      x_label: str = "λ (latent step)", thresholds: Sequence[float | None] | None = None) -> Path:
    """Several prediction-vs-λ curves in one PNG (7×4 in, 100 dpi), a legend outside the axes.

    Args:
        curves: (label, lambdas (F,), preds (F,) in [0, 1]) per line; λs sorted ascending. Each
            line may have its own λs (compare view: one line per classifier).
        thresholds: optional threshold per curve (dotted, in the curve's colour).
    """
    if not curves:
        raise ValueError("curves must not be empty")
    fig, ax = _figure((7, 4))
    colours = [f"C{i % 10}" for i in range(len(curves))]
    for index, (label, lambdas, preds) in enumerate(curves):
        lam = _as_vector(lambdas, "lambdas")
        ax.plot(lam, _as_vector(preds, "preds", lam.shape[0]), "-o", ms=2.5, lw=1.5, color=colours[index],
                label=label)
        threshold = None if thresholds is None else _check_probability(thresholds[index], "threshold")
        if threshold is not None:
            ax.axhline(threshold, ls=":", lw=1.2, color=colours[index])
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(x_label, fontsize=10)
    ax.set_ylabel("prediction", fontsize=10)
    ax.set_title(textwrap.fill(title, 64), fontsize=11)  # a long title wraps rather than leaving the figure
    ax.grid(True, alpha=0.3, lw=0.5)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    path = _save_figure(fig, path)
    logger.info("wrote curves plot %s (%d curves)", path, len(curves))
    return path


def write_png(path: str | os.PathLike, image: Any, footer: bool = False) -> Path:
    """Write one model-range image (H, W) float in [-1024, 1024] as an 8-bit grayscale PNG.

    ``footer``: add a 16-px strip below the image with :data:`FOOTER` (for generated frames).
    """
    img = _as_image(image, "image")
    path = _prepare_path(path)
    picture = Image.fromarray(to_display_uint8(img))
    if footer:
        canvas = Image.new("L", (picture.width, picture.height + 16), 255)
        canvas.paste(picture, (0, 0))
        _draw_footer(canvas, picture.height + 2)
        picture = canvas
    picture.save(path, format="PNG")
    logger.info("wrote PNG %s (%dx%d)", path, img.shape[1], img.shape[0])
    return path
