"""Link sources: link lists (CSV/JSONL) and the stories linked from e-mail newsletters,
then followed through the link stage against a local site."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from email.message import EmailMessage

from pipeline.link_sources import is_link_list, read_link_list, read_newsletter_links
from pipeline.link_settings import LinkSettings
from pipeline.links import LinkCounters, enrich_articles, url_id
from pipeline.records import read_csv
from tests.pipeline.link_site import serve_link_site, story_lead, story_title

SENT = datetime(2024, 3, 6, 7, 30, tzinfo=timezone.utc)


def newsletter(base: str) -> bytes:
    """A newsletter e-mail with ten linked stories in three layouts, plus the links every
    newsletter has that are not stories."""
    def url(n: int) -> str:
        return f"{base}/story/{n}?utm_source=newsletter&utm_medium=email"

    headline_layout = "".join(
        f'<h2><a href="{url(n)}">{story_title(n)}</a></h2>'
        f"<p>Teaser for story {n}: the contract runs for five years.</p>"
        + (f'<p><a href="{base}/story/{n}">Read more</a></p>' if n == 1 else "")
        for n in range(1, 5))
    card_layout = "".join(
        f'<table><tr><td><strong>{story_title(n)}</strong>'
        f"<p>Teaser for story {n}: analysts expect margins to rise.</p>"
        f'<a href="{url(n)}">Read more &rarr;</a></td></tr></table>'
        for n in range(5, 8))
    list_layout = "<ul>" + "".join(
        f'<li><a href="{url(n)}">{story_title(n)}</a> &ndash; Teaser for story {n}: '
        "shares rose in early trading.</li>" for n in range(8, 11)) + "</ul>"
    html = f"""<html><body>
