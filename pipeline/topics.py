"""Topics: up to ten per article, from the most specific to the most general.

The topics feed the Google-Trends label rule (interest in a topic growing over 3, 5 and
10 years) and the ``topics`` field of the contract, most specific first, as in the
original dataset ("Nordvik 2 nm fab", ..., "semiconductors", "technology").

Two extractors share one interface (:class:`TopicExtractor`):

* :class:`LLMTopicExtractor` asks an LLM through any OpenAI-compatible endpoint (OpenAI,
  or a local vLLM) with :data:`TOPIC_INSTRUCTION`, at temperature 0, for a JSON list
  ordered specific to general. Answers are parsed leniently by :func:`parse_topics`: a
  JSON list (also inside a code fence or after a preamble), else a bulleted or numbered
  list, else one short topic per line, else a comma-separated line; duplicates are
  dropped and the list cut at ten. An answer with none of those shapes yields no topics,
  a log line and a count in ``stats.unparseable``.
* :class:`KeyphraseTopicExtractor` works offline: KeyBERT (Grootendorst 2020) takes the
  candidate 1-3-word phrases of the article from scikit-learn's ``CountVectorizer``
  (English stop words removed), embeds them and the article with sentence-transformers,
  and picks ten by Maximal Marginal Relevance (Carbonell & Goldstein 1998), which trades
  similarity to the article against similarity to the phrases already picked, so the ten
  are not ten variants of one phrase. **Order:** a keyphrase has no notion of
  generality, so length stands in for it: the picked phrases are sorted by number of
  words, longest first ("castell foods ridgeway" before "dairy"), and within a length by
  similarity to the article, most central first.

:func:`make_topic_extractor` picks the LLM when an endpoint is configured, the
keyphrases otherwise.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import openai
from keybert import KeyBERT
from pydantic import Field

from pipeline.article import Article
from pipeline.openai_endpoint import EndpointConfig, openai_client
from pipeline.relevance import default_embedding_model, embedding_text, load_embedding_model

log = logging.getLogger(__name__)

MAX_TOPICS = 10
"""The contract's limit on topics per article."""

TOPIC_INSTRUCTION = (
    "List the topics of the news item below, at most 10, ordered from the most specific "
    "(the companies, products or events it is about) to the most general (the industry, "
    "the economy). Each topic is a short noun phrase of one to four words that could be "
    "searched for on its own. Answer with only a JSON list of strings, for example "
    '["Acme Robotics takeover", "industrial robots", "robotics", "manufacturing"].'
)
"""The system instruction of the LLM topic extractor."""

# A topic longer than this is a sentence, not a search term.
_MAX_TOPIC_CHARS = 80
_CODE_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_JSON_LIST = re.compile(r"\[.*\]", re.S)
_BULLET = re.compile(r"^\s*(?:[-*\u2022+]|\d{1,2}[.)]|[a-z][.)])\s+(.*)$")
_WRAPPING = " \t\"'`*_.,;:"


class TopicConfig(EndpointConfig):
    """Which topic extractor runs and how (the LLM endpoint's fields: :class:`EndpointConfig`)."""

    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint of the LLM extractor, e.g. "
        "'https://api.openai.com/v1' or 'http://127.0.0.1:8100/v1' (a local vLLM). None: "
        "use the offline keyphrase extractor.")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout, seconds.")
    max_tokens: int = Field(
        default=160, ge=16, description="Longest answer; ten short topics fit in ~100.")
    max_topics: int = Field(default=MAX_TOPICS, ge=1, le=MAX_TOPICS,
                            description="Topics kept per article.")
    embedding_model: str = Field(
        default_factory=default_embedding_model,
        description="sentence-transformers model of the keyphrase extractor.")
    ngram_max: int = Field(
        default=3, ge=1, le=5, description="Longest keyphrase candidate, in words.")
    diversity: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="MMR diversity of the keyphrase extractor: 0 picks the phrases most "
        "similar to the article, 1 the most dissimilar to each other.")


