"""``latentshift explain IMAGE --out DIR``: the command-line face of the pipeline."""

from __future__ import annotations

import argparse
import logging

from ..options import add_cli_arguments, from_cli_args
from ..pipeline import Pipeline

logger = logging.getLogger(__name__)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain", help="explain one image: GIF, heatmaps, prediction plot, summary.json",
        description="Writes DIR/latentshift.gif, heatmap.png, prediction.png, gradcam.png, "
                    "integrated_gradients.png, counterfactual.png, exaggerated.png and summary.json.")
    parser.add_argument("image", help="PNG/JPEG (8 or 16 bit), TIFF or DICOM file")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    add_model_arguments(parser)
    add_cli_arguments(parser)
    parser.set_defaults(func=run_explain)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--classifier, --autoencoder, --manifest, --device (shared by the commands that explain)."""
    parser.add_argument("--classifier", help="classifier id from weights_manifest.json (default: embedded)")
    parser.add_argument("--autoencoder", help="autoencoder id from weights_manifest.json (default: embedded)")
    parser.add_argument("--manifest", help="another weights manifest (default: the package's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def run_explain(args: argparse.Namespace) -> int:
    options = from_cli_args(args)
    pipeline = Pipeline.get(args.classifier, args.autoencoder, device=args.device, manifest_path=args.manifest)
    image = pipeline.load_image(args.image)
    explanation = pipeline.explain(image, options, args.out)
    for warning in explanation.warnings:
        logger.warning("%s", warning["message"])
    shift = explanation.shift
    print(f"{explanation.target}: input {shift.initial_pred:.3f}, λ ∈ [{shift.lambda_range[0]:.1f}, "
          f"{shift.lambda_range[1]:.1f}], prediction {shift.preds[0]:.3f} → {shift.preds[-1]:.3f} "
          f"over {len(shift.lambdas)} frames (stops: curtail {shift.stop_reasons['curtail']}, "
          f"exaggerate {shift.stop_reasons['exaggerate']})")
    print(explanation.outcome)
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in explanation.timings.items()))
    print(f"wrote {', '.join(sorted(p.name for p in explanation.files.values()))} to {args.out}")
    return 0
