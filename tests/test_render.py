"""Tests of latentshift.io.render: GIF, overlays, prediction plot, PNG."""

import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from latentshift.io import render
from latentshift.io.imaging import to_display_uint8

logger = logging.getLogger(__name__)

H = W = 224


def _smooth_image(rng, h=H, w=W, amplitude=800.0):
    """Random smooth image in [-1024, 1024] (realistic GIF content, not constant)."""
    coarse = rng.normal(size=(h // 16 + 2, w // 16 + 2)).astype(np.float32)
    up = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    img = np.asarray(up, dtype=np.float64)
    return img / np.abs(img).max() * amplitude


def _sweep(n=20, h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    base = _smooth_image(rng, h, w)
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-((yy - 0.65 * h) ** 2 + (xx - 0.35 * w) ** 2) / (2 * (0.1 * h) ** 2))
    lambdas = np.linspace(-200.0, 200.0, n)
    lambdas[np.argmin(np.abs(lambdas))] = 0.0
    frames = np.stack([np.clip(base + 1.5 * lam * blob + rng.normal(0, 4, (h, w)), -1024, 1024)
                       for lam in lambdas])
    preds = 1.0 / (1.0 + np.exp(-lambdas / 60.0))
    return base, frames, preds, lambdas


@pytest.fixture(scope="module")
def sweep():
    return _sweep()


def _durations_and_loop(path):
    with Image.open(path) as im:
        loop = im.info.get("loop")
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info.get("duration"))
    return durations, loop


# ---------------------------------------------------------------------------- GIF


def test_gif_palindrome_count_loop_duration_and_size(tmp_path, sweep, record_property):
    base, frames, preds, lambdas = sweep
    path = render.write_gif(tmp_path / "sub" / "shift.gif", frames[:, None], preds, lambdas,
                            input_image=base, target_name="Pneumonia", threshold=0.5,
                            frame_duration_ms=80)
    assert path.exists() and path.suffix == ".gif"
    assert render.gif_frame_count(path) == 2 * 20 - 2
    durations, loop = _durations_and_loop(path)
    assert loop == 0
    assert durations == [80] * 38
    size = path.stat().st_size
    logger.info("GIF 224x224 x 20 frames (38 written): %d bytes (%.1f kB)", size, size / 1024)
    record_property("gif_bytes", size)
    assert size < 2 * 1024 * 1024


def test_gif_unchanged_pixels_written_as_transparent_decode_to_the_same_frames(tmp_path, sweep):
    base, frames, preds, lambdas = sweep
    paths = {optimize: render.write_gif(tmp_path / f"{optimize}.gif", frames, preds, lambdas, input_image=base,
                                        target_name="Pneumonia", threshold=0.5, optimize=optimize)
             for optimize in (True, False)}
    decoded = {}
    for optimize, path in paths.items():
        with Image.open(path) as im:
            decoded[optimize] = []
            for i in range(im.n_frames):
                im.seek(i)
                decoded[optimize].append(np.asarray(im.convert("RGB")))
    assert len(decoded[True]) == len(decoded[False]) == 38
    assert all(np.array_equal(a, b) for a, b in zip(decoded[True], decoded[False]))
    # the input panel and the background never change: most of each frame is transparent
    assert paths[True].stat().st_size < 0.7 * paths[False].stat().st_size


def test_gif_without_palindrome_and_small_counts(tmp_path, sweep):
    base, frames, preds, lambdas = sweep
    p = render.write_gif(tmp_path / "a.gif", frames, preds, lambdas, input_image=base,
                         target_name="Pneumonia", palindrome=False)
    assert render.gif_frame_count(p) == 20
    for n in (1, 2):
        p = render.write_gif(tmp_path / f"n{n}.gif", frames[:n], preds[:n], lambdas[:n],
                             input_image=base, target_name="Pneumonia")
        assert render.gif_frame_count(p) == n


def test_gif_identical_frames_are_not_merged(tmp_path):
    # Pillow merges identical consecutive frames; the λ marker keeps every frame distinct.
    img = np.zeros((32, 32))
    frames = np.repeat(img[None], 5, axis=0)
    p = render.write_gif(tmp_path / "c.gif", frames, np.full(5, 0.3), np.linspace(-1, 1, 5),
                         input_image=img, target_name="Effusion")
    assert render.gif_frame_count(p) == 8


def test_gif_order_and_input_panel(tmp_path, sweep):
    base, frames, preds, lambdas = sweep
    p = render.write_gif(tmp_path / "o.gif", frames, preds, lambdas, input_image=base,
                         target_name="Pneumonia", threshold=0.5)
    layout = render._gif_layout(H, W)
    expected_input = to_display_uint8(base).astype(int)
    with Image.open(p) as im:
        panels = []
        for i in range(im.n_frames):
            im.seek(i)
            gray = np.asarray(im.convert("L"), dtype=int)
            if i == 0:
                # left: the input image; right: the first (most curtailed) frame
                x0, y0, x1, y1 = layout["input_box"]
                assert np.abs(gray[y0:y1, x0:x1] - expected_input).mean() < 1.5
            fx0, fy0, fx1, fy1 = layout["frame_box"]
            panels.append(gray[fy0:fy1, fx0:fx1])
    # palindrome: 0..19 then 18..1
    order = list(range(20)) + list(range(18, 0, -1))
    for k, i in enumerate(order):
        expected = to_display_uint8(frames[i]).astype(int)
        assert np.abs(panels[k] - expected).mean() < 1.5, (k, i)


def test_gif_bar_colour_reflects_prediction(tmp_path):
    img = np.zeros((64, 64))
    frames = np.repeat(img[None], 3, axis=0)
    preds = np.array([0.1, 0.5, 0.9])
    p = render.write_gif(tmp_path / "bar.gif", frames, preds, [-1.0, 0.0, 1.0], input_image=img,
                         target_name="Pneumonia", threshold=0.5, palindrome=False)
    layout = render._gif_layout(64, 64)
    x0, y0, x1, y1 = layout["bar_box"]
    ym = (y0 + y1) // 2
    with Image.open(p) as im:
        im.seek(0)
        low = np.asarray(im.convert("RGB"), dtype=int)
        im.seek(2)
        high = np.asarray(im.convert("RGB"), dtype=int)
    at = lambda a, frac: a[ym, x0 + int(frac * (x1 - x0))]  # noqa: E731
    assert at(low, 0.05)[2] > at(low, 0.05)[0]          # filled, below threshold: blue
    assert np.ptp(at(low, 0.3)) < 10                    # unfilled track: gray
    assert at(high, 0.8)[0] > at(high, 0.8)[2] + 60     # filled, above threshold: orange


def test_gif_accepts_torch_tensors(tmp_path):
    base, frames, preds, lambdas = _sweep(n=4, h=48, w=48)
    p = render.write_gif(tmp_path / "t.gif", torch.from_numpy(frames).float()[:, None],
                         torch.from_numpy(preds).float(), torch.from_numpy(lambdas).float(),
                         input_image=torch.from_numpy(base).float()[None, None],
                         target_name="Pneumonia", threshold=torch.tensor(0.5).item())
    assert render.gif_frame_count(p) == 6


@pytest.mark.parametrize("change, message", [
    (dict(preds=np.full(3, 0.5)), "preds has 3 values"),
    (dict(lambdas=np.linspace(-1, 1, 5)), "lambdas has 5 values"),
    (dict(lambdas=np.array([0.0, -1.0, 1.0, 2.0])), "sorted ascending"),
    (dict(input_image=np.zeros((16, 17))), "input_image has shape"),
    (dict(frames=np.zeros((4, 2, 16, 16))), "frames must have shape"),
    (dict(frames=np.zeros((16, 16))), "frames must have shape"),
    (dict(preds=np.array([0.1, 0.2, 1.5, 0.3])), "probabilities in"),
    (dict(preds=np.array([0.1, np.nan, 0.5, 0.3])), "NaN"),
    (dict(threshold=1.2), "threshold"),
    (dict(target_name=""), "target_name"),
    (dict(frame_duration_ms=0), "frame_duration_ms"),
])
def test_gif_validation(tmp_path, change, message):
    args = dict(frames=np.zeros((4, 16, 16)), preds=np.full(4, 0.5),
                lambdas=np.array([-1.0, 0.0, 1.0, 2.0]), input_image=np.zeros((16, 16)),
                target_name="Pneumonia", threshold=None, frame_duration_ms=100)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        render.write_gif(tmp_path / "bad.gif", args.pop("frames"), args.pop("preds"),
                         args.pop("lambdas"), **args)
    assert not (tmp_path / "bad.gif").exists()


# ---------------------------------------------------------------------------- overlays


def _corner_map(h=64, w=64, sign=1.0):
    m = np.zeros((h, w))
    m[: h // 4, : w // 4] = sign * 5.0
    return m


def test_overlay_array_shape_and_known_corner():
    img = np.zeros((64, 64))
    out = render.overlay_array(img, _corner_map(), cmap="jet", alpha=0.5)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    r, g, b = out[4, 4].astype(int)
    assert r > b + 40 and r > g       # hot corner: red end of jet
    r, g, b = out[60, 60].astype(int)
    assert b > r + 40                 # elsewhere: blue end of jet
    # alpha = 0 shows the grayscale input unchanged
    plain = render.overlay_array(img, _corner_map(), alpha=0.0)
    assert np.all(plain == to_display_uint8(img)[..., None])


def test_overlay_absolute_versus_positive_part():
    img = np.zeros((64, 64))
    neg = _corner_map(sign=-1.0)
    pos_only = render.overlay_array(img, neg, absolute=False)
    assert np.ptp(pos_only.reshape(-1, 3), axis=0).max() == 0   # no positive part: uniform
    absolute = render.overlay_array(img, neg, absolute=True)
    assert absolute[4, 4, 0] > absolute[4, 4, 2] + 40           # |map| colours the corner
    assert absolute[60, 60, 2] > absolute[60, 60, 0] + 40


def test_overlay_smoothing_and_percentile():
    img = np.zeros((64, 64))
    m = np.zeros((64, 64))
    m[32, 32] = 1.0
    sharp = render.overlay_array(img, m, cmap="inferno", clip_percentile=100)
    smooth = render.overlay_array(img, m, cmap="inferno", smooth_sigma=3.0, clip_percentile=100)
    assert (np.abs(sharp.astype(int) - sharp[0, 0]).sum(-1) > 0).sum() == 1
    assert (np.abs(smooth.astype(int) - smooth[0, 0]).sum(-1) > 0).sum() > 20


def test_write_overlay_png_and_tensors(tmp_path):
    img = torch.zeros(1, 1, 64, 64)
    m = torch.from_numpy(_corner_map()).float().requires_grad_(True) * 1.0
    p = render.write_overlay(tmp_path / "deep" / "ov.png", img, m, title="Grad-CAM", cmap="inferno")
    with Image.open(p) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.width >= 128 and im.height > 128


@pytest.mark.parametrize("kwargs, message", [
    (dict(attribution_map=np.zeros((32, 64))), "attribution_map has shape"),
    (dict(cmap="no-such-map"), "unknown colormap"),
    (dict(alpha=1.5), "alpha"),
    (dict(clip_percentile=0), "clip_percentile"),
    (dict(image=np.zeros((3, 64, 64))), "image must be one image"),
])
def test_overlay_validation(kwargs, message):
    args = dict(image=np.zeros((64, 64)), attribution_map=np.ones((64, 64)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        render.overlay_array(args.pop("image"), args.pop("attribution_map"), **args)


# ---------------------------------------------------------------------------- plot, PNG


def test_prediction_plot_is_png_and_leaves_no_pyplot_state(tmp_path, sweep):
    _, _, preds, lambdas = sweep
    figs_before = sys.modules["matplotlib.pyplot"].get_fignums() if "matplotlib.pyplot" in sys.modules else []
    p = render.write_prediction_plot(tmp_path / "plots" / "pred.png", torch.from_numpy(lambdas),
                                     preds, target_name="Pneumonia", threshold=0.5, initial_pred=0.6)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(p) as im:
        assert im.size == (500, 350)
    figs_after = sys.modules["matplotlib.pyplot"].get_fignums() if "matplotlib.pyplot" in sys.modules else []
    assert figs_after == figs_before
    with pytest.raises(ValueError, match="preds has"):
        render.write_prediction_plot(tmp_path / "x.png", lambdas, preds[:-1], target_name="P")
    with pytest.raises(ValueError, match="initial_pred"):
        render.write_prediction_plot(tmp_path / "x.png", lambdas, preds, target_name="P", initial_pred=2)


def test_write_png_roundtrip(tmp_path):
    img = np.linspace(-1024, 1024, 32 * 48).reshape(32, 48)
    for x in (img, torch.from_numpy(img)[None]):
        p = render.write_png(tmp_path / "png" / "frame.png", x)
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (48, 32)
            arr = np.asarray(im)
        assert arr[0, 0] == 0 and arr[-1, -1] == 255
        assert np.array_equal(arr, to_display_uint8(img))
    with pytest.raises(ValueError, match="image must be one image"):
        render.write_png(tmp_path / "bad.png", np.zeros((2, 8, 8)))


def test_gif_long_target_name_and_scale(tmp_path):
    img = np.zeros((32, 32))
    frames = np.repeat(img[None], 3, axis=0)
    p = render.write_gif(tmp_path / "long.gif", frames, [0.2, 0.4, 0.6], [-5.0, 0.0, 5.0],
                         input_image=img, target_name="Enlarged Cardiomediastinum " * 4,
                         threshold=0.5, scale=2)
    assert render.gif_frame_count(p) == 4
    with Image.open(p) as im:
        assert im.size == render._gif_layout(32, 32, 2)["size"]


def test_palette_lookup_per_colour_equals_the_per_pixel_nearest_entry():
    """The GIF maps each distinct colour once (cached); the result is the brute-force nearest entry."""
    palette = render._gif_palette()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (500, 3))
    codes = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    brute = ((rgb[:, None, :] - palette[None].astype(np.int64)) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(render._nearest_palette_entries(codes, palette), brute)
    np.testing.assert_array_equal(render._nearest_palette_entries(codes, palette), brute)  # from the cache
