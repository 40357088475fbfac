"""``latentshift explain IMAGE --out DIR``: the command-line face of the pipeline."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from ..options import add_cli_arguments, from_cli_args

logger = logging.getLogger(__name__)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain", description="Writes DIR/latentshift.gif, heatmap.png, prediction.png, gradcam.png, "
                    "integrated_gradients.png, counterfactual.png, exaggerated.png and summary.json.")
    parser.add_argument("image", help="PNG/JPEG (8 or 16 bit), TIFF or DICOM file")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    add_model_arguments(parser)
    add_cli_arguments(parser)
    parser.set_defaults(func=run_explain)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags shared by the commands that explain (ids, your own files, manifest, device)."""
    parser.add_argument("--classifier", help="classifier id from the manifest (default: embedded)")
    parser.add_argument("--autoencoder", help="autoencoder id from the manifest (default: embedded)")
    parser.add_argument("--manifest", help="your own manifest, merged over the package's one")
    parser.add_argument("--classifier-file", metavar="MODEL.pt2",
                        help="your classifier saved with torch.export (needs --card for its labels)")
    parser.add_argument("--card", metavar="CARD.json",
                        help="the classifier file's card (JSON/YAML: labels, thresholds, sha256, population, ...)")
    parser.add_argument("--autoencoder-file", metavar="ENCODER.pt2,DECODER.pt2",
                        help="your autoencoder as two torch.export programs, encoder and decoder")
    parser.add_argument("--autoencoder-card", metavar="CARD.json", help="the autoencoder files' card (sha256, ...)")
    parser.add_argument("--allow-unverified", action="store_true", default=None,
                        help="load a file whose card or manifest gives no sha256 (with a warning)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def pipeline_from_args(args: argparse.Namespace):
    """The :class:`~latentshift.pipeline.Pipeline` the flags name: manifest ids, or your own exported
    files (which then are the defaults)."""
    from ..pipeline import Pipeline
    from ..weights import Manifest, ModelStore
    from ..weights.exported import entry_from_card

    settings = args.settings.with_flags(allow_unverified=args.allow_unverified)
    user_entries = []
    if args.classifier_file:
        user_entries.append(entry_from_card("classifier", [args.classifier_file], args.card))
    if args.autoencoder_file:
        files = [f.strip() for f in args.autoencoder_file.split(",") if f.strip()]
        user_entries.append(entry_from_card("autoencoder", files, args.autoencoder_card))
    if not user_entries and not args.allow_unverified:
        return Pipeline.get(args.classifier, args.autoencoder, device=args.device, manifest_path=args.manifest,
                            settings=settings)
    manifest = Manifest.for_user(args.manifest, settings).merged(Manifest([replace(e, embedded_default=True)
                                                                           for e in user_entries]))
    store = ModelStore(manifest, args.device, settings=settings)
    return Pipeline.from_store(store, None if args.classifier_file else args.classifier,
                               None if args.autoencoder_file else args.autoencoder)


def run_explain(args: argparse.Namespace) -> int:
    options = from_cli_args(args)
    pipeline = pipeline_from_args(args)
    image = pipeline.load_image(args.image)
    explanation = pipeline.explain(image, options, args.out)
    for warning in explanation.warnings:
        logger.warning("%s", warning["message"])
    if explanation.held_back:
        print(explanation.held_back)
        print(f"wrote {', '.join(sorted(p.name for p in explanation.files.values()))} to {args.out}")
        return 3
    shift = explanation.shift
    print(f"{explanation.target}: input {shift.initial_pred:.3f}, λ ∈ [{shift.lambda_range[0]:.1f}, "
          f"{shift.lambda_range[1]:.1f}], prediction {shift.preds[0]:.3f} → {shift.preds[-1]:.3f} "
          f"over {len(shift.lambdas)} frames (stops: curtail {shift.stop_reasons['curtail']}, "
          f"exaggerate {shift.stop_reasons['exaggerate']})")
    print(explanation.outcome)
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in explanation.timings.items()))
    print(f"wrote {', '.join(sorted(p.name for p in explanation.files.values()))} to {args.out}")
    return 0
