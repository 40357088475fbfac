"""``latentshift app``: serve the Gradio app (the same as ``python app.py``)."""

from __future__ import annotations

import argparse


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("app", add_help=False, prefix_chars="\0")
    parser.add_argument("app_args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run_app)


def run_app(args: argparse.Namespace) -> int:
    from ..app.serving import parse_args, prepare_environment

    command_line = parse_args(list(args.app_args), args.settings)
    prepare_environment(command_line)
    from ..app.server import main

    main(command_line)
    return 0
