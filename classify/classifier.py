"""Article -> P(signal) with a chosen adapter: the core of the classification API.

Adapters are named by version or by alias (``production``, ``candidate``), looked up
in the registry (names confined to it), hot-loaded into the backend on first use and
then addressed by their version name, which is never reused. At most
``max_loaded`` adapters stay loaded; the least recently used one that no request is
using is unloaded to make room. The base model is used when no adapter is named.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.article import Article
from pipeline.prompt import BASE_NAME, encode_prompt, label_token_ids
from classify.backends import AdapterLoadError, Backend, BackendUnavailable
from classify.calibration import estimate_prior, prior_shift
from classify.lexical import LexicalModel
from classify.registry import AdapterRegistry, AdapterVersion

ESTIMATE = "estimate"
"""``signal_rate`` value that asks for the rate to be estimated from the articles."""

MIN_ARTICLES_TO_ESTIMATE = 30
"""Fewer articles of one version than this give no usable estimate of a signal rate."""

log = logging.getLogger(__name__)



class NotEnoughToEstimate(ValueError):
    """``signal_rate: estimate`` for a version with too few articles in the request, or
    for one without a calibration to shift."""


class BaseModelNotAdapter(ValueError):
    """An adapter operation (load, unload, alias target) named the base model, which is
    always served and is not a registry adapter."""
"""How requests and results name the un-tuned base model."""


@dataclass(frozen=True)
class Classification:
    id: str | int
    label: int
    p_signal: float
    adapter: str
    """The adapter version that answered ('base' for the un-tuned model)."""
    requested: str
    """What the request named: a version, an alias such as 'production', or 'base'."""
    threshold: float
    """The threshold applied: the request's, else the adapter's own, else the server's."""
    truncated: bool
    calibrated: bool = False
    """True when ``p_signal`` went through the adapter version's calibration."""
    p_raw: float | None = None
    """The uncalibrated two-token softmax (equal to ``p_signal`` when not calibrated)."""
    signal_rate: float | None = None
    """The serving window's signal rate ``p_signal`` was prior-shifted to (given by the
    request or estimated from its articles); None when not shifted."""
    fitted_rate: float | None = None
    """The signal rate the version's calibration was fitted at (its validation
    window's): the prior ``p_signal`` holds when not shifted; None when uncalibrated."""