<p><a href="{base}/newsletter/web">View this email in your browser</a></p>
<a href="{base}/"><img src="{base}/logo.png" alt=""></a>
<h1>Markets Morning</h1><p>Good morning. Here is what matters today.</p>
{headline_layout}{card_layout}<h3>In brief</h3>{list_layout}
<p><a href="https://twitter.com/marketsmorning">Follow us on X</a> |
<a href="{base}/preferences?u=1">Manage preferences</a> |
<a href="{base}/unsubscribe?u=1">Unsubscribe</a> | <a href="mailto:editor@example.com">Write to us</a></p>
</body></html>"""
    message = EmailMessage()
    message["Subject"] = "Markets Morning: ten stories"
    message["From"] = "Markets Morning <news@example.com>"
    message["Message-ID"] = "<mm-2024-03-06@example.com>"
    message["Date"] = "Wed, 06 Mar 2024 07:30:00 +0000"
    message.set_content("Read this newsletter in an HTML mail client.")
    message.add_alternative(html, subtype="html")
    return message.as_bytes()


def test_each_linked_story_of_a_newsletter_becomes_one_item():
    result = read_newsletter_links(newsletter("http://news.example"), "markets-morning")
    articles = result.articles
    assert [a.title for a in articles] == [story_title(n) for n in range(1, 11)]
    assert [a.link for a in articles] == [
        f"http://news.example/story/{n}?utm_source=newsletter&utm_medium=email"
        for n in range(1, 11)]
    for n, article in enumerate(articles, 1):
        assert article.text.startswith(f"Teaser for story {n}:"), article.text
        assert "Read more" not in article.text and story_title(n) not in article.text
        assert article.id == f"mm-2024-03-06@example.com#{n}"
        assert article.date_published == SENT and article.source == "markets-morning"
    assert result.skipped == 0


def test_plain_text_newsletter_links_are_items_titled_by_their_line():
    message = EmailMessage()
    message["Subject"] = "Digest"
    message["Date"] = "Wed, 06 Mar 2024 07:30:00 +0000"
    message.set_content(
        "Top story\nChipmaker orders surge by half\nhttps://news.example/chips\n\n"
        "Bank raises dividend after record profit: https://news.example/bank.\n\n"
        "Unsubscribe\nhttps://news.example/u?x=1\n")
    articles = read_newsletter_links(message.as_bytes(), "digest").articles
    assert [(a.title, a.link) for a in articles] == [
        ("Chipmaker orders surge by half", "https://news.example/chips"),
        ("Bank raises dividend after record profit", "https://news.example/bank")]
    assert articles[0].id == url_id("https://news.example/chips")


def test_unreadable_or_linkless_email_is_reported_not_raised():
    result = read_newsletter_links(b"Subject: hi\n\nno links here\n", "x")
    assert result.articles == [] and "no story links" in result.problems[0]


def test_newsletter_stories_are_classified_on_their_article_text(tmp_path):
    """The e-mail's ten stories through the link stage: each item's text is the
    extracted article, fetched once, and the counters say so."""
    with serve_link_site() as site:
        stories = read_newsletter_links(newsletter(site.base), "markets-morning").articles
        counters = LinkCounters()
        settings = LinkSettings(cache_path=tmp_path / "cache.sqlite", per_host_interval_s=0.0,
                                allow_networks=["127.0.0.0/8"])
        results = enrich_articles(stories, settings, deadline_s=30, counters=counters)
        requests = dict(site.requests)
    assert len(results) == 10
    for n, result in enumerate(results, 1):
        assert result.provenance.fetch_status == "ok"
        assert result.provenance.text_origin == "both"  # the teaser is not in the page
        assert story_lead(n) in result.article.text
        assert result.article.title == story_title(n)
        assert result.provenance.final_url == f"{site.base}/story/{n}"
    assert all(requests[f"/story/{n}"] == 1 for n in range(1, 11))
    host = site.base.removeprefix("http://")
    assert counters.outcomes[(host, "ok")] == 10
    assert counters.requests[(host, "network")] == 10


def test_csv_link_list_in_the_original_shape_imports(tmp_path):
    path = tmp_path / "links.csv"
    path.write_text(
        "url,date,label\n"
        "https://www.bbc.co.uk/news/business-1,2023-05-01,1\n"
        "https://techcrunch.com/2023/05/02/startup-raises/,2023-05-02T10:00:00+02:00,\n"
        "https://www.bbc.co.uk/news/business-1?utm_source=rss,2023-05-01,1\n"
        "ftp://example.com/file,2023-05-03,0\n"
        ",2023-05-03,0\n"
        "https://www.theguardian.com/business/x,yesterday,0\n"
        "https://wccftech.com/y,2023-05-04,maybe\n"
        "https://www.reuters.com/z\n", encoding="utf-8")
    assert is_link_list(path)
    # The article-record reader cannot take it (the complaint in the issue)...
    assert read_csv(path, "links").articles == []
    # ...the link-list reader can.
    result = read_link_list(path, "links")
    assert [a.link for a in result.articles] == [
        "https://www.bbc.co.uk/news/business-1",
        "https://techcrunch.com/2023/05/02/startup-raises/", "https://www.reuters.com/z"]
    first, second, third = result.articles
    assert first.signal == 1 and first.id == url_id(first.link)
    assert first.date_published == datetime(2023, 5, 1, tzinfo=timezone.utc)
    assert second.date_published == datetime(2023, 5, 2, 8, tzinfo=timezone.utc)
    assert second.signal is None and third.date_published is None
    assert result.skipped == 5
    problems = "\n".join(result.problems)
    assert "links.csv:4: skipped (same article as line 2" in problems
    assert "links.csv:5: skipped (invalid url: Value error, not an http(s) URL" in problems
    assert "links.csv:6: skipped (invalid url: Field required)" in problems
    assert "links.csv:7: skipped (invalid date: " in problems
    assert "links.csv:8: skipped (invalid label: Input should be 0 or 1)" in problems


def test_jsonl_link_list_accepts_link_and_reports_bad_lines(tmp_path):
    path = tmp_path / "links.jsonl"
    lines = [json.dumps({"link": "https://www.techradar.com/a", "published": "2023-06-01",
                         "signal": 0, "title": "Phone review"}),
             "{not json",
             json.dumps(["https://x.example/list"]),
             json.dumps({"url": "https://x.example/b", "id": "own-7", "text": "A teaser."})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert is_link_list(path)
    result = read_link_list(path, "links")
    assert [(a.id, a.title, a.text, a.signal) for a in result.articles] == [
        (url_id("https://www.techradar.com/a"), "Phone review", "", 0),
        ("own-7", "", "A teaser.", None)]
    assert result.skipped == 2
    assert any(":2: skipped (not JSON" in p for p in result.problems)
    assert any(":3: skipped (expected a JSON object" in p for p in result.problems)


def test_article_records_are_not_mistaken_for_link_lists(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"id": 1, "title": "t", "text": "x", "link": "https://a.b/c"})
                    + "\n")
    assert not is_link_list(path)


def test_signals_data_import_reads_a_link_list_and_newsletter_links(tmp_path, capsys):
    """The issue's new user: ``signals data import links.csv`` used to skip every row
    with ``invalid id: Field required``."""
    from pipeline.dataset import read_jsonl
    from signals.cli import build_parser

    def run_cli(argv: list[str]) -> int:
        args = build_parser().parse_args(argv)
        return args.func(args)

    links = tmp_path / "links.csv"
    links.write_text("url,date\nhttps://www.bbc.co.uk/news/a,2023-05-01\n"
                     "https://www.theguardian.com/b,2023-05-02\n", encoding="utf-8")
    out = tmp_path / "links.jsonl"
    assert run_cli(["data", "import", str(links), "--out", str(out)]) == 0
    assert "(links): 2 articles written" in capsys.readouterr().out
    assert [a.link for a in read_jsonl(out)] == ["https://www.bbc.co.uk/news/a",
                                                 "https://www.theguardian.com/b"]

    letter = tmp_path / "letter.eml"
    letter.write_bytes(newsletter("http://news.example"))
    out = tmp_path / "stories.jsonl"
    assert run_cli(["data", "import", str(letter), "--kind", "newsletter-links",
                    "--out", str(out)]) == 0
    assert len(read_jsonl(out)) == 10