@dataclass
class TopicStats:
    """What an extractor has done so far."""

    articles: int = 0
    with_topics: int = 0
    empty: int = 0
    """Articles that got no topics (nothing to read, or nothing usable came back)."""
    unparseable: int = 0
    """LLM answers with no list in them (each logged)."""
    failed: int = 0
    """LLM requests that failed (each logged); those articles got no topics."""


class TopicExtractor(Protocol):
    stats: TopicStats

    def extract(self, articles: Sequence[Article]) -> list[list[str]]:
        """Topics of each article, most specific first, at most ``max_topics``."""


def assign_topics(articles: Sequence[Article], extractor: TopicExtractor) -> list[Article]:
    """Copies of ``articles`` with ``topics`` set by ``extractor`` (in input order)."""
    return [article.model_copy(update={"topics": topics})
            for article, topics in zip(articles, extractor.extract(articles))]


# --------------------------------------------------------------------------- parsing


def _clean_topic(raw: object) -> str | None:
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        return None
    topic = " ".join(str(raw).split()).strip(_WRAPPING)
    if not topic or len(topic) > _MAX_TOPIC_CHARS:
        return None
    return topic


def _unique(topics: Sequence[object], limit: int) -> list[str]:
    """Cleaned, case-insensitively de-duplicated (first kept), at most ``limit``."""
    seen: set[str] = set()
    kept = []
    for raw in topics:
        topic = _clean_topic(raw)
        if topic is None or topic.casefold() in seen:
            continue
        seen.add(topic.casefold())
        kept.append(topic)
    return kept[:limit]


def _json_list(answer: str) -> list | None:
    fenced = _CODE_FENCE.search(answer)
    candidates = [fenced.group(1)] if fenced else []
    bracketed = _JSON_LIST.search(answer)
    if bracketed:
        candidates.append(bracketed.group(0))
    candidates.append(answer)
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):  # {"topics": [...]}
            value = next((v for v in value.values() if isinstance(v, list)), None)
        if isinstance(value, list):
            return value
    return None


def parse_topics(answer: str, limit: int = MAX_TOPICS) -> list[str] | None:
    """The topics in an LLM answer, in order; ``None`` when it holds no list at all.

    Accepted shapes, tried in order: a JSON list (or an object holding one), also fenced
    or after a preamble; bulleted or numbered lines (a preamble line without a bullet is
    ignored); several short lines; a single comma-separated line.
    """
    answer = answer.strip()
    if not answer:
        return None
    listed = _json_list(answer)
    if listed is not None:
        return _unique(listed, limit)
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    bulleted = [m.group(1) for m in map(_BULLET.match, lines) if m]
    if bulleted:
        return _unique(bulleted, limit)
    # Unmarked lines count as a list only when each is short enough to be a topic and
    # none reads as a sentence; otherwise the model answered in prose.
    if len(lines) > 1 and all(len(line.split()) <= 6 and not line.endswith((".", "!", "?"))
                              for line in lines):
        return _unique(lines, limit)
    if len(lines) == 1 and "," in lines[0] and not lines[0].endswith((".", "!", "?")):
        parts = [p for p in lines[0].split(",") if p.strip()]
        if all(len(p.split()) <= 6 for p in parts):
            return _unique(parts, limit)
    return None


# --------------------------------------------------------------------------- LLM


def article_message(article: Article, max_text_chars: int) -> str:
    """The user message: title, then the text cut to ``max_text_chars``."""
    return f"Title: {article.title.strip()}\n\n{article.text.strip()[:max_text_chars]}"


