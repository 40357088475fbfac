"""``latentshift study create | serve | analyze``: the blinded reader study."""

from __future__ import annotations

import argparse
import json
import logging

from ..options import DEFAULTS, FRAME_SOURCES, option_spec

logger = logging.getLogger(__name__)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("study")
    commands = parser.add_subparsers(dest="study_command", required=True, metavar="STEP")
    create = commands.add_parser("create", help="precompute both presentations of every case",
                                 description="CASES.csv columns: path, target, truth (positive/negative).")
    create.add_argument("--cases", required=True, help="CSV with the columns path, target, truth")
    create.add_argument("--out", required=True, help="new study folder")
    create.add_argument("--classifier", help="classifier id (default: embedded)")
    create.add_argument("--autoencoder", help="autoencoder id (default: embedded)")
    create.add_argument("--manifest", help="another weights manifest (default: the package's)")
    create.add_argument("--balance", type=int, help="keep N true positives and N false positives")
    create.add_argument("--positives", type=int,
                        help="keep N predicted positives, false positives first up to N/2 (if too few for --balance)")
    create.add_argument("--seed", type=int, default=0, help="seed of --balance and of the reading orders")
    create.add_argument("--frames", type=int, default=DEFAULTS.frames, help="GIF frames")
    create.add_argument("--ig-steps", type=int, default=DEFAULTS.ig_steps, help="Integrated-Gradients steps")
    create.add_argument("--frames-from", default=DEFAULTS.frames_from, choices=FRAME_SOURCES,
                        help=option_spec("frames_from")["help"] + " (reconstruction: as in the paper's reader study)")
    create.set_defaults(func=run_create, default_log_level=logging.INFO)
    serve = commands.add_parser("serve", help="serve the reading page and /study_next, /study_rate")
    serve.add_argument("study_dir")
    serve.add_argument("--port", type=int, default=7861, help="port (default 7861)")
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1; 0.0.0.0 = network)")
    serve.set_defaults(func=run_serve)
    analyze = commands.add_parser("analyze", help="paired statistics, κ, rating plot, CSV export")
    analyze.add_argument("study_dir")
    analyze.add_argument("--json", action="store_true", help="print the whole analysis as JSON")
    analyze.add_argument("--csv", help="export every rating to this CSV file")
    analyze.set_defaults(func=run_analyze)


def run_create(args: argparse.Namespace) -> int:
    from ..options import ExplainOptions
    from ..study.create import create_study

    options = ExplainOptions(frames=args.frames, ig_steps=args.ig_steps, frames_from=args.frames_from)
    manifest = create_study(args.cases, args.out, classifier=args.classifier, autoencoder=args.autoencoder,
                            balance=args.balance, positives=args.positives, seed=args.seed, options=options,
                            manifest_path=args.manifest, settings=args.settings)
    outcomes = [case["outcome"] for case in manifest["cases"]]
    print(f"study of {len(outcomes)} cases in {args.out} ({', '.join(f'{o}: {outcomes.count(o)}' for o in sorted(set(outcomes)))}); "
          f"serve it with: latentshift study serve {args.out}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from ..study.app import serve

    serve(args.study_dir, host=args.host, port=args.port)
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    from ..study.analyze import analyze

    result = analyze(args.study_dir, csv_path=args.csv)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['n_ratings']} ratings by {result['n_readers']} readers")
    for scope, groups in [("pooled", result["pooled"]), *result["readers"].items()]:
        for key, s in groups.items():
            if s["n"]:
                sd = "n/a" if s["sd"] is None else f"{s['sd']:.2f}"
                print(f"{scope:>10} {key}: latent_shift − maps = {s['mean_diff']:+.2f} ± {sd} (n = {s['n']}), "
                      f"p t-test = {s['p_ttest']}, p Wilcoxon = {s['p_wilcoxon']}")
    print(f"quadratic-weighted κ: {result['kappa']['mean']}; plot: {result['plot']}")
    return 0
