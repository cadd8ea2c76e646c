"""``signals data …``: the pipeline's commands, added to ``signals`` by :func:`register`
(``signals/cli.py``).

    signals data reuters [--reuters-dir DIR] [--out DIR] [--force]
    signals data build --config pipeline/configs/example.yaml [--force] [--views]
    signals data stats DATASET_DIR [--out DIR]
    signals data import INPUT [--kind K] [--source NAME] --out FILE.jsonl
        (K: rss, eml, mbox, jsonl, json (one JSON array of records), csv, links,
         newsletter-links)
    signals data show DATASET_DIR

Each command returns an exit status; errors the user can fix (a bad config field, a
missing file) raise ``ValueError``/``FileNotFoundError``, which ``signals`` turns into a
one-line message.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # the commands import their modules when run, to start fast
    from pipeline.dataset import DatasetManifest

log = logging.getLogger(__name__)

IMPORT_KINDS = ("rss", "eml", "mbox", "jsonl", "json", "csv", "links", "newsletter-links")
"""``links``: a CSV/JSONL list of article URLs (chosen by itself for a ``.csv``/``.jsonl``
file with a url column and no id); ``newsletter-links``: one item per story an ``.eml``
newsletter links to."""
_SUFFIX_KINDS = {".eml": "eml", ".mbox": "mbox", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".json": "json",
                 ".csv": "csv", ".xml": "rss", ".rss": "rss", ".atom": "rss", ".rdf": "rss"}


def _resolve_dataset(name_or_dir: str) -> Path:
    """A dataset directory given as a path, or as a name under the datasets dir."""
    from pipeline.settings import Paths

    path = Path(name_or_dir)
    if (path / "manifest.json").is_file():
        return path
    named = Paths().datasets_dir / name_or_dir
    if (named / "manifest.json").is_file():
        return named
    also = f" (nor at {named})" if named != path else ""
    raise FileNotFoundError(f"no dataset at {path}{also}: missing manifest.json")


def _print_splits(manifest: DatasetManifest) -> None:
    print(f"{'split':<10}{'articles':>10}{'labelled':>10}{'signals':>9}{'rate':>8}  dates")
    for name, split in manifest.splits.items():
        rate = split.signal_rate
        print(f"{name:<10}{split.count:>10}{split.labelled:>10}{split.signals:>9}"
              f"{'–' if rate is None else f'{rate:.3f}':>8}  {split.date_from} .. "
              f"{split.date_to}")


def cmd_data_reuters(args: argparse.Namespace) -> int:
    from pipeline.reuters import DATASET_NAME, build_dataset
    from pipeline.settings import Paths

    paths = Paths()
    out = args.out or paths.datasets_dir / DATASET_NAME
    manifest = build_dataset(args.reuters_dir or paths.reuters_dir, out, force=args.force)
    print(f"dataset {out}")
    print(f"{'split':<10}{'articles':>10}{'signals':>10}{'rate':>8}  dates")
    for name, split in manifest.splits.items():
        print(f"{name:<10}{split.count:>10}{split.signals:>10}{split.signal_rate:>8.3f}"
              f"  {split.date_from} .. {split.date_to}")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from pipeline.build import build_dataset
    from pipeline.build_config import load_pipeline_config

    config = load_pipeline_config(args.config)
    if args.views:
        config.views.enabled = True
    if args.datasets_dir:
        config.datasets_dir = args.datasets_dir
    manifest = build_dataset(config, force=args.force)
    counts = manifest.counts
    print(f"dataset {config.output_dir()} (version {manifest.version})")
    for name, source in manifest.sources.items():
        print(f"  source {name} ({source['kind']}): {source['articles']} articles, "
              f"{source['skipped']} skipped, {len(source['failed_inputs'])} inputs failed")
    print(f"  read {counts['read']}, dropped {counts['dedupe']['exact']} exact + "
          f"{counts['dedupe']['near']} near duplicates, {counts['empty_skipped']} empty, "
          f"{counts['undated_skipped']} undated; written {counts['written']}")
    ran = [name for name, stage in manifest.stages.items() if stage["ran"]]
    print(f"  stages run: {', '.join(ran) or 'none'}")
    _print_splits(manifest)
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from pipeline.stats import write_stats_report

    directory = _resolve_dataset(args.dataset)
    paths = write_stats_report(directory, args.out)
    print(paths["markdown"].read_text(encoding="utf-8"), end="")
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from pipeline.dataset import read_manifest

    directory = _resolve_dataset(args.dataset)
    manifest = read_manifest(directory)
    created = manifest.created_at.isoformat() if manifest.created_at else None
    print(f"dataset {directory} (version {manifest.version or '–'}, created {created})")
    print(f"label rule: {manifest.label_rule}")
    if manifest.stages:
        print("stages: " + ", ".join(f"{n}={'ran' if s['ran'] else 'skipped'}"
                                     for n, s in manifest.stages.items()))
    _print_splits(manifest)
    if manifest.views:
        print("views: " + ", ".join(sorted(
            entry["file"] for split in manifest.views["splits"].values()
            for entry in split.values())))
    return 0


def detect_kind(target: str) -> str:
    """The reader for ``target``: a URL is a feed, a file goes by its suffix."""
    if target.startswith(("http://", "https://")):
        return "rss"
    kind = _SUFFIX_KINDS.get(Path(target).suffix.lower())
    if kind is None:
        raise ValueError(f"cannot tell what {target} is from its name; pass --kind "
                         f"({', '.join(IMPORT_KINDS)})")
    return kind


def cmd_data_import(args: argparse.Namespace) -> int:
    from pipeline.emails import read_eml, read_mbox
    from pipeline.feeds import FeedError, read_feed
    from pipeline.records import drop_unclassifiable, read_csv, read_json_array, read_jsonl
    from pipeline.dataset import write_jsonl

    kind = args.kind or detect_kind(args.input)
    if args.kind is None and kind in ("csv", "jsonl") and Path(args.input).is_file():
        from pipeline.link_sources import is_link_list

        if is_link_list(args.input):  # url,date[,label] rows, not article records
            kind = "links"
    is_url = args.input.startswith(("http://", "https://"))
    source = args.source or (urlsplit(args.input).hostname if is_url else Path(args.input).stem)
    if kind == "rss":
        if is_url:
            try:
                result = read_feed(args.input, source, timeout_s=args.timeout,
                                   allow_networks=args.allow_network)
            except FeedError as exc:
                raise RuntimeError(str(exc)) from exc
        else:
            result = read_feed(Path(args.input).read_bytes(), source)
    else:
        if not Path(args.input).is_file():
            raise FileNotFoundError(f"no such file: {args.input}")
        from pipeline import link_sources

        reader = {"eml": read_eml, "mbox": read_mbox,
                  "jsonl": read_jsonl, "json": read_json_array,
                  "csv": read_csv,
                  "links": link_sources.read_link_list,
                  "newsletter-links": link_sources.read_newsletter_links}[kind]
        result = reader(args.input, source)
    if kind not in ("links", "newsletter-links"):  # a link is the content of a link list:
        drop_unclassifiable(result, args.input)  # the link stage fills it in
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = args.out.with_name(f".{args.out.name}.tmp")
    write_jsonl(staging, result.articles)
    staging.replace(args.out)
    print(f"{args.input} ({kind}): {len(result.articles)} articles written to {args.out}, "
          f"{result.skipped} items skipped, {len(result.problems)} problems")
    for problem in result.problems:
        print(f"  - {problem}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``data reuters|build|stats|show|import`` to ``signals``."""
    data = commands.add_parser("data", help="datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    reuters = data_commands.add_parser(
        "reuters", help="import Reuters-21578 (acq = signal) with the temporal split")
    reuters.add_argument("--reuters-dir", type=Path,
                         help="folder of reut2-*.sgm (default: $SIGNALS_REUTERS_DIR or "
                         "../shared/data/reuters21578)")
    reuters.add_argument("--out", type=Path, help="dataset directory "
                         "(default: $SIGNALS_DATA_DIR/datasets/reuters-acq)")
    reuters.add_argument("--force", action="store_true", help="rebuild even if up to date")
    reuters.set_defaults(func=cmd_data_reuters)

    build = data_commands.add_parser(
        "build", help="build a dataset from a pipeline config (sources → dedupe → stages → "
        "temporal splits + views)")
    build.add_argument("--config", type=Path, required=True,
                       help="YAML pipeline config (fields of pipeline.build_config.PipelineConfig)")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.add_argument("--views", action="store_true",
                       help="also write the SFT/DPO/reward views (needs the base model)")
    build.add_argument("--datasets-dir", type=Path,
                       help="where datasets go (default: config, else $SIGNALS_DATA_DIR/datasets)")
    build.set_defaults(func=cmd_data_build)

    stats = data_commands.add_parser(
        "stats", help="per-split counts, signal rate by month, label agreement (JSON, "
        "markdown, PNG)")
    stats.add_argument("dataset", help="dataset directory, or a name under the datasets dir")
    stats.add_argument("--out", type=Path, help="report directory (default: the dataset's)")
    stats.set_defaults(func=cmd_data_stats)

    show = data_commands.add_parser("show", help="print a dataset's manifest summary")
    show.add_argument("dataset", help="dataset directory, or a name under the datasets dir")
    show.set_defaults(func=cmd_data_show)

    importer = data_commands.add_parser(
        "import", help="one-off: a feed URL/file, .eml, mbox, JSONL, JSON array or CSV into a "
        "JSONL of "
        "articles, with counts and skipped items")
    importer.add_argument("input", help="feed URL or file path")
    importer.add_argument("--kind", choices=IMPORT_KINDS,
                          help="reader to use (default: from the URL or file suffix; a CSV/"
                          "JSONL with a url column and no id is a link list: 'links'); "
                          "'newsletter-links': one item per story an .eml links to")
    importer.add_argument("--source", help="source name set on the articles "
                          "(default: the file name, or the feed's host name)")
    importer.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    importer.add_argument("--timeout", type=float, default=10.0,
                          help="feed timeout in seconds (default 10)")
    importer.add_argument("--allow-network", action="append", default=[], metavar="CIDR",
                          help="a non-global network the feed may be fetched from, e.g. "
                          "10.0.0.0/8 for an intranet feed (repeatable; default: global "
                          "addresses only, pipeline/egress.py)")
    importer.set_defaults(func=cmd_data_import)

