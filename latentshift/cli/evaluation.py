"""``latentshift evaluate-maps``: IoU and pointing game of the attribution maps on NIH boxes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.maps import METHODS, run_evaluate_maps
from ..evaluation import maps


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate-maps", help="IoU and pointing game of the attribution maps on NIH boxes",
        description=maps.__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with labels.csv, images/ and masks/")
    parser.add_argument("--split", default="test", help="split of labels.csv to evaluate (default: test)")
    parser.add_argument("--classifier", help="classifier id of the weights manifest (default: embedded default)")
    parser.add_argument("--autoencoder", help="autoencoder id of the weights manifest (default: embedded default)")
    parser.add_argument("--limit", type=int, help="evaluate at most N images")
    parser.add_argument("--csv", type=Path, help="write one row per image x method here")
    parser.add_argument("--ig-steps", type=int, default=None,
                        help="Integrated Gradients integration steps (default: attribution.DEFAULT_IG_STEPS)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.set_defaults(func=run_evaluate_maps)
