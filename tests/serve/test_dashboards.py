"""Every Grafana dashboard query names only metrics (and labels) that the running
classification API and ingestion service really expose on /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig
from pipeline.link_settings import LinkSettings
from tests.conftest import serve_app
from tests.ingestion.test_ingest_support import classification_api, make_classifier, wait_for
from tests.pipeline.link_site import serve_link_site

DASHBOARDS = sorted((Path(__file__).parents[2] / "k8s/base/grafana/dashboards").glob("*.json"))

# PromQL words that look like identifiers but are not metric names.
PROMQL_KEYWORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio", "by", "without", "on",
    "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "atan2", "inf", "nan", "Inf", "NaN",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not function calls,
    keywords, label names (in matchers or grouping clauses) or Grafana variables."""
    expr = _STRING.sub('""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)                 # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)                # ranges, subqueries, $__rate_interval
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)               # Grafana variables elsewhere
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+-?\w+", " ", expr)
    names = set()
    for match in _IDENTIFIER.finditer(expr):
        if expr[match.end():].lstrip().startswith("("):    # a function call
            continue
        if match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched) for every ``metric{...}`` selector."""
    return [(m.group(1), set(_MATCHER.findall(_STRING.sub('""', m.group(2)))))
            for m in _SELECTOR.finditer(expr)]


def test_the_parser_finds_metrics_and_only_metrics():
    expr = ('histogram_quantile(0.95, sum by (le, role) (rate(a_bucket{role="x", le=~"1e3"}'
            '[$__rate_interval]))) / on (adapter) group_left b_total offset 5m + c '
            '- count(d{adapter=~"$adapter"}) * 1e3 > bool 0.5 unless max without (x) (e)')
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d", "e"}
    assert selector_labels(expr) == [("a_bucket", {"role", "le"}), ("d", {"adapter"})]


def dashboard_queries(dashboard: dict) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((\w+)\s*,\s*\w+\)\s*", query or "")
        if variable.get("type") == "query":
            assert match, f"unsupported variable query {query!r}"
            queries.append(match.group(1))
    return queries


def exposed(text: str) -> dict[str, set[str]]:
    """Series names a scrape exposes (with the label names seen on each): samples, plus
    the names a type implies (counters _total, histograms _bucket/_sum/_count) for
    families that have no sample yet."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        implied = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                   "summary": ["_sum", "_count", ""]}.get(family.type, [""])
        for suffix in implied:
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.fixture(scope="module")
def live_metrics(base_model_dir, tokenizer, tmp_path_factory):
    """A scrape of each running service after a little real traffic."""
    registry = tmp_path_factory.mktemp("empty-registry")
    classifier = make_classifier(base_model_dir, registry, tokenizer)
    tmp = tmp_path_factory.mktemp("dash")
    with classification_api(classifier) as (api_url, _), serve_link_site() as site:
        # The link stage on, and one item with a link, so its counters have samples.
        config = IngestConfig(database_url=f"sqlite:///{tmp / 'ingest.db'}",
                              classifier_url=api_url, adapter="base", shadow_adapter="base",
                              idle_poll_s=0.2, metrics_cache_s=0,
                              links=LinkSettings(cache_path=tmp / "http-cache.sqlite",
                                                 allow_networks=["127.0.0.0/8"]))
        with serve_app(create_ingest_app(config)) as ingest_url:
            httpx.post(f"{ingest_url}/v1/items", timeout=60, json={"articles": [
                {"id": "d1", "title": "Acme to acquire Beta", "text": "Acme agreed to buy Beta."},
                {"id": "d2", "title": "Gamma results", "text": "Gamma earned 3 mln dlrs.",
                 "link": site.url("/story/1")}]})
            wait_for(lambda: httpx.get(f"{ingest_url}/v1/items/2").json()["shadow_state"]
                     == "classified" and httpx.get(f"{ingest_url}/v1/items/1").json()
                     ["state"] == "classified", 120, "two classified items")
            httpx.post(f"{ingest_url}/v1/feedback", json={"item_id": 1, "label": 1})
            yield {"api": httpx.get(f"{api_url}/metrics").text,
                   "ingestion": httpx.get(f"{ingest_url}/metrics").text}


def test_dashboards_are_valid_grafana_json():
    assert {p.name for p in DASHBOARDS} == {
        "signals-ingestion.json", "signals-serving.json", "signals-online-quality.json"}
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids and dashboard["title"] and dashboard["panels"]
        uids.add(dashboard["uid"])
        panel_ids = [p["id"] for p in dashboard["panels"]]
        assert len(panel_ids) == len(set(panel_ids)), path.name
        for panel in dashboard["panels"]:
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_uses_only_live_metrics(path, live_metrics):
    live: dict[str, set[str]] = {}
    for text in live_metrics.values():
        for name, labels in exposed(text).items():
            live.setdefault(name, set()).update(labels)
    assert "signals_classify_requests_total" in live and "signals_ingest_pending_items" in live
    used = set()
    for expr in dashboard_queries(json.loads(path.read_text())):
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        missing = names - set(live)
        assert not missing, f"{path.name}: {sorted(missing)} not exposed (query {expr!r})"
        for metric, labels in selector_labels(expr):
            if live[metric]:  # label names are known once the series has samples
                unknown = labels - live[metric]
                assert not unknown, f"{path.name}: {metric} has no label {sorted(unknown)}"
        used |= names
    assert len(used) >= 5
