"""Topic extraction: answer parsing, offline keyphrases with the real MiniLM model, and
the LLM extractor against the real vLLM server (protocol and parsing, not quality)."""

from __future__ import annotations

import httpx
import openai
import pytest
from keybert import KeyBERT

from pipeline.article import Article
from pipeline.dedupe import normalise_text
from pipeline.relevance import embedding_text, load_embedding_model
from pipeline.topics import (
    KeyphraseTopicExtractor,
    LLMTopicExtractor,
    TopicConfig,
    assign_topics,
    make_topic_extractor,
    parse_topics,
)
from tests.conftest import free_port

ARTICLES = [
    Article(id="a1", title="Castell Foods agrees to buy Ridgeway Dairy",
            text="Castell Foods will pay $3.1bn in cash for Ridgeway Dairy, creating the "
                 "region's largest dairy group. Regulators in three countries must approve "
                 "the takeover, which Castell expects to close next spring."),
    Article(id="a2", title="Nordvik Semiconductor opens Europe's first 2 nm fab",
            text="Volume production started at the Dresden plant, the first 2 nm chip "
                 "factory outside Asia, with EUR 14bn of public support. Nordvik will make "
                 "processors for cars and data centres."),
]


@pytest.mark.parametrize("answer, topics", [
    ('["Ridgeway Dairy takeover", "dairy", "food industry"]',
     ["Ridgeway Dairy takeover", "dairy", "food industry"]),
    ('Sure! Here are the topics:\n```json\n["chips", "Chips", " semiconductors "]\n```',
     ["chips", "semiconductors"]),
    ('Topics: ["a", 3, null, {"x": 1}, ""]', ["a", "3"]),
    ('{"topics": ["EU subsidies", "chip factories"]}', ["EU subsidies", "chip factories"]),
    ("Here are the topics:\n- Castell Foods\n- dairy industry\n* food\n1. takeovers\n2) M&A",
     ["Castell Foods", "dairy industry", "food", "takeovers", "M&A"]),
    ("Castell Foods\nRidgeway Dairy\ndairy industry", ["Castell Foods", "Ridgeway Dairy",
                                                      "dairy industry"]),
    ("Castell Foods, dairy, food industry", ["Castell Foods", "dairy", "food industry"]),
    (str([f"topic {i}" for i in range(14)]).replace("'", '"'),
     [f"topic {i}" for i in range(10)]),
])
def test_parse_topics_shapes(answer, topics):
    assert parse_topics(answer) == topics


@pytest.mark.parametrize("answer", [
    "", "   ", "I am sorry, I cannot help with that.",
    "The article is about a dairy takeover. It matters for the food industry.",
    "[not json at all",
])
def test_parse_topics_garbage_is_none(answer):
    assert parse_topics(answer) is None


def test_parse_topics_drops_sentences_posing_as_topics():
    long = "x" * 81
    assert parse_topics(f'["{long}", "dairy"]') == ["dairy"]


@pytest.fixture(scope="module")
def keyphrases():
    return KeyphraseTopicExtractor(TopicConfig())


def test_keyphrases_are_keybert_mmr_longest_first(keyphrases):
    topics = keyphrases.extract(ARTICLES)
    reference = KeyBERT(model=load_embedding_model(TopicConfig().embedding_model))
    for article, found in zip(ARTICLES, topics):
        expected = reference.extract_keywords(
            embedding_text(article), keyphrase_ngram_range=(1, 3), stop_words="english",
            use_mmr=True, diversity=0.5, top_n=10)
        assert sorted(found) == sorted(phrase for phrase, _ in expected)
        assert 1 <= len(found) <= 10 and len(set(found)) == len(found)
        lengths = [len(t.split()) for t in found]
        assert lengths == sorted(lengths, reverse=True)
        words = set(normalise_text(embedding_text(article)).split())
        assert all(set(t.split()) <= words for t in found)


def test_keyphrases_of_articles_without_words(keyphrases):
    empty = Article(id="empty")
    stop_words_only = Article(id="stop", title="The", text="and it is of the")
    before = keyphrases.stats.empty
    assert keyphrases.extract([empty, ARTICLES[0], stop_words_only])[0::2] == [[], []]
    assert keyphrases.extract([stop_words_only]) == [[]]
    assert keyphrases.stats.empty == before + 3


def test_assign_topics_and_factory(keyphrases):
    assert isinstance(make_topic_extractor(TopicConfig()), KeyphraseTopicExtractor)
    llm = make_topic_extractor(TopicConfig(base_url="http://127.0.0.1:9/v1", api_key_env=None))
    assert isinstance(llm, LLMTopicExtractor)
    limited = KeyphraseTopicExtractor(TopicConfig(max_topics=3), model=keyphrases.keybert.model)
    with_topics = assign_topics(ARTICLES, limited)
    assert [a.id for a in with_topics] == ["a1", "a2"]
    assert all(1 <= len(a.topics) <= 3 for a in with_topics)
    assert Article.from_record(with_topics[0].to_record()).topics == with_topics[0].topics


def test_llm_extractor_with_dead_endpoint_gives_no_topics(caplog):
    config = TopicConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key_env=None,
                         max_retries=0, timeout_s=2)
    extractor = LLMTopicExtractor(config)
    assert extractor.extract(ARTICLES) == [[], []]
    assert extractor.stats.failed == 2 and extractor.stats.empty == 2
    assert "request for article 'a1' failed (APIConnectionError" in caplog.text


@pytest.mark.vllm
def test_llm_extractor_on_vllm(vllm_server):
    base_url = f"{vllm_server.url}/v1"
    requests = []
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", http_client=httpx.Client(
        event_hooks={"request": [lambda r: requests.append(r.url.path)]}))
    config = TopicConfig(base_url=base_url, model="base", api_key_env=None)
    extractor = make_topic_extractor(config, client)
    assert isinstance(extractor, LLMTopicExtractor)

    answers = [extractor.ask(article) for article in ARTICLES]
    topics = extractor.extract(ARTICLES + [Article(id="empty")])

    assert requests == ["/v1/chat/completions"] * 4  # the empty article is not sent
    assert topics[2] == []
    for answer, found in zip(answers, topics):
        # Whatever the small model said, the topics are exactly what the parser makes
        # of it (temperature 0: the same answer twice).
        assert found == (parse_topics(answer) or [])
        assert len(found) <= 10 and len({t.casefold() for t in found}) == len(found)
    stats = extractor.stats
    assert stats.articles == 3 and stats.failed == 0
    assert stats.with_topics + stats.empty == 3
    assert stats.unparseable == sum(parse_topics(a) is None for a in answers)
