"""A client for any OpenAI-compatible endpoint (OpenAI itself, or a local vLLM).

The teacher labeler and the LLM topic extractor both talk to such an endpoint through
the ``openai`` client. The API key is named by an environment variable in their
configs and read here, so a key never sits in a config file or a log line.
"""

from __future__ import annotations

import os

import httpx
import openai
from pydantic import BaseModel, ConfigDict, Field

NO_KEY = "EMPTY"
"""What is sent as the key to an endpoint that needs none: the openai client refuses
to start without one, and a vLLM server started without ``--api-key`` ignores it."""


class EndpointConfig(BaseModel):
    """How to reach an OpenAI-compatible endpoint; the teacher and topic configs extend it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default="gpt-4o-mini",
        description="Model name at the endpoint (a vLLM server's --served-model-name).")
    api_key_env: str | None = Field(
        default="OPENAI_API_KEY",
        description="Name of the environment variable holding the API key; the key never "
        "appears in a config. None: the endpoint needs no key (a local vLLM).")
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout, seconds.")
    max_retries: int = Field(
        default=2, ge=0, description="Retries of a failed request (the openai client's "
        "exponential back-off on connection errors, timeouts, 429 and 5xx).")
    max_text_chars: int = Field(
        default=6000, ge=200,
        description="Article text beyond this many characters is not sent (cost and "
        "context length; the lead carries the news).")


def api_key_from_env(env_name: str | None) -> str:
    """The key held by environment variable ``env_name``; :data:`NO_KEY` for ``None``.

    Raises ``ValueError`` naming the variable when it is unset or empty.
    """
    if env_name is None:
        return NO_KEY
    key = os.environ.get(env_name)
    if not key:
        raise ValueError(f"environment variable {env_name} (the API key) is not set; set "
                         "it, or configure api_key_env: null for an endpoint without keys")
    return key


def openai_client(base_url: str, api_key_env: str | None, timeout_s: float,
                  max_retries: int, http_client: httpx.Client | None = None) -> openai.OpenAI:
    """An ``openai.OpenAI`` for ``base_url`` (e.g. ``http://127.0.0.1:8100/v1``).

    ``max_retries`` is the client's own retry with exponential back-off, applied to
    connection errors, timeouts, 408/409/429 and 5xx answers.
    """
    return openai.OpenAI(base_url=base_url, api_key=api_key_from_env(api_key_env),
                         timeout=timeout_s, max_retries=max_retries, http_client=http_client)
