"""How far the bisect search's λ ends are from the reference ladder's, over a data split.

``python -m latentshift_research.tools.search_ends [--data DIR] [--source kermany] [--split test]``
runs both searches of :meth:`LatentShift.attribute` with the pipeline's models (the demo
pair by default) on every image of the split, explaining the top prediction, and logs the
median and 95th percentile of ``|λ_bisect − λ_ladder| / |λ_ladder|`` per direction and the
evaluations of each mode (the search's, λ = 0 included; the 3-frame sweep adds none).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latentshift.core.shift import ShiftOptions

logger = logging.getLogger("latentshift.search_ends")


def split_images(data: Path, source: str, split: str) -> list[Path]:
    """Image paths of ``labels.csv`` rows with this source and split."""
    with (data / "labels.csv").open(newline="") as handle:
        return [data / row["file"] for row in csv.DictReader(handle)
                if row["source"] == source and row["split"] == split]


def measure(pipeline, paths: list[Path]) -> list[dict]:
    """Per image: target, both modes' (λ_min, λ_max), stop reasons, evaluations and seconds."""
    from latentshift.io.imaging import load_xray

    rows = []
    for path in paths:
        x = load_xray(path, resolution=pipeline.resolution).tensor(pipeline.device)
        with torch.inference_mode():
            probabilities = torch.sigmoid(pipeline.classifier(x))[0]
        target = int(torch.argmax(probabilities))
        row = {"image": path.name, "target": target}
        for mode in ("bisect", "ladder"):
            started = time.perf_counter()
            [result] = pipeline.explainer.attribute(x, target,
                                                    ShiftOptions(frames=3, search=mode, frames_from="reconstruction"),
                                                    initial_preds=[float(probabilities[target])])
            row[mode] = {"range": list(result.lambda_range), "stops": result.stop_reasons,
                         "evaluations": result.evaluations, "seconds": time.perf_counter() - started}
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Median / 95th percentile of the relative end difference per direction; evaluations."""
    summary = {}
    for index, side in enumerate(("curtail", "exaggerate")):
        diffs = [abs(r["bisect"]["range"][index] - r["ladder"]["range"][index]) / abs(r["ladder"]["range"][index])
                 if r["ladder"]["range"][index] != 0 else float(r["bisect"]["range"][index] != 0)
                 for r in rows]
        summary[side] = {"median": float(np.median(diffs)), "p95": float(np.percentile(diffs, 95)),
                         "max": float(np.max(diffs)),
                         "same_stop_reason": sum(r["bisect"]["stops"][side] == r["ladder"]["stops"][side]
                                                 for r in rows)}
    for mode in ("bisect", "ladder"):
        summary[mode] = {"median_evaluations": statistics.median(r[mode]["evaluations"] for r in rows),
                         "total_evaluations": sum(r[mode]["evaluations"] for r in rows),
                         "median_seconds": statistics.median(r[mode]["seconds"] for r in rows)}
    summary["images"] = len(rows)
    return summary


def main(argv: list[str] | None = None) -> int:
    from latentshift.pipeline import Pipeline
    from ..training.data import default_data_dir

    parser = argparse.ArgumentParser(prog="python -m latentshift_research.tools.search_ends", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="data folder with labels.csv (default: the shared CXR data)")
    parser.add_argument("--source", default="kermany")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--json", default=None, help="write the per-image rows and the summary here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    paths = split_images(Path(args.data) if args.data else default_data_dir(), args.source, args.split)[:args.limit]
    rows = measure(Pipeline.get(), paths)
    summary = summarize(rows)
    logger.info("bisect vs ladder λ ends on %d %s/%s images: %s", len(rows), args.source, args.split,
                json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
