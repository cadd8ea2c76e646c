"""``signals serve``: the model backend and the classification API in one command."""

from __future__ import annotations

import contextlib
import logging

import uvicorn

from pipeline.prompt import label_token_ids
from serve.app import create_app
from serve.backends import Backend, InProcessBackend, VLLMBackend
from serve.classifier import build_classifier
from serve.config import ServeConfig
from serve.vllm_server import VLLMServer

log = logging.getLogger(__name__)


def make_backend(config: ServeConfig, vllm_url: str | None) -> Backend:
    from transformers import AutoTokenizer

    labels = label_token_ids(AutoTokenizer.from_pretrained(config.base_model))
    if config.backend == "inprocess":
        return InProcessBackend(config.base_model, labels)
    return VLLMBackend(vllm_url, config.vllm_served_name, labels,
                       timeout_s=config.backend_timeout_s)


def run_server(config: ServeConfig, preload: list[str] = ()) -> int:
    """Start vLLM when needed, then the API; block until interrupted."""
    if not (config.base_model / "config.json").is_file():
        raise FileNotFoundError(f"no base model at {config.base_model}; run "
                                "`signals model prepare` first")
    with contextlib.ExitStack() as stack:
        vllm_url = config.vllm_url
        if config.backend == "vllm" and vllm_url is None:
            server = VLLMServer(
                config.base_model, config.vllm_port, config.vllm_served_name,
                max_loras=config.max_loras, max_lora_rank=config.max_lora_rank,
                lora_target_modules=config.lora_target_modules,
                max_model_len=config.vllm_max_model_len, kv_cache_gib=config.vllm_kv_cache_gib,
                log_path=config.registry.parent / "logs" / f"vllm-{config.vllm_port}.log",
                host="127.0.0.1")
            server.start()
            stack.callback(server.stop)
            server.wait_healthy(config.vllm_startup_timeout_s)
            vllm_url = server.url
            log.info("vLLM healthy at %s", vllm_url)
        classifier = build_classifier(make_backend(config, vllm_url), config.base_model,
                                      config.registry, config.max_prompt_tokens, config.threshold)
        app = create_app(classifier, max_batch=config.max_batch,
                         max_request_bytes=config.max_request_bytes, preload=list(preload))
        log.info("classification API on http://%s:%d (docs /docs, metrics /metrics)",
                 config.host, config.port)
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0
