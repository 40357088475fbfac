"""Command line of the research code: ``python -m latentshift_research COMMAND ...`` (the same as the
console script ``latentshift-research``).

The one registry of commands is :data:`COMMANDS`, built like the runtime's (:mod:`latentshift.cli`):
each command's module adds its sub-parser through ``add_cli(subparsers)``; only the module of the
command given is imported. User errors (:class:`~latentshift.errors.LatentShiftError`) end with exit
code 2 and one line on stderr. Every output path is an argument: nothing is written into a checkout
unless a command is told to.
"""

from __future__ import annotations

import argparse
import logging
import sys

from latentshift.cli import add_commands
from latentshift.errors import LatentShiftError
from latentshift.runtime import set_allocator_tunables

PROG = "python -m latentshift_research"

#: Command -> (the module whose ``add_cli(subparsers)`` adds its sub-parser, its line in ``--help``).
COMMANDS = {
    "train": ("latentshift_research.cli.training", "train a demo model on the chest X-ray folder"),
    "train-adult": ("latentshift_research.cli.training",
                    "train the adult multi-label classifier (demo-adult-classifier)"),
    "train-adult-cardiomegaly": ("latentshift_research.cli.training", "train the box-supervised adult "
                                 "Cardiomegaly classifier (demo-adult-cardiomegaly)"),
    "evaluate-models": ("latentshift_research.cli.training",
                        "recompute the demo models' figures from the shipped weights"),
    "evaluate-maps": ("latentshift_research.cli.evaluation",
                      "IoU and pointing game of the attribution maps on NIH boxes"),
    "evaluate-counterfactuals": ("latentshift_research.cli.evaluation",
                                 "the Latent Shift frames judged as counterfactuals, per frame mode"),
    "bench": ("latentshift_research.cli.tools", "benchmark: ours vs the one-λ-at-a-time baseline, per stage"),
    "loadtest": ("latentshift_research.cli.tools", "load test of a running app (loopback addresses only); "
                 "--soak MINUTES: the soak"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser: with ``argv``, the full sub-parser of the command it names only; without, every command's."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Research commands beside latentshift: training recipes, evaluations, "
                               "the benchmark and the load test (research demo, not for clinical use).")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v) or debug messages (-vv); by default only warnings "
                             "(training and evaluation log progress by default)")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), COMMANDS, argv)
    return parser


def entry() -> None:
    """The console script and ``python -m latentshift_research``: the runtime's allocator settings, then :func:`main`."""
    set_allocator_tunables()
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    quiet = getattr(args, "default_log_level", logging.WARNING)
    levels = {0: quiet, 1: min(quiet, logging.INFO)}
    logging.basicConfig(level=levels.get(args.verbose, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LatentShiftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
