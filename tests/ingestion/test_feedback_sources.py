"""The feedback token is bound to the label sources it may claim (``feedback_sources``,
issue 29): over real HTTP against the real app on a SQLite file, an entry naming another
source is ``forbidden_source`` (403 alone, per entry in a bulk list whose other entries
are recorded), counted, and stored nowhere; the admin token may claim any source."""

import httpx

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig
from serve.local_http import free_port, serve_app
from tests.ingestion.test_ingest_support import sample, scrape

WRITE, FEEDBACK, ADMIN = "fs-write", "fs-feedback", "fs-admin"
ARTICLES = [{"id": "s1", "title": "Theta bids for Iota", "text": "Theta offered 5 dlrs a share."},
            {"id": "s2", "title": "Kappa results", "text": "Kappa earned 3 mln dlrs."}]


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def config(tmp_path, **settings) -> IngestConfig:
    """A store on a SQLite file; the classifier a port nobody serves (items stay pending)."""
    tmp_path.mkdir(exist_ok=True)
    return IngestConfig(database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
                        classifier_url=f"http://127.0.0.1:{free_port()}",
                        idle_poll_s=5, retry_initial_s=5, metrics_cache_s=0, **settings)


def push(url: str, token: str | None = None) -> list[int]:
    answer = httpx.post(f"{url}/v1/items", json={"articles": ARTICLES}, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return [r["item_id"] for r in answer.json()["results"]]


def verdicts(url: str, item_id: int) -> dict[str, int]:
    item = httpx.get(f"{url}/v1/items/{item_id}", headers=bearer(ADMIN)).json()
    return {f["source"]: f["label"] for f in item["feedback"]}


def test_feedback_token_claims_only_analyst_and_admin_claims_any(tmp_path):
    app = create_ingest_app(config(tmp_path, write_token=WRITE, feedback_token=FEEDBACK,
                                   admin_token=ADMIN))
    with serve_app(app) as url:
        first, second = push(url, WRITE)
        post = lambda body, token=FEEDBACK: httpx.post(  # noqa: E731
            f"{url}/v1/feedback", json=body, headers=bearer(token))

        ok = post({"item_id": first, "label": 1, "source": "analyst"})
        assert ok.status_code == 200 and ok.json()["outcome"] == "recorded", ok.text
        for body in ({"item_id": first, "label": 0, "source": "trend"},
                     {"item_id": first, "label": 0, "source": "human", "replace": True},
                     {"item_id": 12345, "label": 0, "source": "trend"}):  # before the lookup
            refused = post(body)
            assert refused.status_code == 403, refused.text
            error = refused.json()["error"]
            assert error["type"] == "forbidden_source" and body["source"] in error["message"]

        bulk = post({"feedback": [{"item_id": second, "label": 1, "source": "trend"},
                                  {"item_id": second, "label": 0},  # analyst by default
                                  {"external_id": "s1", "label": 0, "source": "teacher"}]})
        assert bulk.status_code == 200, bulk.text
        assert bulk.json()["counts"] == {"forbidden_source": 2, "recorded": 1}
        assert [r["outcome"] for r in bulk.json()["results"]] == [
            "forbidden_source", "recorded", "forbidden_source"]
        assert verdicts(url, first) == {"analyst": 1}
        assert verdicts(url, second) == {"analyst": 0}

        by_admin = post({"item_id": first, "label": 0, "source": "trend"}, ADMIN)
        assert by_admin.status_code == 200 and by_admin.json()["outcome"] == "recorded"
        assert verdicts(url, first) == {"analyst": 1, "trend": 0}

        samples = scrape(url)
        assert sample(samples, "signals_ingest_feedback_total", source="trend",
                      outcome="forbidden_source") == 3
        assert sample(samples, "signals_ingest_feedback_total", source="human",
                      outcome="forbidden_source") == 1
        # the answer is the one the published document declares for the route
        declared = httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/feedback"]["post"]
        assert "403" in declared["responses"]


def test_configured_feedback_sources_admit_desk(tmp_path):
    app = create_ingest_app(config(tmp_path, feedback_token=FEEDBACK, admin_token=ADMIN,
                                   feedback_sources=["analyst", "desk"]))
    with serve_app(app) as url:
        first, _ = push(url, ADMIN)
        answer = httpx.post(f"{url}/v1/feedback", headers=bearer(FEEDBACK), json={
            "feedback": [{"item_id": first, "label": 1, "source": "desk"},
                         {"item_id": first, "label": 1, "source": "analyst"},
                         {"item_id": first, "label": 1, "source": "trend"}]})
        assert answer.json()["counts"] == {"recorded": 2, "forbidden_source": 1}, answer.text
        assert verdicts(url, first) == {"desk": 1, "analyst": 1}


def test_without_a_feedback_token_the_list_binds_all_but_admin_unless_no_token_is_set(tmp_path):
    """Feedback open but an admin token set: a caller without it is bound to the list.
    No feedback or admin token (development): any source, as the replay loop needs."""
    trend = {"external_id": "s1", "label": 1, "source": "trend"}
    with serve_app(create_ingest_app(config(tmp_path / "a", admin_token=ADMIN))) as url:
        push(url)
        anonymous = httpx.post(f"{url}/v1/feedback", json=trend)
        assert anonymous.status_code == 403, anonymous.text
        assert anonymous.json()["error"]["type"] == "forbidden_source"
        by_admin = httpx.post(f"{url}/v1/feedback", json=trend, headers=bearer(ADMIN))
        assert by_admin.status_code == 200, by_admin.text
    with serve_app(create_ingest_app(config(tmp_path / "b"))) as url:
        push(url)
        answer = httpx.post(f"{url}/v1/feedback", json=trend)
        assert answer.status_code == 200 and answer.json()["outcome"] == "recorded"
