"""The teacher labeler: answer parsing, the SQLite cache, a dead endpoint, and the real
protocol against the real vLLM server (the tiny base model: protocol, not quality)."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from pipeline.article import Article
from pipeline.dedupe import content_hash
from pipeline.teacher import (
    TeacherCache,
    TeacherConfig,
    TeacherError,
    TeacherLabeler,
    TeacherUnavailable,
    parse_teacher_answer,
)
from tests.conftest import free_port

ARTICLES = [
    Article(id="a1", title="Castell Foods agrees to buy Ridgeway Dairy",
            text="Castell Foods will pay $3.1bn in cash for Ridgeway Dairy, creating the "
                 "region's largest dairy group."),
    Article(id="a2", title="Town library extends weekend opening hours",
            text="The public library on Main Street will open until 6 pm on Saturdays "
                 "from next month."),
    Article(id="a3", title="Nordvik Semiconductor opens Europe's first 2 nm fab",
            text="Volume production started at the Dresden plant, the first 2 nm chip "
                 "factory outside Asia, with EUR 14bn of public support."),
]


@pytest.mark.parametrize("answer, label", [
    ("1", 1), ("0", 0), (" 1\n", 1), ("0.", 0), ("Answer: 1", 1), ("**0**", 0),
    ('"1"', 1), ("1 - it is a signal", 1),
    ("", None), ("0 or 1", None), ("10", None), ("0.5", None), ("yes", None),
    ("I cannot tell", None), ("1, 0", None),
])
def test_parse_teacher_answer(answer, label):
    assert parse_teacher_answer(answer) == label


class RequestCounter:
    """An httpx event hook that counts the chat-completion requests the client sends."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            self.count += 1


def counting_client(base_url: str, counter: RequestCounter, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="EMPTY",
                         http_client=httpx.Client(event_hooks={"request": [counter]}),
                         **options)


def dead_endpoint_config(tmp_path, **overrides) -> TeacherConfig:
    settings = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "teacher",
                "api_key_env": None, "max_retries": 0, "timeout_s": 2,
                "cache_path": tmp_path / "teacher.sqlite"}
    return TeacherConfig(**{**settings, **overrides})


def test_dead_endpoint_raises_and_caches_nothing(tmp_path):
    config = dead_endpoint_config(tmp_path, max_consecutive_failures=2)
    with TeacherLabeler(config) as teacher:
        with pytest.raises(TeacherUnavailable, match=r"unavailable: APIConnectionError"):
            teacher.label(ARTICLES[0])
        # label_all: failures are abstentions until too many in a row, then it stops.
        with pytest.raises(TeacherUnavailable, match="2 failures in a row"):
            teacher.label_all(ARTICLES)
        assert teacher.stats.failed == 2 and teacher.stats.requests == 3
        assert len(teacher.cache) == 0


def test_dead_endpoint_abstains_per_article_until_the_limit(tmp_path):
    config = dead_endpoint_config(tmp_path, max_consecutive_failures=5)
    with TeacherLabeler(config) as teacher:
        votes = teacher.label_all(ARTICLES)
    assert [v.label for v in votes] == [None, None, None]
    assert all(v.source == "teacher" and "APIConnectionError" in v.detail["error"]
               for v in votes)
    assert teacher.stats.failed == 3 and teacher.stats.answered == 0


def test_cached_answers_need_no_endpoint(tmp_path):
    config = dead_endpoint_config(tmp_path)
    cache = TeacherCache(config.cache_path)
    cache.put(content_hash(ARTICLES[0]), "teacher", config.prompt_hash(), "1", "earlier")
    cache.put(content_hash(ARTICLES[1]), "teacher", config.prompt_hash(), "maybe", "earlier")
    cache.close()
    with TeacherLabeler(config) as teacher:
        signal = teacher.label(ARTICLES[0])
        # Same content, different case and punctuation: same content hash, same vote.
        copy = ARTICLES[0].model_copy(update={"id": "copy", "title": ARTICLES[0].title.upper()})
        assert teacher.label(copy) == signal
        abstention = teacher.label(ARTICLES[1])
    assert signal.label == 1 and signal.detail == {"model": "teacher", "answer": "1",
                                                   "cached": True}
    assert abstention.label is None and abstention.detail["answer"] == "maybe"
    assert teacher.stats.requests == 0 and teacher.stats.cache_hits == 3
    assert teacher.stats.abstained == 1 and teacher.stats.answered == 2
    # Another prompt shape is another question: the cached answer does not apply.
    with TeacherLabeler(dead_endpoint_config(tmp_path, max_text_chars=500)) as teacher:
        with pytest.raises(TeacherUnavailable):
            teacher.label(ARTICLES[0])


