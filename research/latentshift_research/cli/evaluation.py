"""``python -m latentshift_research evaluate-maps`` (IoU and pointing game of the attribution maps on NIH boxes) and
``python -m latentshift_research evaluate-counterfactuals`` (the Latent Shift frames judged as counterfactuals, per frame mode)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..evaluation.maps import METHODS, run_evaluate_maps
from ..evaluation import counterfactuals, maps
from latentshift.options import FRAME_SOURCES


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate-maps", description=maps.__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
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

    parser = subparsers.add_parser(
        "evaluate-counterfactuals", description=counterfactuals.__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder with labels.csv, images/ and masks/ "
                        "(default: $LATENTSHIFT_DATA or shared/data/cxr beside the checkout)")
    parser.add_argument("--split", default="test", help="split of labels.csv (default: test)")
    parser.add_argument("--limit", type=int, default=None, help="judge at most N images per task (quick runs)")
    parser.add_argument("--tasks", default=",".join(t.name for t in counterfactuals.TASKS),
                        help="comma-separated subset of the tasks (classifier-finding)")
    parser.add_argument("--modes", default=",".join(FRAME_SOURCES), help="frame modes to compare")
    parser.add_argument("--out", type=Path, default=Path("out/counterfactuals"),
                        help="folder for counterfactuals.md, counterfactuals.json and the figures")
    parser.set_defaults(func=run_evaluate_counterfactuals, default_log_level=logging.INFO)


def run_evaluate_counterfactuals(args: argparse.Namespace) -> int:
    from latentshift.errors import OptionsError
    from ..evaluation.counterfactual_report import markdown_table, write_report

    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    known = {t.name: t for t in counterfactuals.TASKS}
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not names or any(n not in known for n in names):
        raise OptionsError(f"--tasks: choose from {', '.join(known)}")
    if not modes or any(m not in FRAME_SOURCES for m in modes):
        raise OptionsError(f"--modes: choose from {', '.join(FRAME_SOURCES)}")
    runs = counterfactuals.evaluate_counterfactuals(args.data, args.split, args.limit,
                                                    [known[n] for n in names], modes)
    files = write_report(runs, args.split, args.out)
    print(markdown_table(runs, args.split))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
