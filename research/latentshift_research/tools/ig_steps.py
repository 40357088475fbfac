"""How many Integrated-Gradients steps a classifier needs: convergence delta and map agreement.

``python -m latentshift_research.tools.ig_steps [--classifier ID] [--source kermany] [--split test]
[--limit N]`` computes, on every image of the split, Integrated Gradients of the top
prediction (or ``--target``) with fixed step counts, with the default convergence-checked
rule (``DEFAULTS.ig_steps`` first, doubled while the delta exceeds ``DEFAULTS.ig_tolerance``)
and with ``--reference-steps`` as the reference map. Per rule it logs the median, 95th
percentile and largest |convergence delta| relative to |logit(x) − logit(baseline)|, the
smallest and median Pearson correlation of the map with the reference, the smallest share of
the reference's top 5 % pixels kept, and the steps and seconds per image. These figures
justify the default step count (``docs/benchmark.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latentshift.options import DEFAULTS
from .search_ends import split_images

logger = logging.getLogger("latentshift.ig_steps")

#: Fixed step counts compared with the default rule.
FIXED_STEPS = (8, 16, 32)


def map_agreement(candidate: np.ndarray, reference: np.ndarray, top_fraction: float = 0.05) -> tuple[float, float]:
    """(Pearson correlation, share of the reference's top ``top_fraction`` |pixels| also in the
    candidate's) of two (H, W) maps."""
    first, second = candidate.ravel().astype(np.float64), reference.ravel().astype(np.float64)
    correlation = float(np.corrcoef(first, second)[0, 1])
    count = max(1, int(top_fraction * second.size))
    kept = np.intersect1d(np.argsort(-np.abs(first))[:count], np.argsort(-np.abs(second))[:count]).size
    return correlation, kept / count


def measure_image(classifier, x: torch.Tensor, target: int, rules: dict[str, dict], reference_steps: int) -> dict:
    """{rule: {relative_delta, correlation, top_kept, steps, seconds}} for one image."""
    from latentshift.core.attribution import IntegratedGradientsMap

    reference = IntegratedGradientsMap(classifier, n_steps=reference_steps, tolerance=0).attribute(x, target).map
    row = {}
    for name, kwargs in rules.items():
        started = time.perf_counter()
        result = IntegratedGradientsMap(classifier, **kwargs).attribute(x, target)
        seconds = time.perf_counter() - started
        logit_change = float(result.map.astype(np.float64).sum()) - result.convergence_delta
        correlation, kept = map_agreement(result.map, reference)
        row[name] = {"relative_delta": abs(result.convergence_delta) / max(abs(logit_change), 1e-12),
                     "abs_delta": abs(result.convergence_delta), "correlation": correlation, "top_kept": kept,
                     "steps": result.n_steps, "seconds": seconds}
    return row


def summarize(rows: list[dict]) -> dict:
    """Per rule: medians, 95th percentiles and extremes over the images."""
    summary = {}
    for name in rows[0]:
        values = {key: np.array([row[name][key] for row in rows]) for key in rows[0][name]}
        summary[name] = {
            "relative_delta": {"median": float(np.median(values["relative_delta"])),
                               "p95": float(np.percentile(values["relative_delta"], 95)),
                               "max": float(values["relative_delta"].max())},
            "correlation": {"min": float(values["correlation"].min()),
                            "median": float(np.median(values["correlation"]))},
            "top_kept_min": float(values["top_kept"].min()),
            "steps": {str(int(s)): int((values["steps"] == s).sum()) for s in np.unique(values["steps"])},
            "median_seconds": float(np.median(values["seconds"]))}
    return summary


def summary_table(summary: dict) -> str:
    """One line per rule: relative |delta| (median / p95 / max), correlation, top 5 %, steps, seconds."""
    lines = ["rule | |delta|/|logit change| median / p95 / max | correlation min / median | "
             "top 5 % kept (min) | images per step count | s per image (median)"]
    for name, entry in summary.items():
        delta, correlation = entry["relative_delta"], entry["correlation"]
        steps = ", ".join(f"{count}x{steps}" for steps, count in entry["steps"].items())
        lines.append(f"{name} | {100 * delta['median']:.2f} % / {100 * delta['p95']:.2f} % / {100 * delta['max']:.2f} % | "
                     f"{correlation['min']:.4f} / {correlation['median']:.4f} | {entry['top_kept_min']:.3f} | "
                     f"{steps} | {entry['median_seconds']:.3f}")
    return "\n".join(lines)


def rules_to_compare() -> dict[str, dict]:
    """The fixed step counts (tolerance 0) and the default rule."""
    rules = {f"fixed {steps}": {"n_steps": steps, "tolerance": 0} for steps in FIXED_STEPS}
    rules[f"default ({DEFAULTS.ig_steps}, tolerance {DEFAULTS.ig_tolerance:g})"] = {}
    return rules


def main(argv: list[str] | None = None) -> int:
    from latentshift.io.imaging import load_xray
    from latentshift.pipeline import Pipeline
    from ..training.data import default_data_dir

    parser = argparse.ArgumentParser(prog="python -m latentshift_research.tools.ig_steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default=None, help="classifier id (default: the embedded default)")
    parser.add_argument("--data", default=None, help="data folder with labels.csv (default: the shared CXR data)")
    parser.add_argument("--source", default="kermany")
    parser.add_argument("--split", default="test")
    parser.add_argument("--target", default=None, help="finding to explain (default: the top prediction)")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--reference-steps", type=int, default=128)
    parser.add_argument("--json", default=None, help="write the per-image rows and the summary here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    pipeline = Pipeline.get(args.classifier)
    paths = split_images(Path(args.data) if args.data else default_data_dir(), args.source, args.split)[:args.limit]
    if not paths:
        logger.error("no %s/%s images found", args.source, args.split)
        return 2
    rules, rows = rules_to_compare(), []
    for path in paths:
        image = load_xray(path, resolution=pipeline.resolution)
        _, target = pipeline.target_index(args.target, pipeline.predict(image))
        rows.append(measure_image(pipeline.classifier, image.tensor(pipeline.device), target, rules,
                                  args.reference_steps))
    summary = summarize(rows)
    logger.info("IG steps of %s on %d %s/%s images (reference: %d steps):\n%s", pipeline.classifier_entry.id,
                len(rows), args.source, args.split, args.reference_steps, summary_table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
