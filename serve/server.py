"""``signals serve``: the model backend and the classification API in one command."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys

import uvicorn

from pipeline.prompt import label_token_ids
from serve.app import create_app
from classify.backends import Backend, InProcessBackend, VLLMBackend, serving_dtype
from classify.classifier import build_classifier
from serve.config import ServeConfig
from serve.vllm_server import VLLMServer

log = logging.getLogger(__name__)


def make_backend(config: ServeConfig, vllm_url: str | None) -> Backend:
    from transformers import AutoTokenizer

    labels = label_token_ids(AutoTokenizer.from_pretrained(config.base_model))
    if config.backend == "inprocess":
        return InProcessBackend(config.base_model, labels)
    # A vLLM started here computes in the dtype ``auto`` resolves to on this machine; of
    # one at --vllm-url, ``auto`` says nothing (another machine's probe): unknown.
    external_auto = config.vllm_url is not None and config.vllm_dtype == "auto"
    return VLLMBackend(vllm_url, config.vllm_served_name, labels,
                       timeout_s=config.backend_timeout_s, api_key=config.vllm_api_key,
                       replicas=config.vllm_replicas if config.vllm_url else None,
                       dtype=None if external_auto else serving_dtype(config.vllm_dtype))


# peft module names -> the fused modules vLLM applies LoRA to.
_VLLM_MODULES = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                 "o_proj": "o_proj", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
                 "down_proj": "down_proj"}


def lora_settings(config: ServeConfig) -> tuple[int, list[str]]:
    """vLLM's ``--max-lora-rank`` and ``--lora-target-modules`` matched to the registry.

    The largest rank and the union of modules of the adapters present; the config's
    values when the registry is empty. Exact values matter on a CPU: padding to a
    larger rank or touching every layer costs 1.6-2.3x.
    """
    from classify.registry import AdapterRegistry

    ranks, modules = [], set()
    for version in AdapterRegistry(config.registry).list():
        lora = version.manifest.lora
        if lora is None:
            continue
        if lora.rank:
            ranks.append(lora.rank)
        modules.update(_VLLM_MODULES.get(m, m) for m in lora.target_modules)
    if not ranks:
        return config.max_lora_rank, list(config.lora_target_modules)
    # vLLM accepts only these values for --max-lora-rank.
    rank = min(r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= max(ranks))
    return rank, sorted(modules)


def run_server(config: ServeConfig, preload: list[str] = ()) -> int:
    """Start vLLM when needed, then the API; block until interrupted."""
    if not (config.base_model / "config.json").is_file():
        raise FileNotFoundError(f"no base model at {config.base_model}; run "
                                "`signals model prepare` first")
    # Until uvicorn installs its own handlers, SIGTERM must unwind the stack below so
    # the vLLM child is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with contextlib.ExitStack() as stack:
        vllm_url = config.vllm_url
        if config.backend == "vllm" and vllm_url is None:
            rank, modules = lora_settings(config)
            server = VLLMServer(
                config.base_model, config.vllm_port, config.vllm_served_name,
                max_loras=config.max_loras, max_lora_rank=rank, lora_target_modules=modules,
                max_model_len=config.vllm_max_model_len, dtype=serving_dtype(config.vllm_dtype),
                kv_cache_gib=config.vllm_kv_cache_gib,
                log_path=config.registry.parent / "logs" / f"vllm-{config.vllm_port}.log",
                host="127.0.0.1", api_key=config.vllm_api_key,
                block_size=config.vllm_block_size, cpus=config.vllm_cpus)
            server.start()
            stack.callback(server.stop)
            server.wait_healthy(config.vllm_startup_timeout_s)
            server.supervise(startup_timeout_s=config.vllm_startup_timeout_s)
            vllm_url = server.url
            log.info("vLLM healthy at %s", vllm_url)
        classifier = build_classifier(make_backend(config, vllm_url), config.base_model,
                                      config.registry, config.max_prompt_tokens, config.threshold,
                                      max_loaded=config.max_loras)
        app = create_app(classifier, max_batch=config.max_batch,
                         max_request_bytes=config.max_request_bytes, preload=list(preload),
                         admin_token=config.admin_token, classify_token=config.classify_token,
                         watch_interval_s=config.watch_interval_s)
        log.info("classification API on http://%s:%d (docs /docs, metrics /metrics)",
                 config.host, config.port)
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0