class SignalClassifier:
    """Renders prompts, resolves and loads adapters, asks the backend, applies thresholds."""

    def __init__(self, backend: Backend, tokenizer, registry: AdapterRegistry,
                 max_prompt_tokens: int, threshold: float, max_loaded: int = 4):
        self.backend = backend
        self.tokenizer = tokenizer
        self.labels = label_token_ids(tokenizer)
        self.registry = registry
        self.max_prompt_tokens = max_prompt_tokens
        self.threshold = threshold
        self.max_loaded = max_loaded
        self.loaded: OrderedDict[str, AdapterVersion] = OrderedDict()  # LRU order
        self._in_flight: Counter[str] = Counter()
        self._load_lock = asyncio.Lock()
        self._lexical: dict[str, LexicalModel] = {}  # ensemble versions' lexical halves

    # --- adapters ------------------------------------------------------------------

    def resolve(self, adapter: str | None) -> AdapterVersion | None:
        """None for the base model; else the version named (or aliased) by ``adapter``.

        Raises ``AdapterNotFound`` / ``InvalidAdapterName`` for names the registry does
        not hold or that could leave it.
        """
        if adapter is None or adapter == BASE_NAME:
            return None
        return self.registry.resolve(adapter)

    async def ensure_loaded(self, adapter: str) -> AdapterVersion:
        """Load a registry adapter (by name or alias) into the backend unless it is."""
        version = self.resolve(adapter)
        if version is None:
            raise BaseModelNotAdapter(f"{adapter!r} is the base model: it is always loaded and "
                                      "is not a registry adapter")
        async with self._load_lock:
            if version.name in self.loaded:
                self.loaded.move_to_end(version.name)
                return version
            await self._make_room()
            await self.backend.load_adapter(version.name, version.path)
            self.loaded[version.name] = version
            log.info("loaded adapter %s from %s", version.name, version.path)
            if self.dtype_mismatch(version):
                log.warning("adapter %s was calibrated in %s and is served in %s: its raw "
                            "P moves, so its calibration and threshold may not hold; "
                            "recalibrate it through this server (signals adapters "
                            "calibrate --vllm-url ... --vllm-dtype %s)", version.name,
                            version.calibration.dtype, self.backend.dtype,
                            self.backend.dtype)
        return version

    def dtype_mismatch(self, version: AdapterVersion) -> bool | None:
        """Whether ``version``'s calibration was fitted in another dtype than the backend
        computes in; None when either is unknown (no calibration, none recorded, or a
        vLLM server whose dtype was not given)."""
        calibration = version.calibration
        served = self.backend.dtype
        if calibration is None or calibration.dtype is None or served is None:
            return None
        return calibration.dtype != served

    async def _make_room(self, wait_s: float = 30.0) -> None:
        """Unload least recently used adapters that no request is using (lock held).

        Never goes over ``max_loaded`` (vLLM's ``--max-loras`` slots): when every loaded
        adapter is busy, waits for one to finish.
        """
        deadline = asyncio.get_running_loop().time() + wait_s
        while len(self.loaded) >= self.max_loaded:
            idle = [name for name in self.loaded if not self._in_flight[name]]
            if not idle:
                if asyncio.get_running_loop().time() > deadline:
                    raise BackendUnavailable(
                        f"all {len(self.loaded)} adapter slots are busy; retry shortly")
                await asyncio.sleep(0.01)
                continue
            await self.backend.unload_adapter(idle[0])
            del self.loaded[idle[0]]
            log.info("evicted adapter %s (least recently used)", idle[0])

    async def unload(self, adapter: str, drain_timeout_s: float = 60.0) -> str:
        """Unload an adapter by name or alias once no request uses it; its version name.

        Requests already using it finish first (up to ``drain_timeout_s``); a later
        request that names it loads it again.
        """
        version = self.resolve(adapter)
        if version is None:
            raise BaseModelNotAdapter(f"{adapter!r} is the base model: it cannot be unloaded")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        while True:
            while self._in_flight[version.name] and loop.time() < deadline:
                await asyncio.sleep(0.01)
            async with self._load_lock:
                # A request may have started using it while this waited for the lock.
                if self._in_flight[version.name] and loop.time() < deadline:
                    continue
                if version.name in self.loaded:
                    await self.backend.unload_adapter(version.name)
                    del self.loaded[version.name]
                return version.name

    @asynccontextmanager
    async def _using(self, names: set[str]):
        """Mark adapters in use so eviction leaves them alone while a request runs."""
        self._in_flight.update(names)
        try:
            yield
        finally:
            self._in_flight.subtract(names)

    # --- classification ------------------------------------------------------------

    def prompt_limit(self, version: AdapterVersion | None) -> int:
        """Prompt cap for an adapter (:meth:`AdapterVersion.prompt_cap` within the
        server's); the server's own for the base model."""
        return self.max_prompt_tokens if version is None else version.prompt_cap(
            self.max_prompt_tokens)

    async def classify(self, articles: list[Article], adapter: str | None = None,
                       threshold: float | None = None,
                       signal_rate: float | str | None = None) -> list[Classification]:
        """Classify ``articles`` with one adapter (None/'base' = the base model)."""
        return await self.classify_mixed([(a, adapter) for a in articles], threshold,
                                         signal_rate)

    async def classify_mixed(self, items: Sequence[tuple[Article, str | None]],
                             threshold: float | None = None,
                             signal_rate: float | str | None = None) -> list[Classification]:
        """Classify articles that each name their own adapter, in one backend batch.

        ``signal_rate``: the serving window's signal rate, to prior-shift each calibrated
        version's P to (label shift, :func:`classify.calibration.prior_shift`); or
        ``"estimate"``: estimate it per version from this batch's articles by EM
        (:func:`classify.calibration.estimate_prior`, at least
        :data:`MIN_ARTICLES_TO_ESTIMATE` articles of the version). The label is cut at
        the version's threshold on the shifted P. None (default): no shift."""
        # Resolve every name and mark the versions in use before the first await, so an
        # unload (a swap) that starts meanwhile waits for this request instead of taking
        # its adapter away between loading and asking the backend.
        versions = {adapter: self.resolve(adapter) for _, adapter in items}
        names = {v.name for v in versions.values() if v is not None}
        async with self._using(names):
            for name in names:
                await self.ensure_loaded(name)

            def render():
                return [encode_prompt(a, self.tokenizer, self.prompt_limit(versions[ad]),
                                      versions[ad].prompt_style if versions[ad] else "full")
                        for a, ad in items]

            # Tokenising long articles takes a while: keep the event loop free.
            prompts = await asyncio.to_thread(render)
            token_ids = [p.token_ids for p in prompts]
            targets = [versions[ad].name if versions[ad] else None for _, ad in items]
            try:
                probabilities = await self.backend.signal_probabilities(token_ids, targets)
            except AdapterLoadError:
                if not names:
                    raise
                # The backend lost an adapter (e.g. vLLM restarted): load them again, once.
                log.warning("backend no longer serves one of %s; reloading", sorted(names))
                async with self._load_lock:
                    for name in names:
                        self.loaded.pop(name, None)
                for name in names:
                    await self.ensure_loaded(name)
                probabilities = await self.backend.signal_probabilities(token_ids, targets)
        margins = await asyncio.to_thread(self._lexical_margins, items, versions)
        decided = [self.decision(versions[requested], p_raw, threshold, margin)
                   for (_, requested), p_raw, margin in zip(items, probabilities, margins)]
        rates = self._signal_rates(items, versions, decided, signal_rate)
        results = []
        for (article, requested), p_raw, prompt, (p, cut, calibrated) in zip(
                items, probabilities, prompts, decided):
            version = versions[requested]
            rate = rates.get(version.name) if version is not None else None
            if rate is not None:
                p = prior_shift(p, self.fitted_rate(version), rate)
            results.append(Classification(
                id=article.id, label=int(p >= cut), p_signal=p,
                adapter=version.name if version else BASE_NAME,
                requested=requested or BASE_NAME, threshold=cut, truncated=prompt.truncated,
                calibrated=calibrated, p_raw=p_raw, signal_rate=rate,
                fitted_rate=self.fitted_rate(version) if calibrated else None))
        return results

    def lexical_model(self, version: AdapterVersion) -> LexicalModel:
        """The lexical half of an ensemble version, read once from its directory."""
        model = self._lexical.get(version.name)
        if model is None:
            model = LexicalModel.load(version.path / version.manifest.ensemble.lexical_file)
            self._lexical[version.name] = model
        return model

    def _lexical_margins(self, items, versions) -> list[float | None]:
        """The lexical margin of every article classified by an ensemble version."""
        margins: list[float | None] = [None] * len(items)
        by_version: dict[str, list[int]] = {}
        for i, (_, requested) in enumerate(items):
            version = versions[requested]
            if version is not None and version.manifest.ensemble is not None:
                by_version.setdefault(requested, []).append(i)
        for requested, indices in by_version.items():
            model = self.lexical_model(versions[requested])
            for i, m in zip(indices, model.margin([items[i][0] for i in indices])):
                margins[i] = m
        return margins

    @staticmethod
    def fitted_rate(version: AdapterVersion) -> float:
        """The signal rate a version's P is calibrated to (its fitting window's)."""
        ensemble = version.manifest.ensemble
        return (ensemble.fitted_on if ensemble else version.calibration.fitted_on).base_rate

    def _signal_rates(self, items, versions, decided, signal_rate) -> dict[str, float]:
        """{version name: the rate to shift its P to} for the calibrated versions."""
        if signal_rate is None:
            return {}
        groups: dict[str, list[float]] = {}
        for (_, requested), (p, _, calibrated) in zip(items, decided):
            version = versions[requested]
            if version is not None and calibrated:
                groups.setdefault(version.name, []).append(p)
        if signal_rate != ESTIMATE:
            return {name: float(signal_rate) for name in groups}
        rates = {}
        for (_, requested) in items:
            version = versions[requested]
            if version is None or version.name in rates:
                continue
            found = groups.get(version.name, [])
            if not found:
                raise NotEnoughToEstimate(f"{version.name} has no calibration: there is no "
                                          "calibrated P to estimate a signal rate from")
            if len(found) < MIN_ARTICLES_TO_ESTIMATE:
                raise NotEnoughToEstimate(
                    f"estimating the signal rate needs at least {MIN_ARTICLES_TO_ESTIMATE} "
                    f"articles of {version.name} in the request, got {len(found)}")
            rates[version.name] = round(estimate_prior(found, self.fitted_rate(version)), 6)
        return rates

    def decision(self, version: AdapterVersion | None, p_raw: float,
                 threshold: float | None = None,
                 lexical_margin: float | None = None) -> tuple[float, float, bool]:
        """``(p_signal, threshold, calibrated)`` for one raw P under ``version``.

        A calibrated version answers with its calibrated P and, unless the request set
        one, its own F1-optimal threshold; an ensemble version with the P that combines
        its adapter's raw P with its lexical model's margin (``lexical_margin``), at the
        ensemble's own threshold; the base model and versions without a calibration
        (older ones) answer with the raw P at the server's threshold.
        """
        ensemble = version.manifest.ensemble if version is not None else None
        if ensemble is not None:
            if lexical_margin is None:
                raise ValueError(f"ensemble version {version.name} needs the lexical margin")
            return (ensemble.combine(p_raw, lexical_margin),
                    ensemble.threshold if threshold is None else threshold, True)
        calibration = version.calibration if version is not None else None
        if calibration is None:
            return p_raw, self.threshold if threshold is None else threshold, False
        return (calibration.apply(p_raw),
                calibration.threshold if threshold is None else threshold, True)


def build_classifier(backend: Backend, base_model: Path, registry: Path,
                     max_prompt_tokens: int, threshold: float,
                     max_loaded: int = 4) -> SignalClassifier:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    return SignalClassifier(backend, tokenizer, AdapterRegistry(registry),
                            max_prompt_tokens, threshold, max_loaded)
