"""``latentshift results list | check | delete | sweep``: the app's result store (see docs/app.md, "Results").

The store and retention come from ``--results-dir`` / ``--results-days`` (defaults
``$LATENTSHIFT_RESULTS_DIR`` / ``$LATENTSHIFT_RESULTS_DAYS``, as for ``latentshift app``).
"""

from __future__ import annotations

import argparse
import datetime
import json


def add_cli(subparsers) -> None:
    from ..app.serving import add_result_arguments

    parser = subparsers.add_parser("results", help="the app's stored results: list, check, delete, sweep")
    add_result_arguments(parser)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="stored results, newest first")
    listing.add_argument("--all", action="store_true", help="also expired and deleted ones (tombstones)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    actions.add_parser("check", help="verify every stored file against its record (exit 1 on a problem)")
    delete = actions.add_parser("delete", help="delete results; their links then say so")
    delete.add_argument("ids", nargs="+", metavar="ID")
    actions.add_parser("sweep", help="remove the results past their retention now")
    parser.set_defaults(func=run_results)


def _day(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def run_results(args: argparse.Namespace) -> int:
    from ..app.serving import ResultSettings, with_result_flags

    args.settings = with_result_flags(args.settings, args)
    store = ResultSettings.from_command_line(args).open_store()
    if args.action == "list":
        rows = store.list(("ok", "expired", "deleted") if args.all else ("ok",))
        for result_id, created, expires, state, size in rows:
            if args.json:
                print(json.dumps({"id": result_id, "created": created, "expires": expires, "state": state,
                                  "bytes": size}))
            else:
                print(f"{result_id}  {state:7}  created {_day(created)}  expires {_day(expires)}  {size / 1e6:.2f} MB")
        print(f"{len(rows)} result(s), {store.size_bytes() / 1e6:.1f} MB under {store.root}")
        return 0
    if args.action == "check":
        problems = store.check()
        for kind, entries in problems.items():
            for entry in entries:
                print(f"{kind}: {entry}")
        bad = sum(len(v) for k, v in problems.items() if k != "unindexed")
        print(f"{len(store.list())} result(s) checked: {'no problem' if not bad else f'{bad} problem(s)'}")
        return 1 if bad else 0
    if args.action == "delete":
        missing = [result_id for result_id in args.ids if not store.delete(result_id)]
        for result_id in missing:
            print(f"no stored result {result_id}")
        print(f"deleted {len(args.ids) - len(missing)} result(s)")
        return 1 if missing else 0
    expired = store.sweep()
    print(f"swept {len(expired)} expired result(s)")
    return 0
