"""``python -m latentshift weights list|fetch|verify``: the manifest's models on this machine.

* ``list``: one row per model: id, kind, source, cached?, verified?, status and reason.
* ``fetch [ID...]``: download (or find in the cache) and verify; default: every Hub/URL
  model that can be verified (unknown hashes only with ``--allow-unverified``).
* ``verify [ID...]``: recompute the sha256 of every local copy (repository files and
  cached downloads) and compare it with the manifest; never downloads.
* ``pin ID [--to FILE]``: download the model's file once and record its sha256 and size (in the
  manifest that lists it, or as an entry of FILE).
"""

from __future__ import annotations

import argparse
import logging
import urllib.parse
from pathlib import Path

from ..weights import hub
from ..errors import LatentShiftError, WeightsError
from ..weights import Manifest, ModelEntry, fetch_weights, local_file_path, model_status, sha256_of

logger = logging.getLogger(__name__)


def add_cli(subparsers) -> None:
    """Register ``weights list|fetch|verify`` on the top-level sub-parsers."""
    parser = subparsers.add_parser("weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=None,
                        help="your own manifest, merged over the package's (default: $LATENTSHIFT_EXTRA_MANIFEST)")
    commands = parser.add_subparsers(dest="weights_command", required=True, metavar="ACTION")

    list_parser = commands.add_parser("list", help="show every model and whether it is available here")
    list_parser.add_argument("--no-network", action="store_true",
                             help="do not probe the Hub for models that are not cached")
    list_parser.add_argument("--allow-unverified", action="store_true", default=None,
                             help="count models without a known hash as loadable")
    list_parser.set_defaults(func=run_list)

    fetch_parser = commands.add_parser("fetch", help="download and verify models (default: all Hub/URL models)")
    fetch_parser.add_argument("ids", nargs="*", metavar="ID")
    fetch_parser.add_argument("--allow-unverified", action="store_true", default=None,
                              help="accept models whose hash is unknown (same as LATENTSHIFT_ALLOW_UNVERIFIED=1)")
    fetch_parser.set_defaults(func=run_fetch)

    verify_parser = commands.add_parser("verify", help="recompute the sha256 of local copies")
    verify_parser.add_argument("ids", nargs="*", metavar="ID")
    verify_parser.set_defaults(func=run_verify)
    _add_manifest_editors(commands)

    store_parser = commands.add_parser(
        "store-check", help="load every loadable model through the model store; print loads and peak memory")
    store_parser.add_argument("--max-models", type=int, default=None,
                              help="store bound (default $LATENTSHIFT_MAX_MODELS or 6)")
    store_parser.add_argument("--rounds", type=int, default=2, help="passes over the models (default 2)")
    store_parser.set_defaults(func=run_store_check)


def _add_manifest_editors(commands) -> None:
    """``weights pin`` and ``weights add``: the actions that write a manifest."""

    pin_parser = commands.add_parser(
        "pin", help="download a model once and record its sha256 and size (e.g. resnetae-101-elastic)")
    pin_parser.add_argument("model_id", metavar="MODEL_ID")
    pin_parser.add_argument("--to", dest="target_manifest", default=None, metavar="FILE",
                            help="write the pinned entry into this manifest of yours (created if missing; use it "
                                 "with --manifest FILE or $LATENTSHIFT_EXTRA_MANIFEST) instead of updating the "
                                 "manifest that lists the model (weights_manifest.json in a checkout)")
    pin_parser.set_defaults(func=run_pin)

    add_parser = commands.add_parser(
        "add", help="add a torchxrayvision-format classifier of the Hub to your manifest (sha256 from the download)")
    add_parser.add_argument("repo_id", metavar="REPO_ID", help="e.g. torchxrayvision/densenet121-res224-nih")
    add_parser.add_argument("--revision", required=True, help="the 40-hex commit to pin")
    add_parser.add_argument("--filename", default="model.pt", help="file in the repository (default model.pt)")
    add_parser.add_argument("--id", dest="model_id", help="model id (default: the repository's name)")
    add_parser.add_argument("--labels", help="comma-separated output names (default: torchxrayvision's 18)")
    add_parser.add_argument("--population", choices=["adult", "pediatric"], default="adult")
    add_parser.add_argument("--to", dest="target_manifest", default=None, metavar="MY_MODELS.json",
                            help="your manifest to add it to, created if missing (default: --manifest, "
                                 "else my_models.json here)")
    add_parser.set_defaults(func=run_add)

