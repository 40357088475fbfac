"""``python -m latentshift_research bench`` and ``python -m latentshift_research loadtest``: the tools, with their own flags.

Each forwards everything after its name to the tool's own parser (``python -m latentshift_research bench
--help`` lists the benchmark's flags); ``python -m latentshift_research.tools.bench`` is the same.
"""

from __future__ import annotations

import argparse
import importlib

TOOLS = {"bench": "latentshift_research.tools.bench", "loadtest": "latentshift_research.tools.loadtest"}


def add_cli(subparsers) -> None:
    for name, module in TOOLS.items():
        parser = subparsers.add_parser(name, add_help=False, prefix_chars="\0")
        parser.add_argument("tool_args", nargs=argparse.REMAINDER)
        parser.set_defaults(func=lambda args, module=module, name=name: _run(module, name, args.tool_args))


def _run(module: str, name: str, argv: list[str]) -> int:
    tool = importlib.import_module(module)
    return int(tool.main(list(argv), prog=f"python -m latentshift_research {name}") or 0)
