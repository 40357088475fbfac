"""Flags shared by the commands that run several classifiers (compare, batch)."""

from __future__ import annotations

import argparse


def add_multi_model_arguments(parser: argparse.ArgumentParser, classifiers_help: str) -> None:
    """--classifiers A,B, --autoencoder ID, --manifest FILE, --device cpu|cuda."""
    parser.add_argument("--classifiers", default="", help=f"comma-separated classifier ids ({classifiers_help})")
    parser.add_argument("--autoencoder", help="autoencoder id shared by all (default: embedded)")
    parser.add_argument("--manifest", help="your own manifest, merged over the package's one")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
