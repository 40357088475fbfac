"""``latentshift batch INPUT --out DIR``: explain a folder or a CSV of images, write results.csv and a gallery."""

from __future__ import annotations

import argparse
import logging

from ..batch import BatchConfig, run_batch
from ..batch.run import ITEM_BATCH_ACCELERATOR, ITEM_BATCH_CPU
from ..options import add_cli_arguments, from_cli_args
from .common import add_multi_model_arguments

logger = logging.getLogger(__name__)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch", description="INPUT is a folder (searched recursively for image and DICOM files) or a CSV with a 'path' "
                    "column and optional 'target', 'label' and 'classifier' columns. Writes DIR/<image>/<classifier>/ "
                    "(the files of `latentshift explain`), DIR/results.csv (and results.parquet with pyarrow) and "
                    "DIR/index.html. A rerun skips the finished items; a bad file gets a row with its error.")
    parser.add_argument("input", help="folder of images or a CSV file")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    add_multi_model_arguments(parser, "default: the embedded one; one row per item and classifier")
    parser.add_argument("--workers", type=int, default=1,
                        help="local worker processes (models loaded once per worker, cores shared out; default 1)")
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="run the items as Ray tasks on the cluster at ADDRESS, or 'auto' "
                             "(needs pip install 'latentshift[distributed]')")
    parser.add_argument("--item-batch", metavar="K", type=int, default=None,
                        help="items of one classifier a worker explains together (predictions and Latent Shift "
                             f"batched; default {ITEM_BATCH_ACCELERATOR} with --device cuda, {ITEM_BATCH_CPU} "
                             "on the CPU; 1: one item at a time)")
    parser.add_argument("--setup", metavar="MODULE:FUNCTION", default=None,
                        help="call this in every worker before loading models (e.g. to register your own architectures)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cli_arguments(parser)
    parser.set_defaults(func=run_batch_command)


def run_batch_command(args: argparse.Namespace) -> int:
    config = BatchConfig(out_dir=args.out, options=from_cli_args(args), autoencoder=args.autoencoder,
                         manifest=args.manifest, device=args.device, setup=args.setup, item_batch=args.item_batch,
                         settings=args.settings)
    classifiers = [c.strip() for c in args.classifiers.split(",") if c.strip()]
    report = run_batch(args.input, config, classifiers, workers=args.workers, ray_address=args.ray,
                       progress=not args.no_progress)
    for row in report.errors:
        logger.warning("%s (%s): %s", row["name"], row["classifier"], row["error"])
    print(f"{len(report.rows)} rows: {report.computed} explained, {report.skipped} already done, "
          f"{len(report.errors)} with an error; {report.seconds:.1f} s"
          + (f" ({report.items_per_minute:.1f} items/min)" if report.computed else ""))
    print(f"wrote {', '.join(p.name for p in report.files)} to {args.out}")
    return 0