def test_missing_api_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TEACHER_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="TEACHER_TEST_KEY .*is not set"):
        TeacherLabeler(dead_endpoint_config(tmp_path, api_key_env="TEACHER_TEST_KEY"))


def _completions_on_server(server) -> float:
    """The server's own count of chat-completion requests it received (any status),
    from its Prometheus /metrics."""
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(
        r'^http_requests_total\{[^}]*handler="/v1/chat/completions"[^}]*\} (\S+)$',
        metrics, re.M))


@pytest.mark.vllm
def test_teacher_protocol_cache_and_determinism_on_vllm(vllm_server, tmp_path):
    base_url = f"{vllm_server.url}/v1"
    config = TeacherConfig(base_url=base_url, model="base", api_key_env=None,
                           cache_path=tmp_path / "first.sqlite")
    counter = RequestCounter()
    with TeacherLabeler(config, counting_client(base_url, counter)) as teacher:
        first = teacher.label_all(ARTICLES)
        assert counter.count == 3 and teacher.stats.requests == 3
        for vote in first:
            assert vote.source == "teacher" and vote.detail["model"] == "base"
            assert vote.detail["cached"] is False and isinstance(vote.detail["answer"], str)
            assert vote.label == parse_teacher_answer(vote.detail["answer"])
        assert teacher.stats.answered + teacher.stats.abstained == 3
        assert len(teacher.cache) == 3

        served_before = _completions_on_server(vllm_server)
        assert served_before >= 3  # the metric is there and counted the first three
        second = teacher.label_all(ARTICLES)
        # The second call is answered from the cache: no request left the client, and
        # the server finished no new one.
        assert counter.count == 3 and teacher.stats.cache_hits == 3
        assert _completions_on_server(vllm_server) == served_before
    assert [(v.label, v.detail["answer"]) for v in second] == \
        [(v.label, v.detail["answer"]) for v in first]
    assert all(v.detail["cached"] for v in second)

    # Determinism at the source: a fresh cache asks again and gets the same answers.
    fresh = config.model_copy(update={"cache_path": tmp_path / "second.sqlite"})
    with TeacherLabeler(fresh) as teacher:
        again = teacher.label_all(ARTICLES)
        assert teacher.stats.requests == 3
    assert [v.detail["answer"] for v in again] == [v.detail["answer"] for v in first]


@pytest.mark.vllm
def test_teacher_errors_from_the_real_server(vllm_server, tmp_path):
    base_url = f"{vllm_server.url}/v1"
    # An article longer than the server's context (2048 tokens): the server answers
    # 400, the article gets an abstention, nothing is cached.
    config = TeacherConfig(base_url=base_url, model="base", api_key_env=None,
                           max_text_chars=40_000, cache_path=tmp_path / "teacher.sqlite")
    long_article = Article(id="long", title="A very long report",
                           text=" ".join(["The quarterly figures were discussed."] * 1500))
    with TeacherLabeler(config) as teacher:
        vote = teacher.label(long_article)
        assert vote.label is None and "BadRequestError" in vote.detail["error"]
        assert teacher.stats.rejected == 1 and len(teacher.cache) == 0

    # A model the server does not serve is a configuration error, raised at once.
    wrong = config.model_copy(update={"model": "no-such-model"})
    with TeacherLabeler(wrong) as teacher:
        with pytest.raises(TeacherError, match="refused model 'no-such-model'"):
            teacher.label(ARTICLES[0])
        assert len(teacher.cache) == 0


@pytest.mark.vllm
@pytest.mark.slow
def test_teacher_votes_from_a_lora_tuned_model(vllm_server, trained_adapter, tmp_path):
    """A model trained on the signal answer (the test adapter, hot-loaded into vLLM
    under a name of its own) answers with a label token: real votes, end to end."""
    name = f"teacher-{trained_adapter.name}"
    response = httpx.post(f"{vllm_server.url}/v1/load_lora_adapter", timeout=120,
                          json={"lora_name": name, "lora_path": str(trained_adapter.path)})
    assert response.status_code == 200, response.text
    try:
        config = TeacherConfig(base_url=f"{vllm_server.url}/v1", model=name,
                               api_key_env=None, cache_path=tmp_path / "teacher.sqlite")
        with TeacherLabeler(config) as teacher:
            votes = teacher.label_all(ARTICLES)
    finally:
        httpx.post(f"{vllm_server.url}/v1/unload_lora_adapter", json={"lora_name": name},
                   timeout=60)
    assert all(v.label in (0, 1) for v in votes), [v.detail for v in votes]
    assert teacher.stats.answered == 3
