"""Article -> P(signal) with a chosen adapter: the core of the classification API.

Adapters are looked up in the registry (names confined to it), hot-loaded into the
backend on first use (or on an explicit load) and then addressed by name; the base
model is used when no adapter is named.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.article import Article
from pipeline.prompt import encode_prompt, label_token_ids
from serve.backends import Backend
from train.registry import AdapterRegistry, AdapterVersion

log = logging.getLogger(__name__)

BASE_NAME = "base"
"""How results name the un-tuned base model."""


@dataclass(frozen=True)
class Classification:
    id: str | int
    label: int
    p_signal: float
    adapter: str
    threshold: float
    truncated: bool


class SignalClassifier:
    """Renders prompts, resolves adapters, asks the backend, applies the threshold."""

    def __init__(self, backend: Backend, tokenizer, registry: AdapterRegistry,
                 max_prompt_tokens: int, threshold: float):
        self.backend = backend
        self.tokenizer = tokenizer
        self.labels = label_token_ids(tokenizer)
        self.registry = registry
        self.max_prompt_tokens = max_prompt_tokens
        self.threshold = threshold
        self.loaded: dict[str, AdapterVersion] = {}
        self._load_lock = asyncio.Lock()

    async def ensure_loaded(self, name: str) -> AdapterVersion:
        """Load a registry adapter into the backend unless it already is.

        Raises ``AdapterNotFound`` / ``InvalidAdapterName`` for names the registry
        does not hold, and the backend's errors when it refuses the files.
        """
        if name in self.loaded:
            return self.loaded[name]
        version = self.registry.get(name)  # validates the name: no path traversal
        async with self._load_lock:
            if name not in self.loaded:
                await self.backend.load_adapter(name, version.path)
                self.loaded[name] = version
                log.info("loaded adapter %s from %s", name, version.path)
        return version

    def prompt_limit(self, adapter: str | None) -> int:
        """Prompt cap for ``adapter``: the one it was trained with, within the server's.

        Rendering an article exactly as during training keeps train and serve prompts
        identical; the server's cap still bounds every request.
        """
        trained = None
        if adapter is not None and adapter in self.loaded:
            trained = self.loaded[adapter].manifest.get("hyperparameters", {}).get(
                "max_prompt_tokens")
        return min(self.max_prompt_tokens, trained) if trained else self.max_prompt_tokens

    async def unload(self, name: str) -> None:
        async with self._load_lock:
            if name in self.loaded:
                await self.backend.unload_adapter(name)
                del self.loaded[name]

    async def classify(self, articles: list[Article], adapter: str | None = None,
                       threshold: float | None = None) -> list[Classification]:
        if adapter is not None and adapter != BASE_NAME:
            await self.ensure_loaded(adapter)
        else:
            adapter = None
        threshold = self.threshold if threshold is None else threshold
        limit = self.prompt_limit(adapter)
        # Tokenising a long article takes a while: keep the event loop free.
        prompts = await asyncio.to_thread(
            lambda: [encode_prompt(a, self.tokenizer, limit) for a in articles])
        probabilities = await self.backend.signal_probabilities(
            [p.token_ids for p in prompts], [adapter] * len(prompts))
        return [
            Classification(id=a.id, label=int(p >= threshold), p_signal=p,
                           adapter=adapter or BASE_NAME, threshold=threshold,
                           truncated=prompt.truncated)
            for a, p, prompt in zip(articles, probabilities, prompts)
        ]


def build_classifier(backend: Backend, base_model: Path, registry: Path,
                     max_prompt_tokens: int, threshold: float) -> SignalClassifier:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    return SignalClassifier(backend, tokenizer, AdapterRegistry(registry),
                            max_prompt_tokens, threshold)
