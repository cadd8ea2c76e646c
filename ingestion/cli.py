"""``signals ingest``: the ingestion service, the dataset replay, feedback import, export.

    signals ingest run --config ingest.yaml      poll sources, classify, store, /metrics on :8200
    signals ingest replay --dataset DIR --split 1987-04 --ingest-url http://127.0.0.1:8200
    signals ingest feedback-import verdicts.jsonl   bulk feedback into the store
    signals ingest export --out DIR --train-end 2026-10-31   labelled items as a dataset
    signals backtest --out DIR        update policies replayed over April and June

Added to ``signals`` by :func:`register` (``signals/cli.py``); ``python -m ingestion.cli``
runs the same commands stand-alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

log = logging.getLogger("signals.ingest")


def _config(args: argparse.Namespace):
    from ingestion.config import FeedSourceConfig, load_ingest_config

    overrides = {"host": getattr(args, "host", None), "port": getattr(args, "port", None),
                 "database_url": args.database_url,
                 "classifier_url": getattr(args, "classifier_url", None),
                 "adapter": getattr(args, "adapter", None),
                 "shadow_adapter": getattr(args, "shadow_adapter", None),
                 "drop_dir": getattr(args, "drop_dir", None)}
    config = load_ingest_config(args.config, **overrides)
    extra_feeds = []
    for spec in getattr(args, "feed", None) or []:
        name, sep, url = spec.partition("=")
        if not sep or not name or not url:
            raise ValueError(f"--feed wants NAME=URL, got {spec!r}")
        extra_feeds.append(FeedSourceConfig(name=name, url=url,
                                            interval_s=args.feed_interval or 300.0))
    if extra_feeds:
        config = config.model_copy(update={"feeds": [*config.feeds, *extra_feeds]})
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from ingestion.api import run_ingest_server

    return run_ingest_server(_config(args))


def cmd_replay(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.dataset import load_split
    from ingestion.replay import Replay, create_replay_app

    articles = load_split(args.dataset, args.split)
    if args.limit:
        articles = sorted(articles, key=lambda a: str(a.date_published))[:args.limit]
    replay = Replay(articles, speed=args.speed, label_delay=timedelta(days=args.label_delay_days),
                    feed_size=args.feed_size, keep_dates=args.keep_dates)
    app = create_replay_app(replay, args.ingest_url, feedback_interval_s=1.0)
    span = replay.items[-1].label_at - replay.started_at
    print(f"replaying {len(replay.items)} articles of {args.dataset.name}/{args.split} at "
          f"{args.speed:g}x: feed http://{args.host}:{args.port}/feed.xml, labels to "
          f"{args.ingest_url or '(nowhere)'}; all labels sent in {span}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _feedback_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [{k: v for k, v in row.items() if v not in (None, "")}
                    for row in csv.DictReader(handle)]
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    rows.append({"_error": f"line {number}: not JSON ({error})"})
    return rows


def cmd_feedback_import(args: argparse.Namespace) -> int:
    """Bulk feedback straight into the store (the service need not run)."""
    from pydantic import ValidationError

    from ingestion.feedback import FeedbackEntry
    from ingestion.service import IngestionService

    config = _config(args)
    service = IngestionService(config)
    counts: dict[str, int] = {}
    for number, row in enumerate(_feedback_rows(args.file), 1):
        if "_error" in row:
            outcome = "invalid"
            log.warning("%s: %s; skipped", args.file, row["_error"])
        else:
            if args.source and "source" not in row:
                row["source"] = args.source
            try:
                entry = FeedbackEntry.model_validate(row)
            except ValidationError as error:
                outcome = "invalid"
                log.warning("%s entry %d: invalid (%s); skipped", args.file, number,
                            error.errors()[0]["msg"])
            else:
                outcome = service.feedback.record(entry)["outcome"]
        counts[outcome] = counts.get(outcome, 0) + 1
    print(json.dumps(counts, sort_keys=True))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ingestion.config import load_ingest_config
    from ingestion.export import export_dataset
    from ingestion.store import Store

    config = load_ingest_config(args.config, database_url=args.database_url)
    store = Store(config.database_url, config.label_priority)
    manifest = export_dataset(store, args.out, train_end=args.train_end,
                              since=args.since, until=args.until, split_name=args.split)
    print(f"dataset {args.out}")
    for name, split in manifest.splits.items():
        print(f"  {name}: {split.count} items, {split.signals} signals")
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    import yaml

    from ingestion.backtest import Backtest, BacktestConfig

    data = yaml.safe_load(args.config.read_text()) if args.config else {}
    flags = {"dataset": args.dataset, "registry": args.registry,
             "classifier_url": args.classifier_url, "start_adapter": args.start_adapter,
             "max_days": args.days, "splits": args.splits.split(",") if args.splits else None}
    data |= {k: v for k, v in flags.items() if v is not None}
    config = BacktestConfig.model_validate(data or {})
    if args.policies:
        wanted = args.policies.split(",")
        known = {p.name for p in config.policies}
        if unknown := [w for w in wanted if w not in known]:
            raise ValueError(f"--policies: unknown {unknown}; the config has {sorted(known)}")
        config = config.model_copy(update={"policies": [p for p in config.policies
                                                        if p.name in wanted]})
    report = Backtest(config, args.out).run()
    for name, policy in report["policies"].items():
        total = policy["total"]
        f1 = total["true"]["f1"]
        print(f"{name:>10}: F1 {f1 if f1 is None else round(f1, 3)} over "
              f"{total['true']['n']} items; {policy['labels_received']} labels, "
              f"{len(policy['retrains'])} retrains, {policy['decisions']['promote']} promotions, "
              f"{policy['decisions']['rollback']} rollbacks; "
              f"TF-IDF frozen {round(total['lexical_frozen']['f1'] or 0, 3)}")
    print(f"report {args.out / 'backtest.json'}, plot {args.out / 'f1-by-week.png'}")
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML of IngestConfig fields "
                        "(SIGNALS_INGEST_* environment variables override it)")
    parser.add_argument("--database-url", help="SQLAlchemy URL of the store "
                        "(default sqlite:///$SIGNALS_DATA_DIR/ingest.db)")


def _utc_datetime(value: str) -> datetime:
    from datetime import timezone

    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``signals ingest run|replay|feedback-import|export`` and ``signals backtest``
    to ``signals``."""
    ingest = commands.add_parser(
        "ingest", help="the ingestion service: feeds/newsletters -> classification -> store, "
        "online precision/recall, drift")
    actions = ingest.add_subparsers(dest="ingest_command", required=True, metavar="ACTION")

    run = actions.add_parser("run", help="poll sources, accept pushes, classify, serve "
                             "/metrics (port 8200)")
    _add_common(run)
    run.add_argument("--host")
    run.add_argument("--port", type=int, help="port (default 8200)")
    run.add_argument("--classifier-url", help="classification API (default http://127.0.0.1:8000)")
    run.add_argument("--adapter", help="adapter or alias analysts see (default production)")
    run.add_argument("--shadow-adapter", help="adapter classifying in shadow, e.g. candidate")
    run.add_argument("--feed", action="append", metavar="NAME=URL",
                     help="an RSS/Atom feed to poll (repeatable; adds to the config's)")
    run.add_argument("--feed-interval", type=float, help="seconds between polls of --feed feeds")
    run.add_argument("--drop-dir", type=Path, help="directory watched for .eml/.mbox/.jsonl/.csv")
    run.set_defaults(func=cmd_run)

    replay = actions.add_parser("replay", help="serve a dated dataset split as a live RSS "
                                "feed, its labels as delayed feedback")
    replay.add_argument("--dataset", type=Path, required=True, help="dataset directory")
    replay.add_argument("--split", required=True, help="split to replay, e.g. 1987-04")
    replay.add_argument("--limit", type=int, help="replay only the first N articles")
    replay.add_argument("--speed", type=float, default=86400.0,
                        help="dataset seconds per wall second (default 86400: a day a second)")
    replay.add_argument("--label-delay-days", type=float, default=7.0,
                        help="dataset days from publication to label (default 7)")
    replay.add_argument("--ingest-url", help="ingestion service to send labels to "
                        "(e.g. http://127.0.0.1:8200); none: feed only")
    replay.add_argument("--feed-size", type=int, default=500, help="items in the feed")
    replay.add_argument("--keep-dates", action="store_true",
                        help="pubDate = the original date, not the replay clock's")
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, default=8300)
    replay.set_defaults(func=cmd_replay)

    feedback = actions.add_parser("feedback-import", help="import verdicts (JSONL or CSV: "
                                  "item_id or external_id, label, source, note)")
    _add_common(feedback)
    feedback.add_argument("file", type=Path)
    feedback.add_argument("--source", help="label source for rows that name none")
    feedback.set_defaults(func=cmd_feedback_import)

    export = actions.add_parser("export", help="labelled items as a pipeline dataset")
    _add_common(export)
    export.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    export.add_argument("--train-end", type=date.fromisoformat,
                        help="temporal split: train up to this day, a split per later month")
    export.add_argument("--split", help="instead: everything selected as one split of this name")
    export.add_argument("--since", type=_utc_datetime, help="published at or after (ISO)")
    export.add_argument("--until", type=_utc_datetime, help="published before (ISO)")
    export.set_defaults(func=cmd_export)

    backtest = commands.add_parser(
        "backtest", help="replay dated labelled windows through the services under update "
        "policies (frozen, scheduled, drift): F1 by week, labels, retrains, promotions",
        description="Replays the dataset's test windows day by day on a simulated clock "
        "through the ingestion service, the label queue, the promotion gate, retraining "
        "(signals train) and a running classification API (signals serve, with "
        "SIGNALS_SERVE_ADMIN_TOKEN set). Writes backtest.json and f1-by-week.png to --out; "
        "run it again on the same --out to resume. Fields: ingestion/backtest.py.")
    backtest.add_argument("--out", type=Path, required=True,
                          help="run directory (state, stores, report); reused: resumed")
    backtest.add_argument("--config", type=Path, help="YAML of BacktestConfig fields")
    backtest.add_argument("--dataset", type=Path, help="dataset directory "
                          "(default $SIGNALS_DATA_DIR/datasets/reuters-acq)")
    backtest.add_argument("--registry", type=Path, help="registry the API serves")
    backtest.add_argument("--classifier-url", help="classification API "
                          "(default http://127.0.0.1:8000)")
    backtest.add_argument("--start-adapter", help="version or alias every policy starts "
                          "from (default production)")
    backtest.add_argument("--policies", help="comma-separated policy names to run "
                          "(default all of the config's)")
    backtest.add_argument("--splits", help="comma-separated test windows to replay, in "
                          "order (default the config's, else 1987-04,1987-06)")
    backtest.add_argument("--days", type=int, help="replay only the first N days")
    backtest.set_defaults(func=cmd_backtest)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m ingestion.cli run ...``."""
    parser = argparse.ArgumentParser(prog="signals")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ingest", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"signals ingest: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
