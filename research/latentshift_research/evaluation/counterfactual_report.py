"""The counterfactual-quality report as text: a Markdown table, a JSON record and one figure per task.

Figure rows: each case in each frame mode; columns: input | λ = 0 | curtailed | exaggerated |
(exaggerated − curtailed) × 4 (red brighter, blue darker, mid-grey none).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from latentshift.io.imaging import to_display_uint8
from latentshift.io.render import text_font
from .counterfactuals import TaskRun, frechet_distance

COLUMNS = ("input", "λ = 0", "curtailed", "exaggerated", "difference × 4")
MODE_NAMES = {"input": "input (x + D(z+λg) − D(z))", "reconstruction": "reconstruction (paper)"}


def _interval(value: tuple, digits: int = 3, scale: float = 1.0) -> str:
    main, low, high = (v * scale for v in value[-3:])
    if math.isnan(main):
        return "–"
    return f"{main:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _valid(entry: list) -> str:
    hits, total, share, low, high = entry
    if not total:
        return "–"
    return f"{hits}/{total} = {100 * share:.0f} % [{100 * low:.0f}, {100 * high:.0f}]"


def table_rows(run: TaskRun) -> list[str]:
    """One Markdown row per frame mode of ``run``."""
    rows = []
    for mode, summary in run.summaries.items():
        box = (f"{_interval(summary['box_share'], 2)} (boxes cover {_interval(summary['box_area'], 2)}, "
               f"n = {summary['boxed_cases']})" if summary["boxed_cases"] else "no boxes")
        rows.append(" | ".join([
            f"| {run.task.classifier_id} · {run.task.finding}", MODE_NAMES.get(mode, mode),
            _valid(summary["curtail_valid"]), _valid(summary["exaggerate_valid"]),
            _interval(summary["proximity"], 1), _interval(summary["relative_proximity"], 2, 100) + " %",
            _interval(summary["sharpness"], 3), _interval(summary["frechet"], 2), box,
            f"{run.seconds[mode]:.2f} |"]))
    return rows


def markdown_table(runs: list[TaskRun], split: str) -> str:
    """The report's table, with the floor of the Fréchet distance (the inputs themselves) under it."""
    header = ("| classifier · finding | frames | curtail valid (TPs) | exaggerate valid (TNs) | "
              "proximity mean \\|Δ\\| (px) | relative | sharpness ratio | Fréchet distance | "
              "change inside boxes | s / image |")
    lines = [header, "|" + "---|" * 10]
    for run in runs:
        lines += table_rows(run)
    floors = []
    for run in runs:
        if len(run.input_features) > 2:
            floors.append(f"{run.task.name}: {frechet_distance(run.input_features, run.real_features):.2f}")
    zero = [f"{run.task.name} {mode}: max |frame − input| {s['zero_frame_max_difference']:g}, "
            f"max |p − p(input)| {s['zero_pred_max_difference']:.1e}" for run in runs for mode, s in run.summaries.items()]
    lines.append("")
    lines.append(f"Split: {split}. Intervals: bootstrap 95 % over images. Fréchet distance of the judged inputs "
                 f"themselves to the same real images (the floor): {'; '.join(floors)}.")
    lines.append("")
    lines.append("The λ = 0 frame against the input: " + "; ".join(zero) + ".")
    return "\n".join(lines)


def record(runs: list[TaskRun], split: str) -> dict:
    """JSON-ready figures of every run."""
    return {"split": split, "tasks": [
        {"classifier": r.task.classifier_id, "finding": r.task.finding, "source": r.task.source,
         "threshold": r.threshold, "seconds_per_image": r.seconds,
         "modes": {mode: _plain(summary) for mode, summary in r.summaries.items()}} for r in runs]}


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float(value) if isinstance(value, (float, np.floating)) else value


def _difference_tile(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: (after − before) × 4 in display units, red brighter, blue darker."""
    delta = np.clip((after - before) / 2048.0 * 4 * 255, -255, 255)
    grey = np.full(delta.shape, 128.0)
    red = np.clip(grey + delta, 0, 255)
    blue = np.clip(grey - delta, 0, 255)
    green = np.clip(grey - np.abs(delta), 0, 255)
    return np.stack([red, green, blue], -1).astype(np.uint8)


def figure(run: TaskRun, path: Path) -> Path | None:
    """The task's figure (see the module docstring) as a PNG at ``path``; None without figure cases."""
    from PIL import Image, ImageDraw

    rows = []
    for mode, cases in run.cases.items():
        for case in (c for c in cases if c.frames):
            f = case.frames
            tiles = [np.repeat(to_display_uint8(f[k])[..., None], 3, -1)
                     for k in ("input", "zero", "curtailed", "exaggerated")]
            caption = (f"{f['name']} · frames from {MODE_NAMES.get(mode, mode)} · p = "
                       + " | ".join(f"{p:.2f}" for p in f["preds"]))
            rows.append((caption, tiles + [_difference_tile(f["exaggerated"], f["curtailed"])]))
    if not rows:
        return None
    side, label = rows[0][1][0].shape[0], 16
    canvas = Image.new("RGB", (side * len(COLUMNS), label + len(rows) * (side + label)), "white")
    draw, font = ImageDraw.Draw(canvas), text_font(11)
    for c, name in enumerate(COLUMNS):
        draw.text((c * side + 4, 1), name, fill="black", font=font)
    for r, (caption, tiles) in enumerate(rows):
        top = label + r * (side + label)
        draw.text((4, top + 1), caption, fill="black", font=font)
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (c * side, top + label))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path


def write_report(runs: list[TaskRun], split: str, out_dir: Path) -> dict[str, Path]:
    """counterfactuals.md, counterfactuals.json and one figure per task in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"table": out_dir / "counterfactuals.md", "json": out_dir / "counterfactuals.json"}
    files["table"].write_text(markdown_table(runs, split) + "\n", encoding="utf-8")
    files["json"].write_text(json.dumps(record(runs, split), indent=2) + "\n", encoding="utf-8")
    for run in runs:
        made = figure(run, out_dir / f"counterfactuals-{run.task.name}.png")
        if made is not None:
            files[run.task.name] = made
    return files
