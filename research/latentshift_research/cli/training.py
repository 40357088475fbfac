"""``python -m latentshift_research train`` and ``python -m latentshift_research evaluate-models``: the command-line face of training."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from latentshift.errors import LatentShiftError
from latentshift.weights.manifest import PACKAGE_ROOT

from ..training.data import (DATA_ENV, load_data)
from ..training.train import (AE_ID, DEFAULT_CANDIDATES, DEFAULT_EPOCHS, DEFAULT_MIXUP, load_demo_autoencoder, train_autoencoder, train_classifier)
from ..training.guard import run_recipe as run_guard_recipe
from ..evaluation.demo_models import (format_results, evaluate_models)

logger = logging.getLogger(__name__)

DEFAULT_GUARD_EPOCHS = 8

def _cmd_train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = args.epochs or DEFAULT_EPOCHS.get(args.model)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise LatentShiftError("--device cuda, but no CUDA device is available")
    if args.model == "guard":
        run_guard_recipe(args.data, Path(args.out), epochs=args.epochs or DEFAULT_GUARD_EPOCHS, seed=args.seed)
    elif args.model == "autoencoder":
        data = load_data(args.data, per_group=args.limit)
        train_autoencoder(data, Path(args.out), epochs=epochs, device=args.device, seed=args.seed,
                          limit=args.limit, batch_size=args.batch_size or 32)
    else:
        data = load_data(args.data, per_group=args.limit)  # NIH only for the out-of-domain report
        ae = None
        if args.autoencoder.lower() != "none":
            if not Path(args.autoencoder).is_file():
                raise LatentShiftError(f"autoencoder weights not found: {args.autoencoder} (train the "
                                       "autoencoder first, or pass --autoencoder none)")
            ae = load_demo_autoencoder(args.autoencoder)
        candidates = args.candidates
        if candidates is None:
            candidates = DEFAULT_CANDIDATES if ae is not None else 1
        train_classifier(data, Path(args.out), epochs=epochs, device=args.device, seed=args.seed,
                         candidates=candidates, limit=args.limit, batch_size=args.batch_size or 32,
                         autoencoder=ae, mixup=args.mixup)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    results = evaluate_models(args.data, device=args.device, limit=args.limit, shift_subset=args.shift_subset,
                              gif_dir=Path(args.gifs) if args.gifs else None, n_gifs=args.n_gifs,
                              skip_shift=args.no_shift)
    print(format_results(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


#: Adult classifier recipes with their own flags (``python -m latentshift_research train-adult --help``): command -> module.
ADULT_RECIPES = {
    "train-adult": "latentshift_research.training.adult",
    "train-adult-cardiomegaly": "latentshift_research.training.adult_cardiomegaly",
}


def _add_adult_recipes(subparsers) -> None:
    import importlib

    for name, module in ADULT_RECIPES.items():
        parser = subparsers.add_parser(name, add_help=False, prefix_chars="\0")
        parser.add_argument("recipe_args", nargs=argparse.REMAINDER)
        parser.set_defaults(func=lambda args, module=module: int(importlib.import_module(module).main(
            list(args.recipe_args)) or 0), default_log_level=logging.INFO)


def add_cli(subparsers) -> None:
    _add_adult_recipes(subparsers)
    p = subparsers.add_parser("train", description="Train the demo autoencoder or pneumonia classifier "
                                          "(research demo, not for clinical use).")
    p.add_argument("model", choices=["autoencoder", "classifier", "guard"],
                   help="autoencoder, pneumonia classifier, or the domain guard (pediatric / adult / not a CXR)")
    p.add_argument("--data", default=None, help=f"chest X-ray folder with labels.csv (default: ${DATA_ENV} "
                                                f"or shared/data/cxr in this folder or above it)")
    p.add_argument("--out", required=True, help="output folder for <id>.safetensors and <id>.metrics.json")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs (default: {DEFAULT_EPOCHS['autoencoder']} autoencoder, "
                        f"{DEFAULT_EPOCHS['classifier']} classifier)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use at most N images per split (quick test runs)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--autoencoder", default=str(PACKAGE_ROOT / "embedded" / f"{AE_ID}.safetensors"),
                   help="classifier only: demo autoencoder weights whose reconstructions replace half of "
                        "the training images ('none' to disable; default: the shipped demo autoencoder)")
    p.add_argument("--mixup", type=float, default=DEFAULT_MIXUP,
                   help=f"classifier only: mixup Beta(a, a) parameter (default {DEFAULT_MIXUP}; 0 disables)")
    p.add_argument("--candidates", type=int, default=None,
                   help=f"classifier only: train seeds SEED … SEED+N-1 and keep the one whose Latent Shift works "
                        f"best on the validation split (default {DEFAULT_CANDIDATES}; 1 with --autoencoder none)")
    p.set_defaults(func=_cmd_train, default_log_level=logging.INFO)

    e = subparsers.add_parser("evaluate-models")
    e.add_argument("--data", default=None, help="chest X-ray folder with labels.csv")
    e.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    e.add_argument("--limit", type=int, default=None, help="at most N images per split (quick check)")
    e.add_argument("--shift-subset", type=int, default=None,
                   help="Latent Shift figures on a seeded random subset of N TPs and N TNs (default: all)")
    e.add_argument("--no-shift", action="store_true", help="skip the Latent Shift figures")
    e.add_argument("--gifs", default=None, help="folder for example explanations (GIFs / PNG strips)")
    e.add_argument("--n-gifs", type=int, default=12)
    e.add_argument("--json", default=None, help="also write the figures as JSON to this path")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.set_defaults(func=_cmd_evaluate, default_log_level=logging.INFO)