class LLMTopicExtractor:
    """Topics from an LLM behind an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, config: TopicConfig, client: openai.OpenAI | None = None) -> None:
        if client is None and config.base_url is None:
            raise ValueError("LLMTopicExtractor needs base_url (or a client)")
        self.config = config
        self.client = client or openai_client(config.base_url, config.api_key_env,
                                              config.timeout_s, config.max_retries)
        self.stats = TopicStats()

    def ask(self, article: Article) -> str:
        """The model's raw answer for one article (raises ``openai.OpenAIError``)."""
        response = self.client.chat.completions.create(
            model=self.config.model,
            messages=[{"role": "system", "content": TOPIC_INSTRUCTION},
                      {"role": "user",
                       "content": article_message(article, self.config.max_text_chars)}],
            temperature=0.0, max_tokens=self.config.max_tokens)
        return response.choices[0].message.content or ""

    def topics_of(self, article: Article) -> list[str]:
        """Topics of one article; ``[]`` (logged, counted) when the request fails or the
        answer holds no list."""
        self.stats.articles += 1
        topics: list[str] = []
        if embedding_text(article):
            try:
                answer = self.ask(article)
            except openai.OpenAIError as exc:
                self.stats.failed += 1
                log.warning("topics: request for article %r failed (%s: %s); no topics",
                            article.id, type(exc).__name__, exc)
                answer = None
            if answer is not None:
                parsed = parse_topics(answer, self.config.max_topics)
                if parsed is None:
                    self.stats.unparseable += 1
                    log.warning("topics: answer for article %r holds no list; no topics: %r",
                                article.id, answer[:200])
                topics = parsed or []
        if topics:
            self.stats.with_topics += 1
        else:
            self.stats.empty += 1
        return topics

    def extract(self, articles: Sequence[Article]) -> list[list[str]]:
        return [self.topics_of(article) for article in articles]


# --------------------------------------------------------------------------- keyphrases


class KeyphraseTopicExtractor:
    """Offline topics: KeyBERT keyphrases with MMR, longest phrases first."""

    def __init__(self, config: TopicConfig | None = None, model=None) -> None:
        self.config = config or TopicConfig()
        self.keybert = KeyBERT(model=model or load_embedding_model(self.config.embedding_model))
        self.stats = TopicStats()

    def extract(self, articles: Sequence[Article]) -> list[list[str]]:
        results: list[list[str]] = [[] for _ in articles]
        positions = [i for i, a in enumerate(articles) if embedding_text(a)]
        if positions:
            docs = [embedding_text(articles[i]) for i in positions]
            try:
                keywords = self.keybert.extract_keywords(
                    docs, keyphrase_ngram_range=(1, self.config.ngram_max),
                    stop_words="english", use_mmr=True, diversity=self.config.diversity,
                    top_n=self.config.max_topics)
            except ValueError:
                # CountVectorizer raises when no document has a single non-stop word;
                # one at a time, so one such article costs only itself.
                keywords = [self._one(doc) for doc in docs]
            # KeyBERT returns a flat list for a single document.
            if len(docs) == 1 and keywords and isinstance(keywords[0], tuple):
                keywords = [keywords]
            for position, scored in zip(positions, keywords):
                results[position] = self._ordered(scored)
        for article, topics in zip(articles, results):
            self.stats.articles += 1
            if topics:
                self.stats.with_topics += 1
            else:
                self.stats.empty += 1
                log.info("topics: article %r has no keyphrase (no words beyond stop "
                         "words); no topics", article.id)
        return results

    def _one(self, doc: str) -> list[tuple[str, float]]:
        try:
            return self.keybert.extract_keywords(
                doc, keyphrase_ngram_range=(1, self.config.ngram_max), stop_words="english",
                use_mmr=True, diversity=self.config.diversity, top_n=self.config.max_topics)
        except ValueError:
            return []

    def _ordered(self, scored: Sequence[tuple[str, float]]) -> list[str]:
        """Longest phrases first (more specific), then most similar to the article."""
        ranked = sorted(scored, key=lambda kw: (-len(kw[0].split()), -kw[1]))
        return _unique([phrase for phrase, _ in ranked], self.config.max_topics)


def make_topic_extractor(config: TopicConfig, client: openai.OpenAI | None = None
                         ) -> TopicExtractor:
    """The LLM extractor when an endpoint (or client) is configured, else keyphrases."""
    if config.base_url is not None or client is not None:
        return LLMTopicExtractor(config, client)
    return KeyphraseTopicExtractor(config)
