"""``latentshift compare IMAGE --target NAME [--classifiers A,B] --out DIR``: one GIF per classifier."""

from __future__ import annotations

import argparse

from ..errors import OptionsError
from ..options import add_cli_arguments, from_cli_args
from .common import add_multi_model_arguments


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", description="Writes DIR/compare-<classifier>.gif per classifier, compare.png (every prediction-vs-λ "
                    "curve) and compare.json (one line per classifier: where its search stopped, whether it "
                    "crossed its threshold).")
    parser.add_argument("image", help="PNG/JPEG (8 or 16 bit), TIFF or DICOM file")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    add_multi_model_arguments(parser, "default: every available one with the finding")
    add_cli_arguments(parser)
    parser.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from ..compare import compare

    if not args.target:
        raise OptionsError("compare needs --target NAME (the finding every classifier explains)")
    options = from_cli_args(args)
    ids = [i.strip() for i in args.classifiers.split(",") if i.strip()]
    comparison = compare(args.image, args.target, ids or None, autoencoder_id=args.autoencoder, options=options,
                         out_dir=args.out, manifest_path=args.manifest, device=args.device, settings=args.settings)
    for run in comparison.runs:
        print(run.line)
    for classifier_id, reason in comparison.skipped.items():
        print(f"{classifier_id} — skipped: {reason}")
    print(f"wrote {', '.join(r.gif.name for r in comparison.runs)}, compare.png and compare.json to {args.out}")
    return 0
