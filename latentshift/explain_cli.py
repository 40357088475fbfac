"""``python -m latentshift explain IMAGE --out DIR``: the command-line face of the pipeline."""

from __future__ import annotations

import argparse
import logging

from .pipeline import MAP_NAMES, ExplainOptions, Pipeline
from .shift import DIRECTIONS, HEATMAP_MODES

logger = logging.getLogger(__name__)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain", help="explain one image: GIF, heatmaps, prediction plot, summary.json",
        description="Writes DIR/latentshift.gif, heatmap.png, prediction.png, gradcam.png, "
                    "integrated_gradients.png, counterfactual.png, exaggerated.png and summary.json.")
    parser.add_argument("image", help="PNG/JPEG (8 or 16 bit) or DICOM file")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--classifier", help="classifier id from weights_manifest.json (default: embedded)")
    parser.add_argument("--autoencoder", help="autoencoder id from weights_manifest.json (default: embedded)")
    parser.add_argument("--manifest", help="another weights manifest (default: the repository's)")
    parser.add_argument("--target", help="pathology to explain (default: the top prediction)")
    parser.add_argument("--step-size", type=float, default=10.0, help="first λ search step (default 10)")
    parser.add_argument("--range", nargs=2, type=float, metavar=("LO", "HI"),
                        help="fixed λ range, LO ≤ 0 ≤ HI (skips the search)")
    parser.add_argument("--frames", type=int, default=20, help="sweep frames, λ = 0 included (default 20)")
    parser.add_argument("--direction", choices=DIRECTIONS, default="both")
    parser.add_argument("--heatmap", choices=HEATMAP_MODES, default="int")
    parser.add_argument("--frame-ms", type=int, default=100, help="GIF time per frame in ms (default 100)")
    parser.add_argument("--maps", default=",".join(MAP_NAMES),
                        help="comma-separated attribution maps to add (gradcam, integrated_gradients; '' for none)")
    parser.add_argument("--ig-steps", type=int, help="Integrated-Gradients steps (default: the method's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.set_defaults(func=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    pipeline = Pipeline.get(args.classifier, args.autoencoder, device=args.device, manifest_path=args.manifest)
    image = pipeline.load_image(args.image)
    options = ExplainOptions(
        target=args.target, step_size=args.step_size,
        lambda_range=tuple(args.range) if args.range else None, frames=args.frames,
        direction=args.direction, heatmap=args.heatmap, frame_duration_ms=args.frame_ms,
        maps=tuple(m.strip() for m in args.maps.split(",") if m.strip()), ig_steps=args.ig_steps)
    explanation = pipeline.explain(image, options, args.out)
    for warning in explanation.warnings:
        logger.warning("%s", warning)
    shift = explanation.shift
    print(f"{explanation.target}: input {shift.initial_pred:.3f}, λ ∈ [{shift.lambda_range[0]:.1f}, "
          f"{shift.lambda_range[1]:.1f}], prediction {shift.preds[0]:.3f} → {shift.preds[-1]:.3f} "
          f"over {len(shift.lambdas)} frames (stops: curtail {shift.stop_reasons['curtail']}, "
          f"exaggerate {shift.stop_reasons['exaggerate']})")
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in explanation.timings.items()))
    print(f"wrote {', '.join(sorted(p.name for p in explanation.files.values()))} to {args.out}")
    return 0