def describe_source(entry: ModelEntry) -> str:
    """Short text for the SOURCE column."""
    source = entry.source
    if entry.source_type == "hub":
        revision = source.get("revision") or "unpinned"
        return f"hub:{source.get('repo_id')}@{revision[:7]}"
    if entry.source_type == "url":
        parts = urllib.parse.urlsplit(source.get("url", ""))
        name = Path(parts.path).name
        if len(name) > 30:
            name = name[:14] + "…" + name[-14:]
        return f"url:{parts.netloc}/…/{name}"
    if entry.source_type == "file":
        return f"file:{source.get('path')}"
    return entry.source_type or "?"


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _selected(manifest: Manifest, ids: list[str]) -> list[ModelEntry]:
    """The named entries (all raise on an unknown id before any work), or all of them."""
    return [manifest.get(model_id) for model_id in ids] if ids else list(manifest)


def _allow_unverified(args: argparse.Namespace) -> bool:
    """``--allow-unverified``, else the settings' (``$LATENTSHIFT_ALLOW_UNVERIFIED``)."""
    return args.settings.with_flags(allow_unverified=args.allow_unverified).allow_unverified


def run_list(args: argparse.Namespace) -> int:
    manifest = Manifest.for_user(args.manifest, args.settings)
    rows = [("ID", "KIND", "SOURCE", "CACHED", "VERIFIED", "STATUS")]
    for entry in manifest:
        status = model_status(entry, check_network=not args.no_network,
                              allow_unverified=_allow_unverified(args))
        state = "available" if status.available else "unavailable"
        rows.append((entry.id, entry.kind, describe_source(entry), _yes_no(status.cached),
                     _yes_no(status.verified), f"{state}: {status.reason}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    manifest = Manifest.for_user(args.manifest, args.settings)
    if args.ids:
        entries = _selected(manifest, args.ids)
    else:
        entries = [e for e in manifest if e.source_type in ("hub", "url")]
    failures = []
    for entry in entries:
        if not args.ids and not entry.sha256 and not args.allow_unverified:
            print(f"skipped  {entry.id}: hash unknown (use --allow-unverified to fetch it)")
            continue
        try:
            fetched = fetch_weights(entry, allow_unverified=_allow_unverified(args))
        except LatentShiftError as exc:
            failures.append(entry.id)
            print(f"FAILED   {entry.id}: {exc}")
            continue
        label = "verified" if fetched.verified else "UNVERIFIED"
        print(f"ok       {entry.id}: {fetched.path} ({label})")
    if failures:
        raise WeightsError(f"{len(failures)} of {len(entries)} models could not be fetched: {', '.join(failures)}")
    return 0


def local_copy(entry: ModelEntry) -> Path | None:
    """The local file of an entry (repository file or cached download), if there is one."""
    if entry.source_type == "file":
        path = local_file_path(entry)
        return path if path.is_file() else None
    return hub.cached_path(entry)


def run_verify(args: argparse.Namespace) -> int:
    manifest = Manifest.for_user(args.manifest, args.settings)
    entries = _selected(manifest, args.ids)
    failures = []
    for entry in entries:
        path = local_copy(entry)
        if path is None:
            print(f"missing  {entry.id}: no local copy")
            if args.ids:
                failures.append(entry.id)
            continue
        actual = sha256_of(path)
        size = path.stat().st_size
        if not entry.sha256:
            print(f"unknown  {entry.id}: sha256 {actual} ({size} bytes); the manifest has no hash to compare")
        elif actual == entry.sha256.lower() and (entry.size is None or entry.size == size):
            print(f"ok       {entry.id}: sha256 {actual}")
        else:
            failures.append(entry.id)
            print(f"MISMATCH {entry.id}: {path}: expected sha256 {entry.sha256} ({entry.size} bytes), "
                  f"got {actual} ({size} bytes)")
    if failures:
        raise WeightsError(f"{len(failures)} of {len(entries)} models failed verification: {', '.join(failures)}")
    return 0


def run_pin(args: argparse.Namespace) -> int:
    """Download one model's file and record its sha256 and size."""
    from ..weights.pinning import defining_manifest, pin_model

    entry = Manifest.for_user(args.manifest, args.settings).get(args.model_id)
    whole = args.target_manifest is not None
    target = Path(args.target_manifest) if whole else defining_manifest(entry.id, args.manifest, args.settings)
    pinned = pin_model(entry, target, whole_entry=whole)
    state = "already pinned, same file" if pinned.unchanged else "pinned"
    print(f"{state} {pinned.model_id}: sha256 {pinned.sha256}, {pinned.size} bytes ({pinned.path}) -> {pinned.manifest}")
    if whole:
        print(f"use it with --manifest {pinned.manifest} (CLI and app) or LATENTSHIFT_EXTRA_MANIFEST on a Space")
    return 0


def run_store_check(args: argparse.Namespace) -> int:
    """Cycle through the loadable models with a bounded store and report what it cost."""
    from ..weights.store import ModelStore, cycle_through_models

    if args.max_models is not None and args.max_models < 1:
        raise LatentShiftError("--max-models must be at least 1")
    store = ModelStore(Manifest.for_user(args.manifest, args.settings),
                       settings=args.settings.with_flags(max_models=args.max_models))
    report = cycle_through_models(store, rounds=max(1, args.rounds))
    print(f"models loadable here: {len(report['models'])} ({', '.join(report['models'])})")
    print(f"store bound {report['max_models']}, {report['rounds']} rounds: {report['loads_from_disk']} loads "
          f"from disk, {len(report['in_memory'])} in memory at the end ({', '.join(report['in_memory'])})")
    for model_id, reason in report["failed"].items():
        print(f"could not load {model_id}: {reason}")
    print(f"peak resident memory of this process: {report['peak_rss_before_mib']} MiB before loading "
          f"(imports), {report['peak_rss_mib']} MiB after")
    return 1 if report["failed"] else 0


def run_add(args: argparse.Namespace) -> int:
    """Download a Hub classifier at a pinned commit and add it, with its sha256 and size, to a manifest."""
    import json

    path = hub.download_pinned(args.repo_id, args.filename, args.revision)
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else xrv_default_labels()
    entry = {"id": args.model_id or args.repo_id.split("/")[-1], "kind": "classifier",
             "architecture": "xrv-densenet121", "labels": labels, "resolution": 224, "input_range": [-1024, 1024],
             "format": "torch-pickle", "population": args.population,
             "source": {"type": "hub", "repo_id": args.repo_id, "filename": args.filename,
                        "revision": args.revision, "sha256": sha256_of(path), "size": path.stat().st_size},
             "description": f"added with latentshift weights add from {args.repo_id}@{args.revision[:12]}"}
    target = Path(args.target_manifest or args.manifest or "my_models.json")
    data = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {"format_version": 1, "models": []}
    data["models"] = [m for m in data.get("models", []) if m.get("id") != entry["id"]] + [entry]
    target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"added {entry['id']} ({args.repo_id}@{args.revision[:12]}, sha256 {entry['source']['sha256'][:16]}…, "
          f"{entry['source']['size']} bytes, {len(labels)} outputs) to {target}")
    print(f"use it with --manifest {target} (CLI and app)")
    return 0


def xrv_default_labels() -> list[str]:
    """torchxrayvision's 18 output names, the order of its DenseNet classifiers."""
    import torchxrayvision as xrv

    return list(xrv.datasets.default_pathologies)
