"""Ingestion throughput: without the model, and end to end with it.

1. **Intake** (no model): Reuters articles served as a real RSS feed over HTTP, one
   poll of the ingestion service (fetch, feedparser, dedupe against everything stored,
   SQLite insert), then the same articles pushed again through ``POST /v1/items``
   (all duplicates: the dedupe path alone), then fresh articles pushed.
2. **End to end**: a replay feed -> ingestion -> the real classification API
   (in-process backend on the real base model, or an adapter) -> store, until every
   item has its prediction. The ingestion overhead excluding model time is the
   wall time minus the time spent inside classification requests.

    .venv/bin/python bench/bench_ingest.py --intake 1000 --e2e 48

Writes ``bench/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.settings import OFFLINE_ENV  # noqa: E402

for _name, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_name, _value)

import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pipeline.dataset import load_split  # noqa: E402
from pipeline.settings import Paths  # noqa: E402
from ingestion.api import create_ingest_app  # noqa: E402
from ingestion.config import FeedSourceConfig, IngestConfig  # noqa: E402
from ingestion.replay import Replay, create_replay_app  # noqa: E402
from ingestion.store import Store  # noqa: E402
from serve.local_http import serve_app  # noqa: E402
from bench.classification_api import classification_api, make_classifier  # noqa: E402


def metric_sum(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name)


def instant_replay(articles) -> Replay:
    """Every article already published (the feed holds them all at once)."""
    return Replay(articles, speed=1e9, label_delay=timedelta(days=365),
                  started_at=datetime.now(timezone.utc) - timedelta(seconds=60),
                  feed_size=len(articles))


def bench_intake(articles, fresh, workdir: Path) -> dict:
    replay = instant_replay(articles)
    with serve_app(create_replay_app(replay)) as feed_url:
        config = IngestConfig(database_url=f"sqlite:///{workdir / 'intake.db'}",
                              classifier_url="http://127.0.0.1:9",  # no model in this part
                              retry_initial_s=3600,
                              feeds=[FeedSourceConfig(name="bench", url=f"{feed_url}/feed.xml",
                                                     allow_networks=["127.0.0.0/8"],
                                                      interval_s=3600)])
        with serve_app(create_ingest_app(config)) as url:
            store = Store(config.database_url)
            started = time.perf_counter()
            while metric_sum(url, "signals_ingest_source_polls_total") < 1:
                time.sleep(0.02)
            feed_s = time.perf_counter() - started
            stored = store.item_count()
            records = [a.to_record() for a in articles]
            started = time.perf_counter()
            for i in range(0, len(records), 100):
                httpx.post(f"{url}/v1/items", json={"articles": records[i:i + 100]},
                           timeout=300).raise_for_status()
            repeat_s = time.perf_counter() - started
            fresh_records = [a.to_record() for a in fresh]
            started = time.perf_counter()
            accepted = 0
            for i in range(0, len(fresh_records), 100):
                answer = httpx.post(f"{url}/v1/items",
                                    json={"articles": fresh_records[i:i + 100]}, timeout=300)
                accepted += answer.json()["accepted"]
            push_s = time.perf_counter() - started
    return {
        "feed_items": len(articles), "feed_stored": stored,
        "feed_poll_s": round(feed_s, 3), "feed_items_per_s": round(len(articles) / feed_s, 1),
        "push_duplicates_items_per_s": round(len(records) / repeat_s, 1),
        "push_new_items": len(fresh_records), "push_new_accepted": accepted,
        "push_new_items_per_s": round(len(fresh_records) / push_s, 1),
    }


def bench_end_to_end(articles, workdir: Path, adapter: str, max_prompt_tokens: int,
                     batch_size: int) -> dict:
    from transformers import AutoTokenizer

    paths = Paths()
    base = paths.models_dir / "SmolLM2-135M-Instruct"
    classifier = make_classifier(base, paths.registry_dir, AutoTokenizer.from_pretrained(base),
                                 max_prompt_tokens=max_prompt_tokens)
    replay = instant_replay(articles)
    with classification_api(classifier) as (api_url, _), \
            serve_app(create_replay_app(replay)) as feed_url:
        # warm the adapter up so its load is not in the timing
        httpx.post(f"{api_url}/v1/classify", timeout=300, json={
            "article": articles[0].to_record(), "adapter": adapter}).raise_for_status()
        config = IngestConfig(database_url=f"sqlite:///{workdir / 'e2e.db'}",
                              classifier_url=api_url, adapter=adapter, batch_size=batch_size,
                              idle_poll_s=0.05,
                              feeds=[FeedSourceConfig(name="bench", url=f"{feed_url}/feed.xml",
                                                     allow_networks=["127.0.0.0/8"],
                                                      interval_s=3600)])
        started = time.perf_counter()
        with serve_app(create_ingest_app(config)) as url:
            store = Store(config.database_url)
            while not (store.item_count() and store.pending_count("primary") == 0):
                time.sleep(0.05)
            wall_s = time.perf_counter() - started
            model_s = metric_sum(url, "signals_ingest_classify_request_seconds_sum")
            stored = store.item_count()
    overhead_s = wall_s - model_s
    return {"items": stored, "adapter": adapter, "batch_size": batch_size,
            "max_prompt_tokens": max_prompt_tokens, "wall_s": round(wall_s, 2),
            "items_per_s": round(stored / wall_s, 2),
            "time_in_classification_requests_s": round(model_s, 2),
            "ingestion_overhead_s": round(overhead_s, 3),
            "items_per_s_excluding_model": round(stored / overhead_s, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Paths().datasets_dir / "reuters-acq")
    parser.add_argument("--intake", type=int, default=1000, help="articles for the intake part")
    parser.add_argument("--e2e", type=int, default=48, help="articles for the end-to-end part")
    parser.add_argument("--adapter", default="base", help="adapter for the end-to-end part")
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "ingest.json")
    args = parser.parse_args()
    articles = sorted(load_split(args.dataset, "1987-04"), key=lambda a: a.date_published)
    fresh = load_split(args.dataset, "1987-06")[:args.intake // 2]
    with tempfile.TemporaryDirectory() as tmp:
        intake = bench_intake(articles[:args.intake], fresh, Path(tmp))
        print(json.dumps(intake, indent=2))
        e2e = bench_end_to_end(articles[args.intake:args.intake + args.e2e], Path(tmp),
                               args.adapter, args.max_prompt_tokens, args.batch_size)
        print(json.dumps(e2e, indent=2))
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "command": " ".join(["bench/bench_ingest.py", *sys.argv[1:]]),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "intake": intake, "end_to_end": e2e}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
